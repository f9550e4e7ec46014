"""A real training run's checkpoint directory, shared by the ``stepstone ckpt`` tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import ModelCheckpoint


@pytest.fixture(scope="module")
def _trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    directory = root / "ckpts"
    checkpoint = ModelCheckpoint(
        dirpath=directory, filename="{epoch}-{val_loss:.2f}", monitor="val_loss", save_top_k=2, save_last=True
    )
    trainer(root, [checkpoint], max_epochs=4).fit(ScriptedModel([3.0, 1.0, 2.0, 0.5]), loader(), loader())
    return directory


@pytest.fixture
def run_dir(_trained: Path, tmp_path: Path) -> Path:
    """A copy of a run's checkpoint folder: top 2 by val_loss (epochs 1 and 3) and last.ckpt (epoch 3)."""
    target = tmp_path / "ckpts"
    shutil.copytree(_trained, target, symlinks=True)
    return target
