"""CheckpointManager's named saves, publishing, removal and shared SaveQueue (the Trainer's run-directory object)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone.checkpoint as engine
import stepstone.checkpoint.manager as manager_module
from stepstone.checkpoint import (
    SHARDED_DIRECTORY,
    CheckpointManager,
    KeepLatest,
    SaveQueue,
    kind_of,
    load_file,
    read_info,
    verify_file,
)
from stepstone.errors import CheckpointError, MisconfigurationException


def _state(value: float) -> dict[str, Any]:
    return {"w": torch.full((1000,), value)}


def test_save_as_writes_the_name_and_replaces_an_existing_checkpoint(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    first = manager.save_as("last.ckpt", _state(1.0), metadata={"step": 3, "epoch": 0}).result()
    second = manager.save_as("last.ckpt", _state(2.0), metadata={"step": 5, "epoch": 1}).result()
    assert first.path == second.path == str(tmp_path / "last.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    info = read_info(tmp_path / "last.ckpt")
    assert info is not None and (info.step, info.epoch) == (5, 1)
    assert torch.equal(load_file(tmp_path / "last.ckpt")["w"], torch.full((1000,), 2.0))


def test_save_as_takes_any_file_name_but_no_path(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save_as("model.pt", _state(1.0))
    assert verify_file(tmp_path / "model.pt").verified
    for name in ("sub/x.ckpt", "", "..", "."):
        with pytest.raises(MisconfigurationException, match=r"name=.*plain file or directory name"):
            manager.save_as(name, _state(1.0))


@pytest.mark.parametrize("asynchronous", [False, True])
def test_publish_as_copies_after_the_commit_on_the_thread_that_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    threads: list[str] = []
    real = engine.copy_file

    def observed(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "copy_file", observed)
    with CheckpointManager(tmp_path) as manager:
        handle = manager.save_as("a.ckpt", _state(4.0), asynchronous=asynchronous, publish_as="last.ckpt")
        handle.result()
    assert verify_file(tmp_path / "last.ckpt").verified and not os.path.islink(tmp_path / "last.ckpt")
    assert torch.equal(load_file(tmp_path / "last.ckpt")["w"], torch.full((1000,), 4.0))
    expected = "stepstone-checkpoint-writer" if asynchronous else threading.current_thread().name
    assert threads == [expected]


def test_publish_link_makes_a_relative_symlink_and_refuses_a_remote_target(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save_as("a.ckpt", _state(1.0), publish_as="last.ckpt", publish_link=True)
    assert os.readlink(tmp_path / "last.ckpt") == "a.ckpt"
    with pytest.raises(MisconfigurationException, match="publish_link=True needs a local path"):
        manager.save_as("b.ckpt", _state(1.0), publish_as="memory://elsewhere/last.ckpt", publish_link=True)
    assert not (tmp_path / "b.ckpt").exists()  # refused before anything was written


def test_remove_deletes_every_kind_and_ignores_a_missing_name(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save_as("a.ckpt", _state(1.0), publish_as="last.ckpt", publish_link=True)
    manager.remove("last.ckpt")  # the link only
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt"]
    manager.remove("a.ckpt")
    manager.remove("a.ckpt")
    assert os.listdir(tmp_path) == []
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError):
        manager.remove("folder")  # not a committed checkpoint: kept
    assert (tmp_path / "folder").is_dir()


def test_a_background_removal_is_settled_before_the_name_is_written_again(tmp_path: Path) -> None:
    queue = SaveQueue()
    manager = CheckpointManager(tmp_path, queue=queue)
    manager.save_as("a.ckpt", _state(1.0))
    manager.remove("a.ckpt", background=True)
    manager.save_as("a.ckpt", _state(2.0))  # the old deletion can no longer remove the new file
    assert queue.finish() is None
    assert torch.equal(load_file(tmp_path / "a.ckpt")["w"], torch.full((1000,), 2.0))


def test_a_failed_background_removal_is_raised_by_close(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    (tmp_path / "x.ckpt").mkdir()
    (tmp_path / "x.ckpt" / "inside").write_text("x")  # a folder without a commit marker: refused
    manager.remove("x.ckpt", background=True)
    assert any(t.name.startswith("stepstone-delete") for t in threading.enumerate())
    with pytest.raises(IsADirectoryError):
        manager.close()
    assert not any(t.name.startswith("stepstone-delete") for t in threading.enumerate())


def test_sharded_save_as_writes_a_directory_that_remove_deletes(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    record = manager.save_as("s.ckpt", {"state_dict": {"w": torch.ones(4)}, "epoch": 2}, sharded=True)
    assert record.result().path == str(tmp_path / "s.ckpt")
    assert kind_of(tmp_path / "s.ckpt") is SHARDED_DIRECTORY
    manager.remove("s.ckpt")
    assert os.listdir(tmp_path) == []
    with pytest.raises(MisconfigurationException, match=r"sharded=True.*synchronous"):
        manager.save_as("t.ckpt", {"state_dict": {}}, sharded=True, asynchronous=True)


def test_managers_sharing_a_queue_share_one_writer_and_one_set_of_buffers(tmp_path: Path) -> None:
    queue = SaveQueue()
    one = CheckpointManager(tmp_path / "one", queue=queue)
    two = CheckpointManager(tmp_path / "two", queue=queue, async_save=True)
    assert one.queue is two.queue is queue and queue.writer is None
    first = one.save_as("a.ckpt", _state(1.0), asynchronous=True)
    writer, staging = queue.writer, queue.staging
    second = two.save(1, _state(2.0))
    assert first.done()  # the second save waited for the first: one in flight
    assert queue.writer is writer and queue.staging is staging
    second.result()
    two.close()
    one.close()  # a shared queue is not finished by its managers
    assert queue.writer is writer
    assert queue.finish() is None
    with pytest.raises(CheckpointError, match="closed"):
        one.save_as("b.ckpt", _state(1.0))


def test_a_shared_queue_owns_the_staging_budget(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"queue.max_staging_bytes"):
        CheckpointManager(tmp_path, queue=SaveQueue(), async_save=True, max_staging_bytes=0)
    with pytest.raises(MisconfigurationException, match="queue must be a SaveQueue"):
        CheckpointManager(tmp_path, queue="yes")  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationException, match="max_staging_bytes"):
        SaveQueue(max_staging_bytes=-1)


def test_only_global_rank_zero_sweeps_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / ".step=1.ckpt.tmp-999999999-0123abcd"
    stale.write_bytes(b"partial")
    monkeypatch.setattr(manager_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(manager_module.dist, "get_rank", lambda: 1)
    CheckpointManager(tmp_path)
    assert stale.exists()  # another rank's manager leaves the shared folder to rank 0
    monkeypatch.setattr(manager_module.dist, "get_rank", lambda: 0)
    CheckpointManager(tmp_path)
    assert not stale.exists()


def test_retention_deletes_through_remove_the_one_deletion_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[str] = []
    real = CheckpointManager.remove

    def recording(manager: CheckpointManager, name: str, background: bool = False) -> None:
        removed.append(name)
        real(manager, name, background)

    monkeypatch.setattr(CheckpointManager, "remove", recording)
    with CheckpointManager(tmp_path, retention=KeepLatest(1), async_save=True) as manager:
        for step in (1, 2, 3):
            manager.save(step, _state(float(step)))
    assert removed == ["step=1.ckpt", "step=2.ckpt"]
    assert sorted(os.listdir(tmp_path)) == ["step=3.ckpt"]
