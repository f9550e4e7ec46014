"""Hostile and damaged files on every Trainer-side load path: refused with stepstone's errors, naming the file.

A hostile checkpoint carries a pickle payload (``__reduce__`` that would create a sentinel file); it must be
refused by ``LightningModule.load_from_checkpoint``, ``LightningDataModule.load_from_checkpoint`` and
``Trainer.fit/validate/test(ckpt_path=...)`` -- whether it is a plain torch file or a crafted stepstone file
whose checksums verify -- and the sentinel must never appear. Only ``load_from_checkpoint(weights_only=False)``
(an explicit opt-in for trusted legacy files) unpickles it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from scripted import ScriptedModel, loader, trainer
from stepstone.checkpoint import format as fmt
from stepstone.checkpoint import load_file
from stepstone.checkpoint.outputs import FdOutput
from stepstone.errors import CheckpointCorruptError, UnsafeCheckpointError


class Payload:
    """Unpickling this creates the sentinel (a directory: no file handle to leak): proof that code ran."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.sentinel, 0o777, True))


class Data(L.LightningDataModule):
    def __init__(self, batches: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> Any:
        return loader(self.hparams.batches)


class WithTestStep(ScriptedModel):
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)


def _good_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "good.ckpt"
    fit = trainer(tmp_path, [], max_epochs=1, enable_checkpointing=False)
    fit.fit(ScriptedModel(), datamodule=Data())
    fit.save_checkpoint(path)
    return path


def _hostile(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A real checkpoint with a payload in its hyperparameters: ``(file, sentinel)``."""
    sentinel = tmp_path / "pwned"
    state = load_file(_good_checkpoint(tmp_path))
    state["hyper_parameters"]["extra"] = Payload(str(sentinel))  # unpickles to None (what makedirs returns)
    state["datamodule_hyper_parameters"] = {"batches": 4, "extra": Payload(str(sentinel))}
    path = tmp_path / f"{kind}.ckpt"
    if kind == "plain":  # a legacy torch/Lightning file, no trailer
        torch.save(state, path)
    else:  # a crafted stepstone file: valid trailer and checksums
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fmt.write_checkpoint(state, FdOutput(fd), {"step": 4})
        finally:
            os.close(fd)
    return path, sentinel


LOADERS: dict[str, Callable[[Path, Path], Any]] = {
    "LightningModule.load_from_checkpoint": lambda path, root: ScriptedModel.load_from_checkpoint(path),
    "LightningDataModule.load_from_checkpoint": lambda path, root: Data.load_from_checkpoint(path),
    "Trainer.fit": lambda path, root: trainer(root, [], max_epochs=2).fit(
        ScriptedModel(), loader(), ckpt_path=path
    ),
    "Trainer.validate": lambda path, root: trainer(root, []).validate(
        ScriptedModel(), loader(), ckpt_path=path
    ),
    "Trainer.test": lambda path, root: trainer(root, []).test(WithTestStep(), loader(), ckpt_path=path),
}


@pytest.mark.parametrize("kind", ["plain", "stepstone"])
@pytest.mark.parametrize("entry", sorted(LOADERS))
def test_pickle_payload_is_refused_on_every_load_path(tmp_path: Path, entry: str, kind: str) -> None:
    path, sentinel = _hostile(tmp_path, kind)
    with pytest.raises(UnsafeCheckpointError, match="trusted=True") as error:
        LOADERS[entry](path, tmp_path)
    assert str(path) in str(error.value)
    assert not sentinel.exists()


def test_trusted_legacy_files_need_the_explicit_opt_in(tmp_path: Path) -> None:
    path, sentinel = _hostile(tmp_path, "plain")
    with pytest.raises(UnsafeCheckpointError):
        ScriptedModel.load_from_checkpoint(path, weights_only=True)
    assert not sentinel.exists()
    model = ScriptedModel.load_from_checkpoint(path, weights_only=False)  # the documented opt-in
    assert sentinel.exists() and isinstance(model, ScriptedModel)


@pytest.mark.parametrize("entry", sorted(LOADERS))
def test_damaged_files_raise_checkpoint_corrupt_error_naming_the_file(tmp_path: Path, entry: str) -> None:
    path = _good_checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError) as error:
        LOADERS[entry](path, tmp_path)
    assert error.value.path == str(path) and str(path) in str(error.value)
