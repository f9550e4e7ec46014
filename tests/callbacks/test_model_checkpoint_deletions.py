"""Deletions owed by a trigger survive a crash: the resumed run finishes them, so no file is orphaned.

A kill between committing a new top-k file and deleting the one it replaced used to leave the replaced file
on disk, tracked by no state, forever (the kill torture found them piling up). Each checkpoint now records
the deletions its trigger owes; a run resumed from it finishes them. The file a run resumed from is kept for
that run and deleted by the next one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint.kinds import FileKind


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after the raise runs."""


def _fit(
    root: Path, epochs: int, ckpt_path: str | None = None, async_save: bool | None = None
) -> ModelCheckpoint:
    callback = ModelCheckpoint(
        dirpath=root / "ckpts", filename="{epoch}", monitor="val_loss", save_top_k=1, async_save=async_save
    )
    trainer(root, [callback], max_epochs=epochs).fit(
        ScriptedModel([4.0, 3.0, 2.0, 1.0]), loader(), loader(), ckpt_path=ckpt_path
    )
    return callback


def _files(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root / "ckpts") if n.endswith(".ckpt"))


def test_a_crash_before_the_deletion_is_finished_by_the_resumed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise Crash

    monkeypatch.setattr(FileKind, "remove", crash)  # the engine's one deletion path, for files
    with pytest.raises(Crash):
        _fit(tmp_path, epochs=2)  # epoch 1 is committed, then the run dies deleting epoch 0
    monkeypatch.undo()
    assert _files(tmp_path) == ["epoch=0.ckpt", "epoch=1.ckpt"]
    callback = _fit(tmp_path, epochs=3, ckpt_path="last")  # resumes from epoch=1.ckpt
    # epoch 0 was owed and is gone; epoch 1, the resume source, stays for this run (replaced by epoch 2)
    assert _files(tmp_path) == ["epoch=1.ckpt", "epoch=2.ckpt"]
    assert callback.best_model_path.endswith("epoch=2.ckpt")
    _fit(tmp_path, epochs=4, ckpt_path="last")  # the next run deletes the earlier resume source
    assert _files(tmp_path) == ["epoch=2.ckpt", "epoch=3.ckpt"]


_KILLED_AT_DELETION = """
import os, sys
from pathlib import Path
from stepstone.checkpoint.kinds import FileKind
from test_model_checkpoint_deletions import _fit

def kill(*args, **kwargs):
    os._exit(9)  # a real death: no exception handler, no finally, no atexit

FileKind.remove = kill  # the one deletion path: sync and background deletions alike
_fit(Path(sys.argv[1]), epochs=2, async_save=sys.argv[2] == "async")
"""


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_process_killed_between_commit_and_deletion_owes_it_to_the_next_start(
    tmp_path: Path, mode: str
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_DELETION, str(tmp_path), mode],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == 9, child.stderr.decode()[-2000:]
    assert _files(tmp_path) == ["epoch=0.ckpt", "epoch=1.ckpt"]  # epoch 1 committed, epoch 0 not yet deleted
    _fit(tmp_path, epochs=3, ckpt_path="last", async_save=mode == "async")
    assert _files(tmp_path) == ["epoch=1.ckpt", "epoch=2.ckpt"]  # the owed deletion is done


def test_without_a_crash_nothing_is_owed(tmp_path: Path) -> None:
    callback = _fit(tmp_path, epochs=3)
    assert _files(tmp_path) == ["epoch=2.ckpt"]
    assert callback.state_dict()["pending_deletions"] == []
