"""Shared test models: a BoringModel on a tiny random dataset, a hook recorder, an in-memory logger.

Import with ``from models import ...`` (``tests`` is on pytest's ``pythonpath``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import stepstone as L
from stepstone.loggers.logger import Logger

FEATURES = 4


class RandomDataset(Dataset[torch.Tensor]):
    """``length`` random vectors of ``features`` values, fixed by ``seed``."""

    def __init__(self, length: int = 16, features: int = FEATURES, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.data = torch.randn(length, features, generator=generator)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


class RandomIterableDataset(IterableDataset[torch.Tensor]):
    """Like RandomDataset but without ``__len__`` (the Trainer cannot know the number of batches)."""

    def __init__(self, length: int = 16, features: int = FEATURES, seed: int = 0) -> None:
        self.data = RandomDataset(length, features, seed).data

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.data)


def loader(length: int = 16, batch_size: int = 4, seed: int = 0, **kwargs: Any) -> DataLoader[torch.Tensor]:
    """A DataLoader over ``RandomDataset(length)``: ``ceil(length / batch_size)`` batches."""
    return DataLoader(RandomDataset(length, seed=seed), batch_size=batch_size, **kwargs)


def iterable_loader(length: int = 16, batch_size: int = 4) -> DataLoader[torch.Tensor]:
    """A DataLoader over an IterableDataset: no ``len``."""
    return DataLoader(RandomIterableDataset(length), batch_size=batch_size)


def trainer_kwargs(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The quiet defaults of these tests (no checkpoints, progress bar, logger or summary), then ``overrides``."""
    kwargs: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "logger": False,
        "enable_model_summary": False,
    }
    kwargs.update(overrides)
    return kwargs


def make_trainer(tmp_path: Path, **overrides: Any) -> L.Trainer:
    """``L.Trainer(**trainer_kwargs(tmp_path, **overrides))``."""
    return L.Trainer(**trainer_kwargs(tmp_path, **overrides))


class BoringModel(L.LightningModule):
    """Lightning's BoringModel, smaller: a linear layer fit to ones; 4 training batches of 4 per epoch."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = nn.Linear(FEATURES, 2)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    @staticmethod
    def loss(out: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, torch.ones_like(out))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        return {"loss": self.loss(self(batch))}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        loss = self.loss(self(batch))
        self.log("val_loss", loss)
        return {"x": loss}

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        loss = self.loss(self(batch))
        self.log("test_loss", loss)
        return {"y": loss}

    def predict_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader[torch.Tensor]:
        return loader(16)

    def val_dataloader(self) -> DataLoader[torch.Tensor]:
        return loader(8, seed=1)

    def test_dataloader(self) -> DataLoader[torch.Tensor]:
        return loader(8, seed=2)

    def predict_dataloader(self) -> DataLoader[torch.Tensor]:
        return loader(8, seed=3)


# --- recording hook calls ---------------------------------------------------------------------------

MODULE_HOOKS = (
    "prepare_data",
    "setup",
    "configure_model",
    "configure_optimizers",
    "train_dataloader",
    "val_dataloader",
    "test_dataloader",
    "predict_dataloader",
    "on_fit_start",
    "on_fit_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_validation_model_eval",
    "on_validation_model_train",
    "on_validation_model_zero_grad",
    "on_test_start",
    "on_test_end",
    "on_test_epoch_start",
    "on_test_epoch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_test_model_eval",
    "on_test_model_train",
    "on_predict_start",
    "on_predict_end",
    "on_predict_epoch_start",
    "on_predict_epoch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_predict_model_eval",
    "on_before_batch_transfer",
    "transfer_batch_to_device",
    "on_after_batch_transfer",
    "training_step",
    "validation_step",
    "test_step",
    "predict_step",
    "on_before_zero_grad",
    "optimizer_zero_grad",
    "on_before_backward",
    "backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "configure_gradient_clipping",
    "clip_gradients",
    "optimizer_step",
    "lr_scheduler_step",
    "teardown",
)

CALLBACK_HOOKS = tuple(
    name
    for name in dir(L.Callback)
    if (name.startswith("on_") or name in ("setup", "teardown")) and callable(getattr(L.Callback, name))
)


def _recording(name: str, prefix: str, owner: type) -> Any:
    def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.events.append(prefix + name)
        return getattr(super(owner, self), name)(*args, **kwargs)

    hook.__name__ = name
    return hook


class HookedModel(BoringModel):
    """BoringModel that appends the name of every hook it runs (on entry) to ``self.events``."""

    def __init__(self, events: list[str] | None = None) -> None:
        super().__init__()
        self.events: list[str] = [] if events is None else events


for _name in MODULE_HOOKS:
    setattr(HookedModel, _name, _recording(_name, "", HookedModel))


class RecordingCallback(L.Callback):
    """A callback that appends ``"Callback.<hook>"`` to ``events`` (shared with a HookedModel) for every hook."""

    def __init__(self, events: list[str]) -> None:
        self.events = events


for _name in CALLBACK_HOOKS:
    setattr(RecordingCallback, _name, _recording(_name, "Callback.", RecordingCallback))


# --- an in-memory logger ----------------------------------------------------------------------------


class MemoryLogger(Logger):
    """Records what the Trainer sends: ``metrics`` as ``(step, dict)``, ``hparams``, ``finalized`` statuses."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.hparams: list[dict[str, Any]] = []
        self.finalized: list[str] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hparams.append(dict(params))

    def finalize(self, status: str) -> None:
        self.finalized.append(status)

    def steps_with(self, key: str) -> list[int | None]:
        """The steps at which ``key`` was logged."""
        return [step for step, metrics in self.metrics if key in metrics]

    def values_of(self, key: str) -> list[float]:
        """The values logged for ``key``, in order."""
        return [metrics[key] for _, metrics in self.metrics if key in metrics]


def batches(length: int, batch_size: int) -> int:
    """Number of batches of a ``length``-sample dataset."""
    return math.ceil(length / batch_size)
