"""Outputs: every byte reaches the file or stream, short writes included."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from stepstone.checkpoint import outputs
from stepstone.checkpoint.outputs import FdOutput, StreamOutput


def test_fd_output_completes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    monkeypatch.setattr(
        os, "write", lambda fd, data: real(fd, memoryview(data)[:7])
    )  # at most 7 bytes a call
    payload = os.urandom(1000)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        FdOutput(fd).write_all(memoryview(payload))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == payload


def test_fd_output_refuses_to_loop_forever(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "write", lambda fd, data: 0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError, match="wrote 0 bytes"):
            FdOutput(fd).write_all(memoryview(b"abc"))
    finally:
        os.close(fd)


def test_stream_output() -> None:
    stream = io.BytesIO()
    StreamOutput(stream).write_all(memoryview(b"abc"))
    assert stream.getvalue() == b"abc"


def test_fd_output_starts_writeback_every_so_many_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, int, int]] = []
    monkeypatch.setattr(outputs, "_SYNC_RANGE", lambda *args: calls.append(args) or 0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        output = FdOutput(fd, writeback_every=100)
        for _ in range(5):
            output.write_all(memoryview(b"x" * 60))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"x" * 300
    assert calls == [(fd, 0, 0, 2), (fd, 0, 0, 2)]  # after 120 and 240 bytes: the whole file, WRITE only


def test_fd_output_writeback_is_real_and_harmless(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        FdOutput(fd, writeback_every=1).write_all(memoryview(b"abc"))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"abc"
