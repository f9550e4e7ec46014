"""Reading what a file says about itself: trailer, description, full verification."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from stepstone.checkpoint import save_file
from stepstone.checkpoint.inspection import describe, open_local, read_trailer, verify
from stepstone.checkpoint.storage import split_url
from stepstone.errors import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError


def test_describe_files_with_and_without_trailer(tmp_path: Path, state: dict[str, Any]) -> None:
    record = save_file(tmp_path / "a.ckpt", state, metadata={"step": 4})
    storage, path = split_url(str(tmp_path / "a.ckpt"))
    assert describe(storage, path) == record
    torch.save(state, tmp_path / "plain.ckpt")
    storage, path = split_url(str(tmp_path / "plain.ckpt"))
    plain = describe(storage, path)
    assert (plain.format_version, plain.step, plain.size) == (0, None, os.path.getsize(path))
    assert plain.created == pytest.approx(os.path.getmtime(path))


def test_describe_remote_file_without_trailer(memory_dir: str, state: dict[str, Any]) -> None:
    storage, path = split_url(f"{memory_dir}/plain.ckpt")
    storage.write(path, lambda out: torch.save(state, _Writer(out)))  # type: ignore[arg-type]
    plain = describe(storage, path)
    assert plain.format_version == 0 and plain.created > 0


class _Writer:
    def __init__(self, output: Any) -> None:
        self.output = output

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.output.write_all(view)
        return view.nbytes

    def flush(self) -> None:
        pass


def test_read_trailer_and_verify_missing_files(tmp_path: Path, memory_dir: str) -> None:
    for url in (str(tmp_path / "missing.ckpt"), f"{memory_dir}/missing.ckpt"):
        storage, path = split_url(url)
        with pytest.raises(CheckpointNotFoundError):
            read_trailer(storage, path)
        with pytest.raises(CheckpointNotFoundError):
            verify(storage, path)


def test_verify_reports_corruption_and_missing_trailer(tmp_path: Path, state: dict[str, Any]) -> None:
    path = tmp_path / "a.ckpt"
    save_file(path, state)
    storage, local = split_url(str(path))
    assert verify(storage, local, threads=1).verified
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="chunk 0"):
        verify(storage, local)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="no stepstone trailer"):
        verify(storage, local)


def test_open_local_refuses_directories(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="not a checkpoint file"):
        open_local(str(tmp_path))
