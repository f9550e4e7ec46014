"""EarlyStopping against Lightning 2.6.6: the same program under both, same stop, state, files and resume."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as PL
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as PLEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint as PLModelCheckpoint

import stepstone as L
from both_frameworks import quiet
from callbacks.ddp_runs import ddp_results
from scripted import loader
from stepstone.callbacks import EarlyStopping, ModelCheckpoint
from stepstone.callbacks.early_stopping import EarlyStoppingReason
from stepstone.errors import MisconfigurationException

FRAMEWORKS = {
    "lightning": (PL, PLEarlyStopping, PLModelCheckpoint),
    "stepstone": (L, EarlyStopping, ModelCheckpoint),
}
ES_LOGGER = "stepstone.callbacks.early_stopping"
KEY = "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"


def _module(fw: ModuleType, values: list[float], per_check: int) -> Any:
    """``val_loss`` is ``values[k]`` at the k-th validation (counted from global_step, so resumes keep it)."""

    class Scripted(fw.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            k = max(self.trainer.global_step // per_check - 1, 0)
            self.log("val_loss", torch.tensor(values[min(k, len(values) - 1)]))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Scripted()


def fit(
    name: str,
    root: Path,
    values: list[float],
    es: dict[str, Any],
    *,
    per_check: int = 4,
    checkpoint: dict[str, Any] | None = None,
    ckpt_path: str | None = None,
    restored: dict[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Fit under ``name`` with ``EarlyStopping(**es)``; returns what a user observes."""
    fw, es_class, ckpt_class = FRAMEWORKS[name]
    stopper = es_class(**es)
    callbacks = [stopper]
    if checkpoint is not None:
        callbacks.append(ckpt_class(dirpath=root / "ckpts", **checkpoint))
    trainer_kwargs.setdefault("max_epochs", 10)
    trainer = fw.Trainer(
        default_root_dir=root,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    with contextlib.nullcontext() if es.get("verbose") else quiet():
        trainer.fit(_module(fw, values, per_check), loader(), loader(), ckpt_path=ckpt_path)
    files = {}
    for path in sorted((root / "ckpts").glob("*.ckpt")) if checkpoint is not None else []:
        saved = torch.load(path, weights_only=False)
        files[path.name] = (saved["global_step"], _plain(saved["callbacks"][KEY]))
    return {
        "current_epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "should_stop": trainer.should_stop,
        "stopped_epoch": stopper.stopped_epoch,
        "wait_count": stopper.wait_count,
        "best_score": float(stopper.best_score),
        "reason": stopper.stopping_reason.value,
        "reason_message": stopper.stopping_reason_message,
        "state": _plain(stopper.state_dict()),
        "files": files,
    }


def _plain(state: dict[str, Any]) -> dict[str, Any]:
    return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def both(tmp_path: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run under both frameworks, assert they agree, return stepstone's observations."""
    seen = {name: fit(name, tmp_path / name, *args, **kwargs) for name in FRAMEWORKS}
    assert seen["stepstone"] == seen["lightning"]
    return seen["stepstone"]


def test_patience_stops_at_lightning_epoch_and_checkpoints_match(tmp_path: Path) -> None:
    values = [1.0, 0.8, 0.9, 0.85, 0.95, 0.7]
    got = both(
        tmp_path,
        values,
        {"monitor": "val_loss", "patience": 2},
        checkpoint={"monitor": "val_loss", "save_top_k": 2, "save_last": True},
    )
    assert got["stopped_epoch"] == 3 and got["wait_count"] == 2 and got["reason"] == 3
    # The epoch that stopped training still wrote its checkpoint (last.ckpt holds the final step).
    assert got["files"]["last.ckpt"][0] == got["global_step"]


@pytest.mark.parametrize(
    ("es", "values"),
    [
        ({"monitor": "val_loss", "mode": "max", "patience": 1}, [0.1, 0.3, 0.2, 0.1]),
        ({"monitor": "val_loss", "min_delta": 0.15, "patience": 2}, [1.0, 0.9, 0.5, 0.45, 0.4, 0.3]),
        ({"monitor": "val_loss", "stopping_threshold": 0.5, "patience": 9}, [1.0, 0.7, 0.4, 0.3]),
        ({"monitor": "val_loss", "divergence_threshold": 2.0, "patience": 9}, [1.0, 1.5, 2.5, 0.3]),
        ({"monitor": "val_loss", "patience": 9}, [1.0, 0.5, math.nan, 0.3]),
        ({"monitor": "val_loss", "patience": 9, "check_finite": False}, [1.0, 0.5, math.inf, 0.3, 0.4]),
    ],
    ids=["max", "min_delta", "stopping_threshold", "divergence", "nan", "not_check_finite"],
)
def test_criteria_match_lightning(tmp_path: Path, es: dict[str, Any], values: list[float]) -> None:
    got = both(tmp_path, values, es, max_epochs=6)
    assert got["current_epoch"] <= 6


def test_checks_after_each_validation_when_it_runs_twice_per_epoch(tmp_path: Path) -> None:
    # val_check_interval=0.5: the check runs in on_validation_end, so patience counts validations.
    got = both(
        tmp_path,
        [1.0, 0.9, 0.95, 0.97, 0.99, 0.5],
        {"monitor": "val_loss", "patience": 3},
        per_check=2,
        val_check_interval=0.5,
        checkpoint={"monitor": "val_loss", "save_top_k": 2},
    )
    assert got["stopped_epoch"] == 2 and got["wait_count"] == 3


def test_check_on_train_epoch_end_given(tmp_path: Path) -> None:
    both(
        tmp_path,
        [1.0, 0.9, 0.95, 0.97, 0.99, 0.5],
        {"monitor": "val_loss", "patience": 2, "check_on_train_epoch_end": True},
        per_check=2,
        val_check_interval=0.5,
    )


def test_min_epochs_holds_training_after_the_stop(tmp_path: Path) -> None:
    got = both(tmp_path, [1.0, 2.0], {"monitor": "val_loss", "patience": 1}, min_epochs=4)
    assert got["current_epoch"] == 4


def test_resume_continues_the_patience_count(tmp_path: Path) -> None:
    values = [1.0, 0.8, 0.9, 0.95, 0.97, 0.99]
    for name in FRAMEWORKS:
        root = tmp_path / name
        es = {"monitor": "val_loss", "patience": 3}
        fit(name, root, values, es, max_epochs=3, checkpoint={"save_last": True})
        assert (root / "ckpts" / "last.ckpt").exists()
    first = {
        n: fit(
            n, tmp_path / n, values, es, max_epochs=10, ckpt_path=str(tmp_path / n / "ckpts" / "last.ckpt")
        )
        for n in FRAMEWORKS
    }
    assert first["stepstone"] == first["lightning"]
    # Two checks without improvement before the checkpoint, one after: stopped at epoch 4 (not 5).
    assert first["stepstone"]["stopped_epoch"] == 4 and first["stepstone"]["wait_count"] == 3


def test_state_dict_round_trip() -> None:
    es = EarlyStopping("val_loss", patience=5)
    es.wait_count, es.stopped_epoch, es.best_score = 2, 7, torch.tensor(0.25)
    es.stopping_reason, es.stopping_reason_message = EarlyStoppingReason.PATIENCE_EXHAUSTED, "done"
    other = EarlyStopping("val_loss", patience=1)
    other.load_state_dict(es.state_dict())
    assert _plain(other.state_dict()) == _plain(es.state_dict())
    assert other.patience == 5 and other.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    pl = PLEarlyStopping("val_loss", patience=5)
    assert set(pl.state_dict()) == set(es.state_dict()) and pl.state_key == es.state_key == KEY


def test_missing_metric_strict_raises_like_lightning(tmp_path: Path) -> None:
    messages = []
    for name in FRAMEWORKS:
        with pytest.raises(RuntimeError, match="Early stopping conditioned on metric `nope`") as info:
            fit(name, tmp_path / name, [1.0], {"monitor": "nope"})
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_missing_metric_not_strict_trains_on(tmp_path: Path) -> None:
    got = both(tmp_path, [1.0], {"monitor": "nope", "strict": False}, max_epochs=3)
    assert got["current_epoch"] == 3 and got["wait_count"] == 0


def test_invalid_mode_names_argument_and_fix() -> None:
    with pytest.raises(MisconfigurationException, match=r"mode='avg'.*mode='min'"):
        EarlyStopping("val_loss", mode="avg")
    with pytest.raises(Exception, match="`mode` can be min, max") as info:
        PLEarlyStopping("val_loss", mode="avg")
    assert isinstance(info.value, PL.pytorch.utilities.exceptions.MisconfigurationException)


def test_verbose_logs_lightning_messages(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen = {}
    for name, logger in (
        ("lightning", "lightning.pytorch.callbacks.early_stopping"),
        ("stepstone", ES_LOGGER),
    ):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=logger):
            es = {"monitor": "val_loss", "patience": 1, "verbose": True}
            fit(name, tmp_path / name, [1.0, 0.5, 0.6], es)
        seen[name] = [r.getMessage() for r in caplog.records if r.name == logger]
    assert seen["stepstone"] == seen["lightning"]
    assert seen["stepstone"] == [
        "Metric val_loss improved. New best score: 1.000",
        "Metric val_loss improved by 0.500 >= min_delta = 0.0. New best score: 0.500",
        "Monitored metric val_loss did not improve in the last 1 records. Best score: 0.500. Signaling Trainer "
        "to stop.",
    ]


def test_fast_dev_run_never_stops_early(tmp_path: Path) -> None:
    got = fit(
        "stepstone", tmp_path, [1.0], {"monitor": "val_loss", "stopping_threshold": 5.0}, fast_dev_run=True
    )
    assert got["should_stop"] is False and got["reason"] == 0


@pytest.mark.timeout(90)
def test_under_ddp_one_rank_stopping_stops_every_rank() -> None:
    zero, one = ddp_results("early_stopping")
    # Rank 1's metric stops improving after epoch 0: patience 2 runs out at epoch 2, on both ranks.
    assert one["wait_count"] == 2 and zero["wait_count"] == 0
    assert zero["current_epoch"] == one["current_epoch"] == 3
    assert zero["stopped_epoch"] == one["stopped_epoch"] == 2
    assert zero["global_step"] == one["global_step"]


def test_lightning_import_paths() -> None:
    import stepstone.callbacks.early_stopping as module

    names = ("EarlyStopping", "Timer", "LambdaCallback", "OnExceptionCheckpoint", "Checkpoint")
    for name in names:
        assert getattr(L.callbacks, name).__name__ == getattr(PL.pytorch.callbacks, name).__name__ == name
    assert module.EarlyStoppingReason.PATIENCE_EXHAUSTED.value == 3


def test_trainer_properties_and_monitoring_order_as_in_lightning(tmp_path: Path) -> None:
    # The metric is logged in the module's on_train_epoch_end: EarlyStopping (a monitoring callback) runs after
    # that hook, so strict=True finds it.
    seen = {}
    for name, (fw, es_class, _) in FRAMEWORKS.items():

        class LogsAtEpochEnd(fw.LightningModule):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                super().__init__()
                self.layer = torch.nn.Linear(4, 1)

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

            def on_train_epoch_end(self) -> None:
                self.log("epoch_metric", float(self.current_epoch))

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=0.01)

        stopper = es_class("epoch_metric", patience=2)
        trainer = fw.Trainer(
            default_root_dir=tmp_path / name,
            callbacks=[stopper],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_epochs=10,
        )
        assert trainer.early_stopping_callback is stopper and trainer.early_stopping_callbacks == [stopper]
        with quiet():
            trainer.fit(LogsAtEpochEnd(), loader())
        seen[name] = (trainer.current_epoch, stopper.stopped_epoch, stopper.wait_count)
    assert seen["stepstone"] == seen["lightning"] == (3, 2, 2)
