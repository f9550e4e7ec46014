"""Lightning's spelling Trainer(plugins=[AsyncCheckpointIO()]) turns on asynchronous ModelCheckpoint saves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import stepstone as L
from scripted import ScriptedModel, loader
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint import verify_file
from stepstone.errors import MisconfigurationException
from stepstone.plugins import AsyncCheckpointIO


def _fit(tmp_path: Path, cb: ModelCheckpoint, plugins: Any) -> L.Trainer:
    t = L.Trainer(
        default_root_dir=tmp_path,
        callbacks=[cb],
        plugins=plugins,
        max_steps=3,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    t.fit(ScriptedModel(), loader())
    return t


@pytest.mark.parametrize("plugins", [[AsyncCheckpointIO()], AsyncCheckpointIO(), (AsyncCheckpointIO(),)])
def test_the_plugin_makes_model_checkpoint_asynchronous(tmp_path: Path, plugins: Any) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1)
    t = _fit(tmp_path, cb, plugins)
    assert t.checkpoint_port.queue.writer is not None
    verify_file(cb.best_model_path)


def test_the_callback_can_opt_out(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, async_save=False)
    t = _fit(tmp_path, cb, [AsyncCheckpointIO()])
    assert t.checkpoint_port.queue.writer is None
    verify_file(cb.best_model_path)


def test_without_the_plugin_saves_are_synchronous(tmp_path: Path) -> None:
    t = _fit(tmp_path, ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1), None)
    assert t.checkpoint_port.queue.writer is None


def test_other_plugins_are_refused_by_name() -> None:
    with pytest.raises(
        MisconfigurationException, match=r"plugins=\[AsyncCheckpointIO\(\), 'amp'\].*AsyncCheckpointIO"
    ):
        L.Trainer(plugins=[AsyncCheckpointIO(), "amp"])


def test_a_wrapped_checkpoint_io_is_refused() -> None:
    with pytest.raises(MisconfigurationException, match=r"checkpoint_io=.*without arguments"):
        AsyncCheckpointIO(checkpoint_io=object())
