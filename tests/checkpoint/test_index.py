"""The run index: the committed checkpoints of a directory, read from their trailers (nothing stored there)."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch

from stepstone.checkpoint import KeepLatest, RunIndex, save_file
from stepstone.checkpoint import kinds as kinds_module
from stepstone.checkpoint.index import LEGACY_INDEX_NAME
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.sharded import MARKER_NAME, read_sharded_info, save_sharded
from stepstone.checkpoint.storage import LocalStorage
from stepstone.errors import MisconfigurationException


def _save(directory: Path | str, step: int, state: dict[str, Any], **metrics: float) -> CheckpointRecord:
    return save_file(f"{directory}/step={step}.ckpt", state, metadata={"step": step, "metrics": metrics})


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))


def test_entries_come_from_the_trailers_and_nothing_is_written(tmp_path: Path, state: dict[str, Any]) -> None:
    index = RunIndex(tmp_path)
    assert index.entries() == []
    second, first = _save(tmp_path, 2, state, loss=0.4), _save(tmp_path, 1, state, loss=0.5)
    assert index.entries() == [first, second]  # oldest (lowest step) first, as the trailers say
    assert index.entries()[0].metrics == {"loss": 0.5}
    assert sorted(os.listdir(tmp_path)) == ["step=1.ckpt", "step=2.ckpt"]  # nothing but the checkpoints


def test_entries_reconcile_with_the_directory(tmp_path: Path, state: dict[str, Any]) -> None:
    index = RunIndex(tmp_path)
    for step in (1, 2, 3):
        _save(tmp_path, step, state)
    assert len(index.entries()) == 3
    os.remove(tmp_path / "step=2.ckpt")
    unknown = _save(tmp_path, 9, state)
    (tmp_path / ".step=10.ckpt.tmp-123-0123abcd").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("x")
    os.symlink("step=3.ckpt", tmp_path / "last.ckpt")
    records = index.entries()
    assert [r.name for r in records] == ["step=1.ckpt", "step=3.ckpt", "step=9.ckpt"]
    assert records[-1] == unknown


def test_a_replaced_file_is_described_again(tmp_path: Path, state_factory: Any) -> None:
    index = RunIndex(tmp_path)
    first = save_file(tmp_path / "last.ckpt", state_factory(1), metadata={"step": 1})
    assert index.entries() == [first]
    replaced = save_file(tmp_path / "last.ckpt", state_factory(2), metadata={"step": 2})
    assert index.entries() == [replaced]
    _save(tmp_path, 3, state_factory(3))
    assert [r.step for r in index.entries()] == [2, 3]


def test_trailers_are_read_once_per_file_version_in_a_process(
    tmp_path: Path, state_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    describe = kinds_module.describe
    monkeypatch.setattr(
        kinds_module, "describe", lambda storage, path: (read.append(path), describe(storage, path))[1]
    )
    for step in (1, 2):
        _save(tmp_path, step, state_factory(step))
    assert [r.step for r in RunIndex(tmp_path).entries()] == [1, 2]
    assert [r.step for r in RunIndex(tmp_path).entries()] == [1, 2]  # a new RunIndex: the same process cache
    assert sorted(os.path.basename(p) for p in read) == ["step=1.ckpt", "step=2.ckpt"]
    read.clear()
    save_file(
        tmp_path / "step=2.ckpt", state_factory(5), metadata={"step": 5}
    )  # replaced under the same name
    assert [r.step for r in RunIndex(tmp_path).entries()] == [1, 5]
    assert [os.path.basename(p) for p in read] == ["step=2.ckpt"]


def test_the_index_file_of_earlier_versions_is_ignored(tmp_path: Path, state: dict[str, Any]) -> None:
    records = [_save(tmp_path, step, state, loss=float(step)) for step in (1, 2)]
    stale = {"format": "stepstone-index", "version": 1, "entries": [{"name": "gone.ckpt", "step": 7}]}
    (tmp_path / LEGACY_INDEX_NAME).write_text(json.dumps(stale))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert RunIndex(tmp_path).entries() == records
        newest = RunIndex(tmp_path).newest()
    assert newest is not None and newest.name == "step=2.ckpt"
    assert json.loads((tmp_path / LEGACY_INDEX_NAME).read_text()) == stale  # not ours to touch while reading


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
        _save(tmp_path, step, state)
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

    _save(tmp_path, 1, state)
    torch.save(state, tmp_path / "lightning.ckpt")  # no trailer, unknown step: oldest
    newest = RunIndex(tmp_path).newest()
    assert newest is not None and newest.name == "step=1.ckpt"
    os.remove(tmp_path / "step=1.ckpt")
    with pytest.warns(UserWarning, match="no stepstone trailer"):
        assert RunIndex(tmp_path).newest() is None
    assert RunIndex(tmp_path).newest(valid_only=False) is not None


def test_remote_index(memory_dir: str, state: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    index = RunIndex(memory_dir)
    records = [_save(memory_dir, step, state) for step in (1, 2, 3)]
    fs = fsspec.filesystem("memory")
    damaged = f"{memory_dir}/step=3.ckpt"[len("memory://") :]
    fs.pipe_file(damaged, fs.cat_file(damaged)[:-3])
    with pytest.warns(UserWarning, match=r"Ignoring.*step=3\.ckpt"):  # read on a worker, warned by the caller
        assert index.entries() == records[:2]
    read: list[str] = []
    describe = kinds_module.describe
    monkeypatch.setattr(
        kinds_module, "describe", lambda storage, path: (read.append(path), describe(storage, path))[1]
    )
    with pytest.warns(UserWarning, match=r"step=3\.ckpt"):
        assert index.entries() == records[:2]
    assert [os.path.basename(p) for p in read] == ["step=3.ckpt"]  # the others from the process cache
    with pytest.warns(UserWarning, match=r"step=3\.ckpt"):
        newest = index.newest()
    assert newest is not None and newest.name == "step=2.ckpt" and newest.path == records[1].path


def test_arguments_are_validated() -> None:
    with pytest.raises(MisconfigurationException, match="directory path"):
        RunIndex("")


# --- sharded (FSDP) checkpoint directories ---------------------------------------------------------------


def _sharded(directory: Path, name: str, step: int, **metrics: float) -> CheckpointRecord:
    state = {"state_dict": {"w": torch.full((2, 3), float(step))}, "epoch": 1, "global_step": step}
    return save_sharded(directory / name, state, metadata={"step": step, "metrics": metrics})


def _flip_a_shard(path: Path) -> None:
    shard = next(path.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))


def test_entries_include_committed_sharded_directories_only(tmp_path: Path, state: dict[str, Any]) -> None:
    file_record = _save(tmp_path, 1, state)
    sharded = _sharded(tmp_path, "step=2.ckpt", 2, loss=0.5)
    other_name = _sharded(tmp_path, "fsdp-step3", 3)  # a committed directory is listed whatever its name
    (tmp_path / "unfinished.ckpt").mkdir()  # no marker: an interrupted save, never a checkpoint
    (tmp_path / "unfinished.ckpt" / ".metadata").write_bytes(b"x")
    for hidden in (".step=4.ckpt.shardtmp-123-0123abcd", ".step=2.ckpt.shardold-123-0123abcd"):
        shutil.copytree(tmp_path / "step=2.ckpt", tmp_path / hidden)  # marker included: still never listed
    os.symlink("step=2.ckpt", tmp_path / "last.ckpt")  # an alias, as for files
    records = RunIndex(tmp_path).entries()
    assert records == [file_record, sharded, other_name]
    assert records[1] == read_sharded_info(tmp_path / "step=2.ckpt") and records[1].metrics == {"loss": 0.5}
    assert (
        records[1].size
        == sum(p.stat().st_size for p in (tmp_path / "step=2.ckpt").iterdir())
        - (tmp_path / "step=2.ckpt" / MARKER_NAME).stat().st_size
    )


def test_a_new_commit_of_a_sharded_directory_is_seen_at_once(tmp_path: Path) -> None:
    index = RunIndex(tmp_path)
    record = _sharded(tmp_path, "step=5.ckpt", 5, loss=0.25)
    assert index.entries() == [record]
    replaced = _sharded(
        tmp_path, "step=5.ckpt", 6
    )  # a new commit under the same name, in the same clock tick
    assert index.entries() == [replaced]
    assert sorted(os.listdir(tmp_path)) == ["step=5.ckpt"]


def test_same_size_files_replaced_within_one_clock_tick_are_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inodes are reused at once (ext4) and file times tick every few ms, so two saves of last.ckpt between two
    # listings can leave the same size, inode and time: emulated here by a listing that reports one version.
    real = LocalStorage.list_files
    monkeypatch.setattr(
        LocalStorage,
        "list_files",
        lambda self, d: {n: (size, "7:1") for n, (size, _) in real(self, d).items()},
    )
    index, path = RunIndex(tmp_path), tmp_path / "last.ckpt"
    cached = save_file(path, {"w": torch.zeros(100)}, metadata={"step": 0})
    assert index.entries() == [cached]
    same_size = 0
    for step in range(1, 30):
        record = save_file(path, {"w": torch.zeros(100)}, metadata={"step": step})
        same_size += record.size == cached.size
        assert index.entries() == [record]  # the trailer's CRC at the file's end tells them apart
        cached = record
    assert same_size > 0  # the case happened (the trailer's length varies with the save time's digits)


def test_newest_picks_by_step_across_files_and_directories(tmp_path: Path, state: dict[str, Any]) -> None:
    index = RunIndex(tmp_path)
    _save(tmp_path, 1, state)
    _sharded(tmp_path, "step=2.ckpt", 2)
    _save(tmp_path, 3, state)
    _sharded(tmp_path, "step=4.ckpt", 4)
    assert [r.step for r in index.newest_first()] == [4, 3, 2, 1]
    newest = index.newest()
    assert newest is not None and newest.name == "step=4.ckpt" and newest.verified
    _flip_a_shard(tmp_path / "step=4.ckpt")
    with pytest.warns(UserWarning, match=r"step=4\.ckpt.*next newest"):
        fallback = index.newest()
    assert fallback is not None and fallback.name == "step=3.ckpt"
    os.remove(tmp_path / "step=3.ckpt")
    with pytest.warns(UserWarning, match="next newest"):
        fallback = index.newest()
    assert fallback is not None and fallback.name == "step=2.ckpt" and fallback.verified
    assert index.is_sharded("step=2.ckpt") and not index.is_sharded("step=1.ckpt")
    assert index.verify("step=2.ckpt").verified and index.verify("step=1.ckpt").verified


def test_retention_and_delete_remove_directories_with_remove_sharded(
    tmp_path: Path, state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    index = RunIndex(tmp_path)
    _save(tmp_path, 1, state)
    for step in (2, 3):
        _sharded(tmp_path, f"step={step}.ckpt", step)
    removed: list[str] = []
    remove_dir = kinds_module.sharded_commit.remove_dir
    monkeypatch.setattr(
        kinds_module.sharded_commit,
        "remove_dir",
        lambda path: (removed.append(os.fspath(path)), remove_dir(path)),
    )
    keep = KeepLatest(1)(index.entries())
    assert keep == {"step=3.ckpt"}
    index.delete(*(r.name for r in index.entries() if r.name not in keep))
    assert removed == [str(tmp_path / "step=2.ckpt")]
    assert sorted(os.listdir(tmp_path)) == ["step=3.ckpt"]
    assert [r.name for r in index.entries()] == ["step=3.ckpt"]
    (tmp_path / "unfinished.ckpt").mkdir()
    with pytest.raises(MisconfigurationException, match=r"'unfinished\.ckpt'.*without the .*marker"):
        index.delete("unfinished.ckpt", "step=3.ckpt")
    assert (tmp_path / "unfinished.ckpt").is_dir() and (tmp_path / "step=3.ckpt").is_dir()  # nothing deleted
    index.delete("missing.ckpt")  # unknown names are ignored


def test_damaged_marker_is_ignored_with_a_warning(tmp_path: Path) -> None:
    _sharded(tmp_path, "step=1.ckpt", 1)
    _sharded(tmp_path, "step=2.ckpt", 2)
    (tmp_path / "step=2.ckpt" / MARKER_NAME).write_text("{not json")
    with pytest.warns(UserWarning, match=r"step=2\.ckpt.*not valid JSON"):
        assert [r.name for r in RunIndex(tmp_path).entries()] == ["step=1.ckpt"]
    (tmp_path / "step=2.ckpt" / MARKER_NAME).write_text('{"files": {"a": 3}}')
    with pytest.warns(UserWarning, match="malformed"):
        assert [r.name for r in RunIndex(tmp_path).entries()] == ["step=1.ckpt"]
