"""TQDMProgressBar driven through its hooks by a stand-in trainer, with the output stream captured."""

from __future__ import annotations

import io
import re
import sys
import threading
import types
from typing import Any

import pytest
import torch
from tqdm import TMonitor

from stepstone.callbacks.progress_bar import ProgressBar, TQDMProgressBar
from stepstone.errors import MisconfigurationException


def _trainer(**overrides: Any) -> Any:
    attributes: dict[str, Any] = {
        "is_global_zero": True,
        "current_epoch": 0,
        "global_step": 0,
        "max_epochs": 2,
        "num_training_batches": 3,
        "num_val_batches": [2],
        "num_sanity_val_batches": [1],
        "num_test_batches": [2],
        "num_predict_batches": [2],
        "progress_bar_metrics": {},
        "sanity_checking": False,
        "loggers": [],
        "logger": None,
    }
    attributes.update(overrides)
    return types.SimpleNamespace(**attributes)


def _eval_bar(bar: TQDMProgressBar) -> Any:
    """The running validation/test/predict bar (read through a call so that mypy does not narrow it)."""
    return bar._eval_bar


def _train_epoch(bar: TQDMProgressBar, trainer: Any, batches: int, losses: list[float] | None = None) -> None:
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    for batch_idx in range(batches):
        if losses is not None:
            trainer.progress_bar_metrics = {"loss": losses[batch_idx]}
        bar.on_train_batch_end(trainer, None, None, None, batch_idx)  # type: ignore[arg-type]
    bar.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]


def _validate(bar: TQDMProgressBar, trainer: Any, batches_per_loader: list[int]) -> None:
    bar.on_validation_start(trainer, None)  # type: ignore[arg-type]
    for dataloader_idx, batches in enumerate(batches_per_loader):
        for batch_idx in range(batches):
            bar.on_validation_batch_start(trainer, None, None, batch_idx, dataloader_idx)  # type: ignore[arg-type]
            bar.on_validation_batch_end(trainer, None, None, None, batch_idx, dataloader_idx)  # type: ignore[arg-type]
    bar.on_validation_end(trainer, None)  # type: ignore[arg-type]


def test_training_bar_shows_epoch_counter_metrics_and_v_num() -> None:
    stream = io.StringIO()
    bar = TQDMProgressBar(file=stream)
    trainer = _trainer(loggers=[types.SimpleNamespace(version=7)])
    _train_epoch(bar, trainer, 3, losses=[0.123456, 2.0, 1e-05])
    bar.on_train_end(trainer, None)  # type: ignore[arg-type]
    text = stream.getvalue()
    assert "Epoch 0" in text
    assert "1/3" in text and "3/3" in text
    assert "v_num=7, loss=0.123" in text
    assert "loss=2.000" in text
    assert "loss=1e-5" in text
    assert bar.train_progress_bar is None


def test_nothing_is_printed_off_global_rank_zero() -> None:
    stream = io.StringIO()
    bar = TQDMProgressBar(file=stream)
    trainer = _trainer(is_global_zero=False, sanity_checking=True)
    bar.on_sanity_check_start(trainer, None)  # type: ignore[arg-type]
    _validate(bar, trainer, [1])
    bar.on_sanity_check_end(trainer, None)  # type: ignore[arg-type]
    trainer.sanity_checking = False
    _train_epoch(bar, trainer, 3, losses=[1.0, 1.0, 1.0])
    bar.on_test_start(trainer, None)  # type: ignore[arg-type]
    bar.on_test_batch_end(trainer, None, None, None, 0)  # type: ignore[arg-type]
    bar.on_test_end(trainer, None)  # type: ignore[arg-type]
    bar.on_train_end(trainer, None)  # type: ignore[arg-type]
    assert stream.getvalue() == ""


def test_setup_disables_the_bar_off_global_rank_zero() -> None:
    bar = TQDMProgressBar()
    bar.setup(_trainer(is_global_zero=False), None, "fit")  # type: ignore[arg-type]
    assert bar.is_disabled
    bar.enable()
    assert bar.is_enabled


def test_writes_to_sys_stderr_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = TQDMProgressBar()
    trainer = _trainer()
    _train_epoch(bar, trainer, 3)
    bar.on_train_end(trainer, None)  # type: ignore[arg-type]
    assert "Epoch 0" in stream.getvalue()


def test_unknown_number_of_batches_shows_a_plain_counter() -> None:
    stream = io.StringIO()
    bar = TQDMProgressBar(file=stream)
    trainer = _trainer(num_training_batches=float("inf"))
    _train_epoch(bar, trainer, 4)
    bar.on_train_end(trainer, None)  # type: ignore[arg-type]
    text = stream.getvalue()
    assert "Epoch 0: 4it" in text
    assert "/inf" not in text and "4/" not in text


def test_refresh_rate_skips_batches_but_always_draws_the_last() -> None:
    stream = io.StringIO()
    bar = TQDMProgressBar(refresh_rate=2, file=stream)
    trainer = _trainer(num_training_batches=5)
    _train_epoch(bar, trainer, 5)
    bar.on_train_end(trainer, None)  # type: ignore[arg-type]
    counters = set(re.findall(r"(\d)/5", stream.getvalue()))
    assert counters == {"0", "2", "4", "5"}


def test_refresh_rate_zero_and_disable_hide_the_bar() -> None:
    for bar in (TQDMProgressBar(refresh_rate=0, file=io.StringIO()), TQDMProgressBar(file=io.StringIO())):
        if bar.refresh_rate:
            bar.disable()
        trainer = _trainer()
        _train_epoch(bar, trainer, 3)
        bar.on_train_end(trainer, None)  # type: ignore[arg-type]
        assert bar._file is not None and bar._file.getvalue() == ""  # type: ignore[attr-defined]


