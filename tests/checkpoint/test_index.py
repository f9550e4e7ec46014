"""The run index: a cache of committed checkpoints, reconciled with the directory and rebuildable."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from stepstone.checkpoint import INDEX_FILENAME, RunIndex, save_file
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.errors import MisconfigurationException


def _save(directory: Path | str, step: int, state: dict[str, Any], **metrics: float) -> CheckpointRecord:
    return save_file(f"{directory}/step={step}.ckpt", state, metadata={"step": step, "metrics": metrics})


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))


def test_record_entries_and_forget(tmp_path: Path, state: dict[str, Any]) -> None:
    index = RunIndex(tmp_path)
    assert index.entries() == []
    first, second = _save(tmp_path, 1, state, loss=0.5), _save(tmp_path, 2, state, loss=0.4)
    index.record(second)
    index.record(first)
    assert [r.name for r in index.entries()] == ["step=1.ckpt", "step=2.ckpt"]
    stored = json.loads((tmp_path / INDEX_FILENAME).read_text())
    assert stored["format"] == "stepstone-index" and [e["step"] for e in stored["entries"]] == [1, 2]
    index.forget("step=1.ckpt", "unknown.ckpt")
    names = [e["name"] for e in json.loads((tmp_path / INDEX_FILENAME).read_text())["entries"]]
    assert names == ["step=2.ckpt"]
    # The file still exists, so the listing brings it back: the directory is the truth.
    assert [r.name for r in index.entries()] == ["step=1.ckpt", "step=2.ckpt"]


def test_entries_reconcile_with_the_directory(tmp_path: Path, state: dict[str, Any]) -> None:
    index = RunIndex(tmp_path)
    for step in (1, 2, 3):
        index.record(_save(tmp_path, step, state))
    os.remove(tmp_path / "step=2.ckpt")
    unknown = _save(tmp_path, 9, state)  # committed, but not recorded (e.g. a crash before recording)
    (tmp_path / ".step=10.ckpt.tmp-123-0123abcd").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("x")
    os.symlink("step=3.ckpt", tmp_path / "last.ckpt")
    records = index.entries()
    assert [r.name for r in records] == ["step=1.ckpt", "step=3.ckpt", "step=9.ckpt"]
    assert records[-1] == unknown


def test_replaced_file_is_described_again_even_with_the_same_size(tmp_path: Path, state_factory: Any) -> None:
    index = RunIndex(tmp_path)
    index.record(save_file(tmp_path / "last.ckpt", state_factory(1), metadata={"step": 1}))
    replaced = save_file(tmp_path / "last.ckpt", state_factory(2), metadata={"step": 2})
    assert replaced.size == index.entries()[0].size  # same size: only the file version tells them apart
    assert index.entries() == [replaced]
    index.record(_save(tmp_path, 3, state_factory(3)))
    assert [r.step for r in index.entries()] == [2, 3]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"format": "other", "version": 1, "entries": []}',
        b'{"format": "stepstone-index", "version": 1, "entries": [{"name": 3}]}',
    ],
)
def test_damaged_index_is_rebuilt_from_trailers_with_a_warning(
    tmp_path: Path, state: dict[str, Any], content: bytes
) -> None:
    index = RunIndex(tmp_path)
    records = [_save(tmp_path, step, state, loss=float(step)) for step in (1, 2)]
    for record in records:
        index.record(record)
    (tmp_path / INDEX_FILENAME).write_bytes(content)
    with pytest.warns(UserWarning, match="damaged"):
        assert index.entries() == records
    assert index.rebuild() == records
    assert json.loads((tmp_path / INDEX_FILENAME).read_text())["entries"][1]["metrics"] == {"loss": 2.0}


def test_missing_index_is_rebuilt_silently(tmp_path: Path, state: dict[str, Any]) -> None:
    records = [_save(tmp_path, step, state) for step in (3, 1)]
    assert RunIndex(tmp_path).entries() == sorted(records, key=lambda r: r.step or 0)
    assert not (tmp_path / INDEX_FILENAME).exists()  # reading never writes


def test_corrupt_trailer_is_ignored_with_a_warning(tmp_path: Path, state: dict[str, Any]) -> None:
    _save(tmp_path, 1, state)
    _save(tmp_path, 2, state)
    path = tmp_path / "step=2.ckpt"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.warns(UserWarning, match="step=2.ckpt"):
        assert [r.name for r in RunIndex(tmp_path).entries()] == ["step=1.ckpt"]


def test_newest_verifies_and_falls_back_on_corruption(tmp_path: Path, state: dict[str, Any]) -> None:
    index = RunIndex(tmp_path)
    for step in (1, 2, 3):
        index.record(_save(tmp_path, step, state))
    newest = index.newest()
    assert newest is not None and newest.name == "step=3.ckpt" and newest.verified
    _corrupt(tmp_path / "step=3.ckpt")
    with pytest.warns(UserWarning, match=r"step=3\.ckpt.*corrupt.*next newest"):
        fallback = index.newest()
    assert fallback is not None and fallback.name == "step=2.ckpt"
    unverified = index.newest(valid_only=False)
    assert unverified is not None and unverified.name == "step=3.ckpt" and not unverified.verified


def test_newest_orders_by_step_then_creation_time(tmp_path: Path, state: dict[str, Any]) -> None:
    save_file(tmp_path / "b.ckpt", state, metadata={"step": 5})
    time.sleep(0.01)
    save_file(tmp_path / "a.ckpt", state, metadata={"step": 5})
    save_file(tmp_path / "old.ckpt", state, metadata={"step": 4})
    newest = RunIndex(tmp_path).newest()
    assert newest is not None and newest.name == "a.ckpt"


def test_newest_skips_files_that_cannot_be_verified(tmp_path: Path, state: dict[str, Any]) -> None:
    import torch

    _save(tmp_path, 1, state)
    torch.save(state, tmp_path / "lightning.ckpt")  # no trailer, unknown step: oldest
    newest = RunIndex(tmp_path).newest()
    assert newest is not None and newest.name == "step=1.ckpt"
    os.remove(tmp_path / "step=1.ckpt")
    with pytest.warns(UserWarning, match="no stepstone trailer"):
        assert RunIndex(tmp_path).newest() is None
    assert RunIndex(tmp_path).newest(valid_only=False) is not None


def test_remote_index(memory_dir: str, state: dict[str, Any]) -> None:
    index = RunIndex(memory_dir)
    records = [_save(memory_dir, step, state) for step in (1, 2)]
    index.record(records[0])
    assert index.entries() == records
    newest = index.newest()
    assert newest is not None and newest.name == "step=2.ckpt" and newest.path == records[1].path


def test_index_writes_leave_no_temporary_files(tmp_path: Path, state: dict[str, Any]) -> None:
    index = RunIndex(tmp_path)
    index.record(_save(tmp_path, 1, state))
    index.forget("step=1.ckpt")
    assert sorted(os.listdir(tmp_path)) == [INDEX_FILENAME, "step=1.ckpt"]


def test_arguments_are_validated(tmp_path: Path, state: dict[str, Any]) -> None:
    with pytest.raises(MisconfigurationException, match="directory path"):
        RunIndex("")
    record = save_file(tmp_path / "weights.pt", state)
    with pytest.raises(MisconfigurationException, match=r"must end in '\.ckpt'"):
        RunIndex(tmp_path).record(record)
