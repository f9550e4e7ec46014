"""The demo: train a small model on built-in synthetic data with ModelCheckpoint, then resume from ``last``.

Run it with ``stepstone demo`` (or ``python3 dev.py demo`` from a fresh clone). Also importable: the model and
datamodule are handy for experiments and tests.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from stepstone.callbacks.model_checkpoint import ModelCheckpoint
from stepstone.core.datamodule import LightningDataModule
from stepstone.core.module import LightningModule
from stepstone.seed import seed_everything
from stepstone.trainer.trainer import Trainer

__all__ = ["DemoModel", "SyntheticDataModule", "run_demo"]


class SyntheticDataModule(LightningDataModule):
    """A noisy non-linear regression problem generated from a seed (no download).

    Args:
        samples: number of training samples (validation gets a quarter of that).
        features: input features.
        batch_size: batch size of both loaders.
        seed: generator seed, so every run sees the same data.
    """

    def __init__(self, samples: int = 2048, features: int = 16, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(features, 1, generator=gen)
        x = torch.randn(samples + samples // 4, features, generator=gen)
        y = torch.tanh(x @ weight) + 0.1 * torch.randn(x.shape[0], 1, generator=gen)
        self._train = TensorDataset(x[:samples], y[:samples])
        self._val = TensorDataset(x[samples:], y[samples:])

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled training batches."""
        return DataLoader(self._train, batch_size=self.hparams.batch_size, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader[Any]:
        """Validation batches in order."""
        return DataLoader(self._val, batch_size=self.hparams.batch_size)


class DemoModel(LightningModule):
    """A two-layer MLP regressor that logs ``train_loss`` and ``val_loss``.

    Args:
        features: input features.
        hidden: hidden units.
        lr: Adam learning rate.
    """

    def __init__(self, features: int = 16, hidden: int = 64, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict targets for a batch of inputs."""
        prediction: torch.Tensor = self.net(x)
        return prediction

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Mean squared error on a training batch."""
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Mean squared error on a validation batch (averaged over the epoch)."""
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y), prog_bar=True)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        """Adam with a step decay of the learning rate."""
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=2),
        }


def _trainer(directory: str, max_epochs: int) -> tuple[Trainer, ModelCheckpoint]:
    checkpoint = ModelCheckpoint(
        dirpath=os.path.join(directory, "checkpoints"),
        filename="demo-{epoch:02d}-{val_loss:.4f}",
        monitor="val_loss",
        mode="min",
        save_top_k=2,
        save_last=True,
    )
    trainer = Trainer(
        max_epochs=max_epochs,
        callbacks=[checkpoint],
        default_root_dir=directory,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=8,
    )
    return trainer, checkpoint


def run_demo(directory: str = "demo_run", first_epochs: int = 3, total_epochs: int = 5) -> dict[str, Any]:
    """Train for ``first_epochs``, report the best checkpoint, then resume from ``last`` up to ``total_epochs``.

    Args:
        directory: where logs and checkpoints go (emptied first so the demo is repeatable).
        first_epochs: epochs of the first run.
        total_epochs: ``max_epochs`` of the resumed run.

    Returns:
        A summary: best path and score, the step/epoch where the first run stopped and the resumed run ended.
    """
    shutil.rmtree(directory, ignore_errors=True)
    seed_everything(7, verbose=False)
    trainer, checkpoint = _trainer(directory, first_epochs)
    trainer.fit(DemoModel(), datamodule=SyntheticDataModule())
    assert checkpoint.best_model_score is not None
    best_score = float(checkpoint.best_model_score)
    print(f"\n[1] trained {trainer.current_epoch} epochs, {trainer.global_step} steps")
    print(f"    best checkpoint: {checkpoint.best_model_path}")
    print(f"    best val_loss:   {best_score:.4f}")
    print(f"    kept: {sorted(os.path.basename(p) for p in checkpoint.best_k_models)} + last.ckpt")
    best = DemoModel.load_from_checkpoint(checkpoint.best_model_path)
    print(f"    reloaded the best model from its file (hparams: {dict(best.hparams)})")
    stopped = {"epoch": trainer.current_epoch, "step": trainer.global_step}

    trainer2, checkpoint2 = _trainer(directory, total_epochs)
    trainer2.fit(DemoModel(), datamodule=SyntheticDataModule(), ckpt_path="last")
    print(f"\n[2] resumed from {trainer2.ckpt_path}")
    print(
        f"    it started at epoch {stopped['epoch']}, step {stopped['step']} and continued to epoch "
        f"{trainer2.current_epoch}, step {trainer2.global_step}"
    )
    assert checkpoint2.best_model_score is not None
    print(f"    best now: {checkpoint2.best_model_path} (val_loss {float(checkpoint2.best_model_score):.4f})")
    return {
        "best_model_path": checkpoint.best_model_path,
        "best_model_score": best_score,
        "stopped": stopped,
        "resumed_from": trainer2.ckpt_path,
        "ended": {"epoch": trainer2.current_epoch, "step": trainer2.global_step},
    }
