"""The same tiny model under Lightning 2.6.6 and stepstone, defined at module level so that it pickles.

Import with ``from twin_models import twin, fit_twin`` (``tests`` is on pytest's ``pythonpath``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import torch
from torch import nn

import stepstone as L
from models import FEATURES, loader


def _step(module: Any, batch: torch.Tensor) -> torch.Tensor:
    return module.layer(batch).pow(2).mean()


def _optimizers(module: Any) -> Any:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1)]


class _Net:
    """The model's body, shared by both frameworks' classes (module level, so both pickle)."""

    def __init__(self, width: int = FEATURES) -> None:
        super().__init__()
        self.save_hyperparameters()  # type: ignore[attr-defined]
        self.layer = nn.Linear(width, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return _step(self, batch)

    def configure_optimizers(self) -> Any:
        return _optimizers(self)


class LightningNet(_Net, lightning.LightningModule):
    pass


class StepstoneNet(_Net, L.LightningModule):
    pass


def twin(framework: str) -> tuple[Any, type[Any]]:
    """The framework module (``lightning`` or ``stepstone``) and its model class."""
    return (lightning, LightningNet) if framework == "lightning" else (L, StepstoneNet)


def fit_twin(framework: str, tmp_path: Path, **trainer_kwargs: Any) -> tuple[Any, Any]:
    """A Trainer (default logger and ModelCheckpoint) that fitted a fresh model for one epoch (4 steps)."""
    fw, net = twin(framework)
    model = net()
    trainer = fw.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **trainer_kwargs,
    )
    trainer.fit(model, loader())
    return trainer, model
