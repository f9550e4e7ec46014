"""overfit_batches and reload_dataloaders_every_n_epochs: the same program under Lightning 2.6.6 and stepstone."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import stepstone as L
from both_frameworks import FRAMEWORKS, framework, quiet
from stepstone.errors import MisconfigurationException


def _dataset(n: int, offset: int = 0) -> TensorDataset:
    # Sample i holds the number offset + i, so a batch tells which samples it read.
    return TensorDataset(torch.arange(offset, offset + n, dtype=torch.float32).unsqueeze(1))


def _program(name: str, root: Path, trainer_kwargs: dict[str, Any], fits: int = 1) -> dict[str, Any]:
    """Fit a model that records what it reads (samples per batch, loader requests) and returns the record."""
    pl, _ = framework(name)
    seen: dict[str, Any] = {"train": [], "val": [], "requests": [], "samplers": []}

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen["train"].append((self.current_epoch, batch[0].flatten().tolist()))
            return self.layer(batch[0]).sum()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            seen["val"].append(
                (self.current_epoch, self.trainer.sanity_checking, batch[0].flatten().tolist())
            )

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self) -> DataLoader[Any]:
            seen["requests"].append(("train", self.current_epoch))
            return DataLoader(_dataset(8), batch_size=2, shuffle=True)

        def val_dataloader(self) -> DataLoader[Any]:
            seen["requests"].append(("val", self.current_epoch))
            return DataLoader(_dataset(6, offset=100), batch_size=2, shuffle=True)

        def on_train_epoch_start(self) -> None:
            seen["samplers"].append(type(self.trainer.train_dataloader.sampler).__name__)

    options = {
        "default_root_dir": root,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **trainer_kwargs,
    }
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = pl.Trainer(**options)
        model = Model()
        for _ in range(fits):
            trainer.fit(model)
    seen["warnings"] = sorted({str(w.message) for w in caught if "overfit" in str(w.message)})
    # Which loaders were requested at which epoch (stepstone sets up training data before the sanity check).
    seen["requests"] = sorted(seen["requests"])
    seen["limits"] = (trainer.limit_train_batches, trainer.limit_val_batches, trainer.overfit_batches)
    seen["num_batches"] = (trainer.num_training_batches, trainer.num_val_batches)
    return seen


@pytest.mark.parametrize("overfit", [2, 0.5])
def test_overfit_batches_reads_the_same_batches_in_order_as_lightning(
    tmp_path: Path, overfit: int | float
) -> None:
    kwargs = {"overfit_batches": overfit, "max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 1}
    runs = {name: _program(name, tmp_path / name, kwargs) for name in FRAMEWORKS}
    assert runs["stepstone"] == runs["lightning"]
    seen = runs["stepstone"]
    # Shuffling is turned off (with the warning) and the limits are overfit_batches for training and validation.
    assert seen["samplers"] == ["SequentialSampler"] * 2
    assert len(seen["warnings"]) == 2
    assert seen["train"][:2] == [(0, [0.0, 1.0]), (0, [2.0, 3.0])]
    assert [batch for _, batch in seen["train"][:2]] == [batch for _, batch in seen["train"][-2:]]


def test_overfit_batches_leaves_test_data_and_in_order_loaders_alone(tmp_path: Path) -> None:
    for name in FRAMEWORKS:
        pl, _ = framework(name)
        trainer = pl.Trainer(overfit_batches=1, logger=False, enable_progress_bar=False, limit_test_batches=3)
        assert (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches) == (
            1,
            1,
            3,
        )


@pytest.mark.parametrize("every", [1, 2])
def test_reload_dataloaders_every_n_epochs_requests_loaders_as_lightning(tmp_path: Path, every: int) -> None:
    kwargs = {"reload_dataloaders_every_n_epochs": every, "max_epochs": 4, "limit_train_batches": 2}
    runs = {name: _program(name, tmp_path / name, kwargs) for name in FRAMEWORKS}
    assert runs["stepstone"]["requests"] == runs["lightning"]["requests"]
    assert runs["stepstone"]["num_batches"] == runs["lightning"]["num_batches"]
    trains = [epoch for kind, epoch in runs["stepstone"]["requests"] if kind == "train"]
    assert trains == list(range(0, 4, every))


def test_without_reload_the_loaders_are_requested_once(tmp_path: Path) -> None:
    runs = {name: _program(name, tmp_path / name, {"max_epochs": 3}) for name in FRAMEWORKS}
    assert runs["stepstone"]["requests"] == runs["lightning"]["requests"] == [("train", 0), ("val", 0)]


class _Reloading(L.LightningModule):
    """A new shuffled loader per request; the weights record every batch read."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.requests: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.layer(batch[0]) ** 2).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader[Any]:
        self.requests.append(self.current_epoch)
        return DataLoader(_dataset(12), batch_size=2, shuffle=True)


@pytest.mark.parametrize(
    ("kwargs", "requests"),
    [
        # Requested when fit sets up (before the restore), then again for the restored epoch 2 (Lightning requests
        # it once, after restoring); the next reload would come 2 epochs after the restored one (Lightning's count).
        ({"reload_dataloaders_every_n_epochs": 2}, [0, 2]),
        ({"reload_dataloaders_every_n_epochs": 1}, [0, 2, 3]),
        ({"overfit_batches": 4}, [0]),
        ({"profiler": "simple", "detect_anomaly": True}, [0]),
        ({"sync_batchnorm": True, "use_distributed_sampler": False, "enable_autolog_hparams": False}, [0]),
    ],
)
def test_a_mid_epoch_resume_with_the_argument_trains_exactly_as_the_uninterrupted_run(
    tmp_path: Path, kwargs: dict[str, Any], requests: list[int]
) -> None:
    def trainer(**more: Any) -> L.Trainer:
        return L.Trainer(
            max_epochs=4,
            default_root_dir=tmp_path,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            **kwargs,
            **more,
        )

    class SaveMidEpoch(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
            if trainer.current_epoch == 2 and trainer.fit_loop.batch_idx == 2:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    with quiet():
        torch.manual_seed(0)
        straight = _Reloading()
        trainer(callbacks=[SaveMidEpoch()]).fit(straight)
        torch.manual_seed(123)  # a different generator state: the checkpoint must restore it
        resumed = _Reloading()
        trainer().fit(resumed, ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.requests == requests
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overfit_batches": -1}, r"overfit_batches=-1\) is invalid"),
        ({"overfit_batches": 1.5}, r"overfit_batches=1.5\) is invalid.*pass an int"),
        ({"overfit_batches": "all"}, r"overfit_batches='all'\) is invalid"),
        (
            {"reload_dataloaders_every_n_epochs": -1},
            r"reload_dataloaders_every_n_epochs=-1\) is invalid.*>= 0",
        ),
        ({"reload_dataloaders_every_n_epochs": 1.0}, r"reload_dataloaders_every_n_epochs=1.0\) is invalid"),
        (
            {"use_distributed_sampler": "yes"},
            r"use_distributed_sampler='yes'\) is invalid; pass True or False",
        ),
    ],
)
def test_invalid_data_arguments_name_the_argument_the_value_and_the_fix(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        L.Trainer(**kwargs)