def test_epochs_reuse_one_line_unless_leave() -> None:
    for leave, finished_lines in ((False, 1), (True, 2)):
        stream = io.StringIO()
        bar = TQDMProgressBar(leave=leave, file=stream)
        trainer = _trainer()
        for epoch in range(2):
            trainer.current_epoch = epoch
            _train_epoch(bar, trainer, 3)
        bar.on_train_end(trainer, None)  # type: ignore[arg-type]
        text = stream.getvalue()
        assert "Epoch 0" in text and "Epoch 1" in text
        assert text.count("\n") == finished_lines, (leave, text)


def test_sanity_check_and_validation_bars_and_val_metrics_on_the_training_bar() -> None:
    stream = io.StringIO()
    bar = TQDMProgressBar(file=stream)
    trainer = _trainer(sanity_checking=True, num_sanity_val_batches=[2], num_val_batches=[3])
    bar.on_sanity_check_start(trainer, None)  # type: ignore[arg-type]
    _validate(bar, trainer, [2])
    bar.on_sanity_check_end(trainer, None)  # type: ignore[arg-type]
    assert _eval_bar(bar) is None
    assert "\n" not in stream.getvalue()  # the sanity-check bar is erased, not left on screen
    trainer.sanity_checking = False
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    trainer.progress_bar_metrics = {"val_acc": 0.875}
    bar.on_validation_start(trainer, None)  # type: ignore[arg-type]
    assert _eval_bar(bar) is not None and _eval_bar(bar).leave is False  # transient under the training bar
    _validate(bar, trainer, [3])
    text = stream.getvalue()
    assert "Sanity Checking: 100%" in text and "2/2" in text
    assert "Validation: 100%" in text and "3/3" in text
    assert "val_acc=0.875" in text.rsplit("Epoch 0", 1)[1]
    bar.on_train_end(trainer, None)  # type: ignore[arg-type]


def test_several_validation_dataloaders_are_named_and_sized() -> None:
    stream = io.StringIO()
    bar = TQDMProgressBar(file=stream)
    trainer = _trainer(num_val_batches=[2, 4])
    _validate(bar, trainer, [2, 4])
    text = stream.getvalue()
    assert "Validation DataLoader 0" in text and "2/2" in text
    assert "Validation DataLoader 1" in text and "4/4" in text


@pytest.mark.parametrize(
    ("start", "batch_end", "end", "label", "counts"),
    [
        ("on_test_start", "on_test_batch_end", "on_test_end", "Testing", "num_test_batches"),
        ("on_predict_start", "on_predict_batch_end", "on_predict_end", "Predicting", "num_predict_batches"),
    ],
)
def test_test_and_predict_bars(start: str, batch_end: str, end: str, label: str, counts: str) -> None:
    stream = io.StringIO()
    bar = TQDMProgressBar(file=stream)
    trainer = _trainer(**{counts: [3]})
    getattr(bar, start)(trainer, None)
    assert _eval_bar(bar) is not None and _eval_bar(bar).leave is True  # a stand-alone bar stays on screen
    for batch_idx in range(3):
        getattr(bar, batch_end)(trainer, None, None, None, batch_idx, 0)
    getattr(bar, end)(trainer, None)
    text = stream.getvalue()
    assert f"{label}: 100%" in text and "3/3" in text
    assert _eval_bar(bar) is None


def test_exception_closes_every_bar_and_no_monitor_thread_is_started() -> None:
    bar = TQDMProgressBar(file=io.StringIO())
    trainer = _trainer()
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    bar.on_validation_start(trainer, None)  # type: ignore[arg-type]
    assert bar.train_progress_bar is not None and _eval_bar(bar) is not None
    assert not [t for t in threading.enumerate() if isinstance(t, TMonitor)]
    bar.on_exception(trainer, None, RuntimeError("boom"))  # type: ignore[arg-type]
    assert bar.train_progress_bar is None and _eval_bar(bar) is None


def test_get_metrics_adds_v_num_from_the_loggers() -> None:
    base = ProgressBar()
    metrics = {"loss": torch.tensor(0.5).item()}
    assert base.get_metrics(_trainer(progress_bar_metrics=metrics), None) == {"loss": 0.5}
    one = _trainer(loggers=[types.SimpleNamespace(version="abcdefgh")], progress_bar_metrics=metrics)
    assert base.get_metrics(one, None) == {"v_num": "efgh", "loss": 0.5}
    two = _trainer(loggers=[types.SimpleNamespace(version=1), types.SimpleNamespace(version=2)])
    assert base.get_metrics(two, None) == {"v_num": "1_2"}
    clash = _trainer(loggers=[types.SimpleNamespace(version=1)], progress_bar_metrics={"v_num": 9.0})
    with pytest.warns(UserWarning, match="v_num"):
        assert base.get_metrics(clash, None) == {"v_num": 9.0}


def test_totals_come_from_the_trainer() -> None:
    bar = TQDMProgressBar()
    with pytest.raises(RuntimeError, match="not attached"):
        _ = bar.total_train_batches
    bar.setup(_trainer(num_training_batches=10, num_val_batches=[2, 3]), None, "fit")  # type: ignore[arg-type]
    assert bar.total_train_batches == 10
    assert bar.total_val_batches == 5


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"refresh_rate": -1}, "refresh_rate=-1"),
        ({"refresh_rate": 1.5}, "refresh_rate=1.5"),
        ({"process_position": -2}, "process_position=-2"),
        ({"leave": "yes"}, "leave='yes'"),
    ],
)
def test_invalid_arguments_are_named_in_the_error(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(MisconfigurationException, match=re.escape(argument)):
        TQDMProgressBar(**kwargs)
