"""Background deletions of the Trainer's async saves: off the training thread, never racing a new file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from stepstone.trainer.async_saves import AsyncSaves


def _file(path: Path, size: int = 1024) -> str:
    path.write_bytes(b"x" * size)
    return str(path)


def test_remove_later_deletes_on_a_background_thread_and_finish_waits(tmp_path: Path) -> None:
    saves = AsyncSaves()
    paths = [_file(tmp_path / f"{i}.ckpt") for i in range(3)]
    for path in paths:
        saves.remove_later(path)
    assert any(t.name.startswith("stepstone-delete") for t in threading.enumerate())
    assert saves.finish() is None
    assert not any(os.path.exists(p) for p in paths)
    assert not any(t.name.startswith("stepstone-delete") for t in threading.enumerate())


def test_a_file_written_again_waits_for_its_pending_deletion(tmp_path: Path) -> None:
    saves = AsyncSaves()
    path = _file(tmp_path / "a.ckpt", size=64 * 1024 * 1024)
    saves.remove_later(path)
    saves.settle_deletions(path)  # what a save of the same name does first
    assert not os.path.exists(path)
    _file(tmp_path / "a.ckpt")  # so the old deletion cannot remove the new file
    saves.finish()
    assert os.path.exists(path)


def test_a_failed_background_deletion_is_raised_not_dropped(tmp_path: Path) -> None:
    saves = AsyncSaves()
    folder = tmp_path / "not-a-file.ckpt"
    folder.mkdir()
    (folder / "inside").write_text("x")  # removing a non-empty directory as a file fails
    saves.remove_later(str(folder))
    error = saves.finish()
    assert isinstance(error, OSError)
    again = AsyncSaves()
    again.remove_later(str(folder))
    with pytest.raises(OSError):
        again.settle_deletions()
    assert again.finish() is None
