"""Trainer arguments: Lightning's defaults, and every invalid value rejected at construction with a clear error."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from stepstone.errors import MisconfigurationException
from stepstone.trainer import arguments


def _trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    base: dict[str, Any] = {"default_root_dir": tmp_path, "enable_checkpointing": False, "logger": False}
    base.update(kwargs)
    return L.Trainer(**base)


def test_defaults(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    assert trainer.max_epochs == 1000
    assert trainer.max_steps == -1
    assert trainer.min_epochs == 0
    assert trainer.min_steps == 0
    assert trainer.num_sanity_val_steps == 2
    assert trainer.log_every_n_steps == 50
    assert trainer.limit_train_batches == 1.0
    assert trainer.limit_val_batches == 1.0
    assert trainer.val_check_interval == 1.0
    assert trainer.check_val_every_n_epoch == 1
    assert trainer.accumulate_grad_batches == 1
    assert trainer.gradient_clip_val is None
    assert trainer.gradient_clip_algorithm is None
    assert trainer.fast_dev_run == 0
    assert trainer.precision == "32-true"
    assert trainer.device == torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert trainer.default_root_dir == str(tmp_path)
    assert trainer.global_step == 0
    assert trainer.current_epoch == 0
    assert not trainer.should_stop


def test_max_epochs_default_depends_on_max_steps_and_max_time(tmp_path: Path) -> None:
    assert _trainer(tmp_path, max_steps=10).max_epochs == -1
    assert _trainer(tmp_path, max_time=timedelta(minutes=1)).max_epochs == -1
    assert _trainer(tmp_path, max_steps=10, max_epochs=3).max_epochs == 3
    assert _trainer(tmp_path, max_epochs=-1).max_epochs == -1


def test_min_steps_implies_one_min_epoch(tmp_path: Path) -> None:
    # Lightning: min_steps without min_epochs sets min_epochs=1.
    assert _trainer(tmp_path, min_steps=3).min_epochs == 1
    assert _trainer(tmp_path, min_steps=3, min_epochs=0).min_epochs == 0
    assert _trainer(tmp_path, min_epochs=2).min_epochs == 2


def test_num_sanity_val_steps_minus_one_means_all(tmp_path: Path) -> None:
    assert _trainer(tmp_path, num_sanity_val_steps=-1).num_sanity_val_steps == math.inf
    assert _trainer(tmp_path, num_sanity_val_steps=0).num_sanity_val_steps == 0


def test_integral_float_limits_are_batch_counts(tmp_path: Path) -> None:
    # Lightning reads 3.0 as "3 batches" (an int), 0.5 as a fraction.
    trainer = _trainer(tmp_path, limit_train_batches=3.0, limit_val_batches=0.5, val_check_interval=2.0)
    assert trainer.limit_train_batches == 3 and isinstance(trainer.limit_train_batches, int)
    assert trainer.limit_val_batches == 0.5
    assert trainer.val_check_interval == 2 and isinstance(trainer.val_check_interval, int)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_epochs": -2}, "max_epochs=-2"),
        ({"max_epochs": 1.5}, "max_epochs=1.5"),
        ({"max_steps": -2}, "max_steps=-2"),
        ({"min_epochs": -1}, "min_epochs=-1"),
        ({"min_steps": -1}, "min_steps=-1"),
        ({"limit_train_batches": 1.5}, "limit_train_batches=1.5"),
        ({"limit_train_batches": -0.5}, "limit_train_batches=-0.5"),
        ({"limit_val_batches": -1}, "limit_val_batches=-1"),
        ({"limit_test_batches": "all"}, "limit_test_batches='all'"),
        ({"limit_predict_batches": True}, "limit_predict_batches=True"),
        ({"val_check_interval": 0}, "val_check_interval=0"),
        ({"val_check_interval": 0.0}, "val_check_interval=0.0"),
        ({"val_check_interval": 1.5}, "val_check_interval=1.5"),
        ({"val_check_interval": 0.5, "check_val_every_n_epoch": None}, "val_check_interval=0.5"),
        ({"check_val_every_n_epoch": 0}, "check_val_every_n_epoch=0"),
        ({"num_sanity_val_steps": -2}, "num_sanity_val_steps=-2"),
        ({"log_every_n_steps": -1}, "log_every_n_steps=-1"),
        ({"strategy": "magic"}, "strategy='magic'"),
        ({"strategy": "ddp_notebook"}, "strategy='ddp_notebook'"),
        ({"strategy": "deepspeed"}, "strategy='deepspeed'"),
        ({"devices": 0}, "devices=0"),
        ({"devices": "many"}, "devices='many'"),
        ({"accelerator": "tpu"}, "accelerator='tpu'"),
        ({"precision": "64"}, "precision='64'"),
        ({"precision": "16-true"}, "precision='16-true'"),
        ({"gradient_clip_algorithm": "foo"}, "gradient_clip_algorithm='foo'"),
        ({"gradient_clip_val": -1.0}, "gradient_clip_val=-1.0"),
        ({"gradient_clip_val": "1"}, "gradient_clip_val='1'"),
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches=0"),
        ({"fast_dev_run": -1}, "fast_dev_run=-1"),
        ({"fast_dev_run": 0.5}, "fast_dev_run=0.5"),
        ({"max_time": "1 hour"}, "max_time='1 hour'"),
        ({"deterministic": "sometimes"}, "deterministic='sometimes'"),
        ({"num_nodes": 2}, "num_nodes=2"),
        ({"plugins": ["amp"]}, "plugins=['amp']"),
    ],
)
def test_invalid_values_raise_naming_argument_and_value(
    tmp_path: Path, kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(MisconfigurationException) as info:
        _trainer(tmp_path, **kwargs)
    assert fragment in str(info.value)


def test_misconfiguration_is_a_value_error() -> None:
    assert issubclass(MisconfigurationException, ValueError)


def test_forking_strategies_are_refused_with_the_alternatives(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="use strategy='ddp_spawn' in notebooks"):
        _trainer(tmp_path, strategy="ddp_fork")


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_without_cuda_raises(tmp_path: Path, accelerator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on GPU machines
    with pytest.raises(MisconfigurationException, match=f"accelerator='{accelerator}'.*no CUDA GPU"):
        _trainer(tmp_path, accelerator=accelerator)


def test_invalid_logger_raises(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="logger="):
        _trainer(tmp_path, logger=object())
    with pytest.raises(MisconfigurationException, match="logger="):
        _trainer(tmp_path, logger=[object()])


def test_invalid_callbacks_raise(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="not stepstone Callback"):
        _trainer(tmp_path, callbacks=[object()])


def test_fast_dev_run_overrides_limits(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, fast_dev_run=3, num_sanity_val_steps=5, max_epochs=10)
    assert trainer.fast_dev_run == 3
    assert trainer.limit_train_batches == trainer.limit_val_batches == 3
    assert trainer.limit_test_batches == trainer.limit_predict_batches == 3
    assert trainer.max_steps == 3
    assert trainer.max_epochs == 1
    assert trainer.num_sanity_val_steps == 0
    assert trainer.loggers == []
    assert _trainer(tmp_path, fast_dev_run=True).fast_dev_run == 1


def test_max_time_forms(tmp_path: Path) -> None:
    assert _trainer(tmp_path, max_time="00:01:00:05")._max_time == timedelta(hours=1, seconds=5)
    assert _trainer(tmp_path, max_time={"minutes": 2})._max_time == timedelta(minutes=2)
    assert _trainer(tmp_path, max_time=timedelta(seconds=3))._max_time == timedelta(seconds=3)


class TestHelpers:
    def test_check_limit(self) -> None:
        assert arguments.check_limit("limit_val_batches", None) == 1.0
        assert arguments.check_limit("limit_val_batches", 0) == 0
        assert arguments.check_limit("limit_val_batches", 0.25) == 0.25
        with pytest.raises(MisconfigurationException, match=r"limit_val_batches=nan"):
            arguments.check_limit("limit_val_batches", float("nan"))

    def test_check_int(self) -> None:
        assert arguments.check_int("x", 3, 1) == 3
        assert arguments.check_int("x", None, 1, allow_none=True) is None
        with pytest.raises(MisconfigurationException, match=r"x=True"):
            arguments.check_int("x", True, 0)
        with pytest.raises(MisconfigurationException, match=r"x=None"):
            arguments.check_int("x", None, 0)
