"""SaveQueue: background deletions off the caller's thread, never racing a new file; failures never dropped."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from stepstone.checkpoint import CheckpointRecord, SaveQueue, load_file, save_file
from stepstone.checkpoint.live import LiveGate


def _file(path: Path, size: int = 1024) -> str:
    path.write_bytes(b"x" * size)
    return str(path)


def test_remove_later_deletes_on_a_background_thread_and_finish_waits(tmp_path: Path) -> None:
    saves = SaveQueue()
    paths = [_file(tmp_path / f"{i}.ckpt") for i in range(3)]
    for path in paths:
        saves.remove_later(path)
    assert any(t.name.startswith("stepstone-delete") for t in threading.enumerate())
    assert saves.finish() is None
    assert not any(os.path.exists(p) for p in paths)
    assert not any(t.name.startswith("stepstone-delete") for t in threading.enumerate())


def test_a_file_written_again_waits_for_its_pending_deletion(tmp_path: Path) -> None:
    saves = SaveQueue()
    path = _file(tmp_path / "a.ckpt", size=64 * 1024 * 1024)
    saves.remove_later(path)
    saves.settle_deletions(path)  # what a save of the same name does first
    assert not os.path.exists(path)
    _file(tmp_path / "a.ckpt")  # so the old deletion cannot remove the new file
    saves.finish()
    assert os.path.exists(path)


def test_a_failed_background_deletion_is_raised_not_dropped(tmp_path: Path) -> None:
    saves = SaveQueue()
    folder = tmp_path / "not-a-file.ckpt"
    folder.mkdir()
    (folder / "inside").write_text("x")  # removing a non-empty directory as a file fails
    saves.remove_later(str(folder))
    error = saves.finish()
    assert isinstance(error, OSError)
    again = SaveQueue()
    again.remove_later(str(folder))
    with pytest.raises(OSError):
        again.settle_deletions()
    assert again.finish() is None


def test_submit_writes_a_snapshot_on_the_writer_thread(tmp_path: Path) -> None:
    queue = SaveQueue()
    state = {"w": torch.zeros(1000)}
    seen: list[str] = []

    def save(snapshot: dict[str, Any], gate: LiveGate) -> CheckpointRecord:
        seen.append(threading.current_thread().name)
        return save_file(tmp_path / "a.ckpt", snapshot, live_gate=gate)

    handle = queue.submit(state, save)
    state["w"] += 1  # after submit returns the caller may change the state: the file holds the snapshot
    handle.result()
    assert seen == ["stepstone-checkpoint-writer"]
    assert torch.equal(load_file(tmp_path / "a.ckpt")["w"], torch.zeros(1000))
    assert queue.finish() is None and queue.staging is not None and queue.staging.nbytes == 0


def test_an_untold_save_failure_is_raised_by_the_next_submit_then_finish_is_clean(tmp_path: Path) -> None:
    queue = SaveQueue()

    def failing(snapshot: dict[str, Any], gate: LiveGate) -> CheckpointRecord:
        raise OSError("injected")

    queue.submit({"w": torch.zeros(3)}, failing)
    with pytest.raises(OSError, match="injected"):
        queue.submit({"w": torch.zeros(3)}, failing)
    with pytest.raises(TypeError):
        queue.submit({"w": object()}, failing)  # refused in the caller's thread, nothing scheduled
    assert queue.finish() is None
