"""A tiny LightningModule whose monitored metrics follow a script, for checkpoint tests."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import stepstone as L


def loader(batches: int = 4, batch_size: int = 2, seed: int = 0) -> DataLoader[Any]:
    """``batches`` batches of a fixed random regression problem."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * batch_size, 4, generator=gen)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


class ScriptedModel(L.LightningModule):
    """Logs ``val_loss = val_losses[epoch]`` (the last value repeats) and a real ``train_loss``.

    Args:
        val_losses: the validation loss reported at each epoch.
        lr: SGD learning rate.
    """

    def __init__(self, val_losses: list[float] | None = None, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)
        self.val_losses = list(val_losses or [1.0])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        value = self.val_losses[min(self.current_epoch, len(self.val_losses) - 1)]
        self.log("val_loss", torch.tensor(value))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def trainer(tmp_path: Any, callbacks: list[Any], **kwargs: Any) -> L.Trainer:
    """A quiet Trainer rooted in ``tmp_path``."""
    kwargs.setdefault("max_epochs", 3)
    kwargs.setdefault("logger", False)
    return L.Trainer(
        default_root_dir=tmp_path,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )
