"""The checkpoint-kind interface: one dispatch for files and sharded directories, one sweep for both."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from stepstone.checkpoint import (
    FILE,
    SHARDED_DIRECTORY,
    kind_of,
    link_file,
    remove_checkpoint,
    save_file,
    sweep_stale_temps,
)
from stepstone.checkpoint.commit import temp_path_for
from stepstone.checkpoint.kinds import is_uncommitted_directory
from stepstone.checkpoint.sharded import save_sharded
from stepstone.checkpoint.sharded_commit import temp_dir_for

DEAD_PID = 2**22 + 12345  # above the default pid_max: no live process has it


def _sharded(path: Path, step: int) -> None:
    state = {"state_dict": {"w": torch.full((2, 3), float(step))}, "global_step": step}
    save_sharded(path, state, metadata={"step": step})


def test_kind_of_tells_files_from_sharded_directories(tmp_path: Path) -> None:
    save_file(tmp_path / "a.ckpt", {"w": torch.ones(2)}, metadata={"step": 3})
    _sharded(tmp_path / "b.ckpt", 4)
    (tmp_path / "unfinished.ckpt").mkdir()
    assert kind_of(tmp_path / "a.ckpt") is FILE
    assert kind_of(tmp_path / "b.ckpt") is SHARDED_DIRECTORY
    assert kind_of(tmp_path / "missing.ckpt") is FILE
    assert kind_of(tmp_path / "unfinished.ckpt") is FILE
    assert kind_of("memory://bucket/x.ckpt") is FILE
    assert is_uncommitted_directory(tmp_path / "unfinished.ckpt")
    assert not is_uncommitted_directory(tmp_path / "b.ckpt")
    assert not is_uncommitted_directory(tmp_path / "a.ckpt")


def test_each_kind_describes_verifies_and_removes_its_checkpoints(tmp_path: Path) -> None:
    save_file(tmp_path / "a.ckpt", {"w": torch.ones(2)}, metadata={"step": 3})
    _sharded(tmp_path / "b.ckpt", 4)
    for name, step in (("a.ckpt", 3), ("b.ckpt", 4)):
        path = str(tmp_path / name)
        kind = kind_of(path)
        assert (kind.describe(path).step, kind.describe(path).verified) == (step, False)
        assert (kind.verify(path).step, kind.verify(path).verified) == (step, True)
        kind.remove(path)
        assert not os.path.lexists(path)
        kind.remove(path)  # missing: not an error
    assert os.listdir(tmp_path) == []


def test_remove_checkpoint_is_the_one_deletion_for_every_kind(tmp_path: Path) -> None:
    save_file(tmp_path / "a.ckpt", {"w": torch.ones(2)}, metadata={"step": 3})
    _sharded(tmp_path / "b.ckpt", 4)
    link_file(str(tmp_path / "a.ckpt"), str(tmp_path / "last.ckpt"))
    os.symlink(tmp_path / "b.ckpt", tmp_path / "last-dir.ckpt")
    remove_checkpoint(tmp_path / "last.ckpt")  # a link is unlinked, its target kept
    remove_checkpoint(str(tmp_path / "last-dir.ckpt"))
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt", "b.ckpt"]
    remove_checkpoint(tmp_path / "a.ckpt")
    remove_checkpoint(tmp_path / "b.ckpt")
    remove_checkpoint(tmp_path / "b.ckpt")  # missing: not an error
    assert os.listdir(tmp_path) == []


def test_remove_checkpoint_refuses_a_directory_that_is_no_checkpoint(tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished.ckpt"
    unfinished.mkdir()
    (unfinished / "shard").write_bytes(b"x")
    with pytest.raises(IsADirectoryError, match="commit marker"):
        remove_checkpoint(unfinished)
    assert (unfinished / "shard").exists()


def test_each_kind_commits_a_temporary_onto_its_final_path(tmp_path: Path) -> None:
    final = str(tmp_path / "x.bin")
    temp = FILE.temp_path(final)
    Path(temp).write_bytes(b"new")
    FILE.commit(temp, final)
    assert Path(final).read_bytes() == b"new" and not os.path.exists(temp)
    _sharded(tmp_path / "old.ckpt", 1)
    _sharded(tmp_path / "new.ckpt", 2)
    temp_dir = SHARDED_DIRECTORY.temp_path(str(tmp_path / "old.ckpt"))
    os.replace(tmp_path / "new.ckpt", temp_dir)
    SHARDED_DIRECTORY.commit(temp_dir, str(tmp_path / "old.ckpt"))
    assert SHARDED_DIRECTORY.verify(str(tmp_path / "old.ckpt")).step == 2
    assert sorted(os.listdir(tmp_path)) == ["old.ckpt", "x.bin"]


def test_the_public_sweep_removes_dead_writers_temporaries_of_both_kinds(tmp_path: Path) -> None:
    dead_file = temp_path_for(str(tmp_path / "a.ckpt")).replace(f"-{os.getpid()}-", f"-{DEAD_PID}-")
    dead_dir = temp_dir_for(str(tmp_path / "b.ckpt")).replace(f"-{os.getpid()}-", f"-{DEAD_PID}-")
    live_file = temp_path_for(str(tmp_path / "c.ckpt"))
    Path(dead_file).write_bytes(b"x")
    os.mkdir(dead_dir)
    Path(dead_dir, "shard").write_bytes(b"x")
    Path(live_file).write_bytes(b"x")
    removed = sweep_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead_file, dead_dir])
    assert os.listdir(tmp_path) == [os.path.basename(live_file)]
    old = time.time() - 7 * 3600
    os.utime(live_file, (old, old))  # too old even for a live writer
    assert sweep_stale_temps(tmp_path) == [live_file]
