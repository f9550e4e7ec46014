"""The Trainer's one public checkpoint port: saves (sync and async), removals and the settling of async saves."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

import stepstone as L
from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import Callback
from stepstone.checkpoint import CheckpointManager, SaveHandle, read_info
from stepstone.errors import MisconfigurationException
from stepstone.trainer.checkpoint_port import split_checkpoint_path

SRC = Path(__file__).resolve().parents[2] / "src" / "stepstone"


def test_no_callback_module_touches_a_private_attribute_of_the_trainer() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted((SRC / "callbacks").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\btrainer\._", line)
    ]
    assert offenders == []


def test_the_trainer_side_calls_no_private_method_of_a_callback() -> None:
    # Names a callback object then reaches into it: ``callback._x``, ``cb._x``, ``checkpoint_callback._x``.
    pattern = re.compile(r"\b(callback|cb|checkpoint_callback|checkpoint_callbacks\[\d+\])\._\w")
    private_names = re.compile(
        r"\._(complete_pending|newest_checkpoint|hold_restored_step|last_global_step_saved)\b"
    )
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for folder in ("trainer", "loops")
        for path in sorted((SRC / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) or private_names.search(line)
    ]
    assert offenders == []


class _SavesEachEpoch(Callback):
    """A third-party callback doing what ModelCheckpoint does, through public methods only."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.committed: list[tuple[str, int]] = []
        self.settled_on_training_thread: list[bool] = []
        self.last_handle: SaveHandle | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = str(self.folder / f"epoch={trainer.current_epoch}.ckpt")

        def settled(handle: SaveHandle) -> None:
            import threading

            self.settled_on_training_thread.append(threading.current_thread() is threading.main_thread())
            self.committed.append((path, handle.result().step))

        self.last_handle = trainer.checkpoint_port.save(path, asynchronous=True, on_complete=settled)
        if trainer.current_epoch == 2:  # the oldest file leaves, off the training thread
            trainer.checkpoint_port.remove(str(self.folder / "epoch=0.ckpt"), background=True)


def test_a_third_party_callback_saves_asynchronously_and_is_told_of_each_commit(tmp_path: Path) -> None:
    callback = _SavesEachEpoch(tmp_path)
    t = trainer(tmp_path, [callback], max_epochs=3, enable_checkpointing=False)
    t.fit(ScriptedModel(), loader(), loader())
    # Settled before the next save was built, and the last one when fit ended; each once, in order.
    assert callback.committed == [(str(tmp_path / f"epoch={e}.ckpt"), 4 * (e + 1)) for e in range(3)]
    assert callback.settled_on_training_thread == [True, True, True]
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=1.ckpt", "epoch=2.ckpt"]
    assert read_info(str(tmp_path / "epoch=2.ckpt")).step == 12


def test_save_checkpoint_returns_a_handle_done_for_a_sync_save_and_committing_for_an_async_one(
    tmp_path: Path,
) -> None:
    t = trainer(tmp_path, [], max_epochs=1, enable_checkpointing=False)
    t.fit(ScriptedModel(), loader())
    sync = t.save_checkpoint(tmp_path / "sync.ckpt")
    assert sync.done() and sync.result().step == 4
    background = t.save_checkpoint(tmp_path / "async.ckpt", asynchronous=True)
    assert background.result().step == 4
    assert read_info(str(tmp_path / "async.ckpt")).step == 4
    assert t.checkpoint_port.finish() is None  # joins the writer and frees the host buffers


def test_save_checkpoint_without_a_model_names_the_fix(tmp_path: Path) -> None:
    t = trainer(tmp_path, [])
    with pytest.raises(MisconfigurationException, match="call fit/validate/test/predict first"):
        t.save_checkpoint(tmp_path / "x.ckpt")


def test_remove_deletes_a_committed_file(tmp_path: Path) -> None:
    t = trainer(tmp_path, [], max_epochs=1, enable_checkpointing=False)
    t.fit(ScriptedModel(), loader())
    t.save_checkpoint(tmp_path / "gone.ckpt")
    t.checkpoint_port.remove(str(tmp_path / "gone.ckpt"))
    assert not (tmp_path / "gone.ckpt").exists()


def test_every_save_and_removal_goes_through_the_folders_manager_sharing_the_trainers_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, str]] = []
    for method in ("save_as", "remove"):
        real = getattr(CheckpointManager, method)

        def recording(manager: CheckpointManager, name: str, *args: Any, _real: Any = real, **kw: Any) -> Any:
            calls.append((_real.__name__, manager.directory, name))
            return _real(manager, name, *args, **kw)

        monkeypatch.setattr(CheckpointManager, method, recording)
    t = trainer(tmp_path, [], max_epochs=1, enable_checkpointing=False)
    t.fit(ScriptedModel(), loader())
    t.save_checkpoint(tmp_path / "a" / "sync.ckpt")
    t.save_checkpoint(tmp_path / "a" / "async.ckpt", asynchronous=True).result()
    t.checkpoint_port.remove(str(tmp_path / "a" / "sync.ckpt"), background=True)
    folder = str(tmp_path / "a")
    assert calls == [
        ("save_as", folder, "sync.ckpt"),
        ("save_as", folder, "async.ckpt"),
        ("remove", folder, "sync.ckpt"),
    ]
    manager = t.checkpoint_port.manager(folder)
    assert manager is t.checkpoint_port.manager(folder) and manager.queue is t.checkpoint_port.queue
    assert t.checkpoint_port.finish() is None  # settles the background deletion
    assert sorted(os.listdir(folder)) == ["async.ckpt"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("x.ckpt", (".", "x.ckpt")),
        ("/r/d/x.ckpt", ("/r/d", "x.ckpt")),
        ("s3://bucket/d/x.ckpt", ("s3://bucket/d", "x.ckpt")),
        ("memory://x.ckpt", ("memory://", "x.ckpt")),
        ("file:///r/x.ckpt", ("file:///r", "x.ckpt")),
    ],
)
def test_a_checkpoint_path_splits_into_its_folder_and_name(path: str, expected: tuple[str, str]) -> None:
    assert split_checkpoint_path(path) == expected


def test_a_path_naming_a_folder_is_refused(tmp_path: Path) -> None:
    t = trainer(tmp_path, [], max_epochs=1, enable_checkpointing=False)
    t.fit(ScriptedModel(), loader())
    with pytest.raises(MisconfigurationException, match=r"names a directory; pass a checkpoint file path"):
        t.save_checkpoint(f"{tmp_path}/")


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_save_publishes_the_committed_file_as_a_copy_or_a_link(tmp_path: Path, asynchronous: bool) -> None:
    t = trainer(tmp_path, [], max_epochs=1, enable_checkpointing=False)
    t.fit(ScriptedModel(), loader())
    port = t.checkpoint_port
    port.save(
        str(tmp_path / "a.ckpt"), asynchronous=asynchronous, publish_as=str(tmp_path / "copy.ckpt")
    ).result()
    port.save(
        str(tmp_path / "b.ckpt"),
        asynchronous=asynchronous,
        publish_as=str(tmp_path / "link.ckpt"),
        publish_link=True,
    ).result()
    assert port.finish() is None
    assert read_info(str(tmp_path / "copy.ckpt")).step == 4 and not os.path.islink(tmp_path / "copy.ckpt")
    assert os.readlink(tmp_path / "link.ckpt") == "b.ckpt"
