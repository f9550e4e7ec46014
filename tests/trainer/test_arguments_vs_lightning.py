"""barebones, enable_autolog_hparams, detect_anomaly and sync_batchnorm: the same program under Lightning and stepstone.

(overfit_batches and reload_dataloaders_every_n_epochs: tests/trainer/test_fit_data.py; profiler:
tests/profilers; use_distributed_sampler and sync_batchnorm under 2-process DDP: tests/strategies.)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import stepstone as L
from both_frameworks import FRAMEWORKS, framework, quiet
from stepstone.errors import MisconfigurationException


def _model_class(name: str) -> type:
    pl, _ = framework(name)

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self, lr: float = 0.1, nan_at: int = -1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 1)
            self.norm = torch.nn.BatchNorm1d(2)
            self.anomaly: list[bool] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.anomaly.append(torch.is_anomaly_enabled())
            out = self.layer(batch[0]).sum()
            self.log("loss", out)
            if batch_idx == self.hparams.nan_at:
                out = out * torch.sqrt(torch.tensor(-1.0, requires_grad=True))  # NaN backward
            return out

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val", self.layer(batch[0]).sum())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Model


def _loader() -> DataLoader[Any]:
    return DataLoader(
        TensorDataset(torch.randn(8, 2, generator=torch.Generator().manual_seed(0))), batch_size=2
    )


def _recording_logger(name: str) -> Any:
    loggers = importlib.import_module(
        "lightning.pytorch.loggers" if name == "lightning" else "stepstone.loggers"
    )

    class Recording(loggers.Logger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, Any]] = []

        @property
        def name(self) -> str:
            return "rec"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            self.calls.append(("log_hyperparams", dict(params)))

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            self.calls.append(("log_metrics", sorted(metrics)))

        def log_graph(self, model: Any, input_array: Any = None) -> None:
            self.calls.append(("log_graph", None))

    return Recording()


def _fit(name: str, root: Path, **kwargs: Any) -> tuple[Any, Any]:
    pl, _ = framework(name)
    options = {"default_root_dir": root, "max_epochs": 1, "enable_progress_bar": False, **kwargs}
    trainer = pl.Trainer(**options)
    model = _model_class(name)()
    with quiet():
        trainer.fit(model, _loader(), _loader())
    return trainer, model


def test_barebones_switches_off_what_lightning_switches_off(tmp_path: Path) -> None:
    seen = {}
    for name in FRAMEWORKS:
        trainer, _ = _fit(name, tmp_path / name, barebones=True)
        seen[name] = {
            "callbacks": [type(cb).__name__ for cb in trainer.callbacks],
            "loggers": trainer.loggers,
            "sanity": trainer.num_sanity_val_steps,
            "log_every_n_steps": trainer.log_every_n_steps,
            "logged": sorted(trainer.callback_metrics),  # self.log is a no-op
            "files": sorted(p.name for p in (tmp_path / name).rglob("*")),
            "steps": trainer.global_step,
            "barebones": trainer.barebones,
        }
    assert seen["stepstone"] == seen["lightning"]
    assert seen["stepstone"]["files"] == [] and seen["stepstone"]["logged"] == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"enable_checkpointing": True},
        {"logger": True},
        {"enable_progress_bar": True},
        {"log_every_n_steps": 10},
        {"enable_model_summary": True},
        {"num_sanity_val_steps": 2},
        {"fast_dev_run": True},
        {"detect_anomaly": True},
        {"profiler": "simple"},
    ],
)
def test_barebones_with_a_feature_it_switches_off_is_an_error_as_in_lightning(kwargs: dict[str, Any]) -> None:
    ((key, value),) = kwargs.items()
    with pytest.raises(ValueError, match="barebones"):
        framework("lightning")[0].Trainer(barebones=True, **kwargs)
    with pytest.raises(
        MisconfigurationException, match=rf"barebones=True, {key}={value!r}\) is invalid.*Remove"
    ):
        L.Trainer(barebones=True, **kwargs)


def test_barebones_accepts_features_explicitly_off_as_lightning() -> None:
    off = {"enable_checkpointing": False, "logger": False, "log_every_n_steps": 0, "num_sanity_val_steps": 0}
    for name in FRAMEWORKS:
        framework(name)[0].Trainer(barebones=True, **off)


@pytest.mark.parametrize("autolog", [True, False])
def test_enable_autolog_hparams_decides_whether_loggers_get_the_hparams_as_lightning(
    tmp_path: Path, autolog: bool
) -> None:
    calls = {}
    for name in FRAMEWORKS:
        logger = _recording_logger(name)
        _fit(name, tmp_path / name, logger=logger, enable_autolog_hparams=autolog, log_every_n_steps=1)
        calls[name] = [call for call in logger.calls if call[0] != "log_metrics"]
    assert calls["stepstone"] == calls["lightning"]
    assert bool(calls["stepstone"]) is autolog


@pytest.mark.parametrize("detect", [True, False])
def test_detect_anomaly_runs_training_under_anomaly_detection_as_lightning(
    tmp_path: Path, detect: bool
) -> None:
    for name in FRAMEWORKS:
        _, model = _fit(
            name, tmp_path / name, detect_anomaly=detect, logger=False, enable_checkpointing=False
        )
        assert model.anomaly == [detect] * 4, name
        assert not torch.is_anomaly_enabled()  # switched back after fit


def test_detect_anomaly_names_the_operation_that_produced_nan_as_lightning(tmp_path: Path) -> None:
    for name in FRAMEWORKS:
        pl, _ = framework(name)
        trainer = pl.Trainer(
            default_root_dir=tmp_path / name, max_epochs=1, detect_anomaly=True, logger=False,
            enable_checkpointing=False, enable_progress_bar=False,
        )  # fmt: skip
        with quiet(), pytest.raises(RuntimeError, match=r"Function .*Backward0. returned nan values"):
            trainer.fit(_model_class(name)(nan_at=1), _loader())


def test_sync_batchnorm_without_ddp_keeps_batchnorm_as_lightning(tmp_path: Path) -> None:
    for name in FRAMEWORKS:
        _, model = _fit(name, tmp_path / name, sync_batchnorm=True, logger=False, enable_checkpointing=False)
        assert type(model.norm) is torch.nn.BatchNorm1d, name


def test_sync_batchnorm_under_ddp_converts_and_on_cpu_names_the_fix(tmp_path: Path) -> None:
    # One-process DDP on CPU. Lightning converts BatchNorm to SyncBatchNorm and then fails inside torch's DDP
    # wrapper ("SyncBatchNorm layers only work with GPU modules", a ValueError; its in-process DDP leaves a thread
    # behind, so it is not run here): stepstone converts (configure_optimizers sees it) and raises a
    # ValueError naming the argument and the fix at the same point.
    model = _model_class("stepstone")()
    seen: list[str] = []
    original = model.configure_optimizers
    model.configure_optimizers = lambda: (seen.append(type(model.norm).__name__), original())[1]
    trainer = L.Trainer(
        strategy="ddp", accelerator="cpu", devices=1, sync_batchnorm=True, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with (
        quiet(),
        pytest.raises(ValueError, match=r"sync_batchnorm=True\) needs CUDA.*Pass sync_batchnorm=False"),
    ):
        trainer.fit(model, _loader())
    assert seen == ["SyncBatchNorm"]
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"barebones": 1}, r"Trainer\(barebones=1\) is invalid; pass True or False"),
        ({"detect_anomaly": "yes"}, r"Trainer\(detect_anomaly='yes'\) is invalid; pass True or False"),
        ({"sync_batchnorm": None}, r"Trainer\(sync_batchnorm=None\) is invalid; pass True or False"),
        (
            {"enable_autolog_hparams": 0},
            r"Trainer\(enable_autolog_hparams=0\) is invalid; pass True or False",
        ),
    ],
)
def test_invalid_switches_name_the_argument_the_value_and_the_fix(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        L.Trainer(**kwargs)
