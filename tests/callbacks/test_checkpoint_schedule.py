"""Lightning's rules for when ModelCheckpoint checks (the behaviour against Lightning itself is compared in
test_model_checkpoint_last_vs_lightning.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from stepstone.callbacks.checkpoint_schedule import (
    epoch_due,
    saves_on_train_epoch_end,
    validation_follows_epoch,
)


def _trainer(
    every: int | None = 1, interval: float = 1.0, val: bool = True, last: bool = True, epoch: int = 0
) -> Any:
    loop = SimpleNamespace(batch_progress=SimpleNamespace(is_last_batch=last), validation_enabled=val)
    return SimpleNamespace(
        check_val_every_n_epoch=every, val_check_interval=interval, current_epoch=epoch, fit_loop=loop
    )


def test_epoch_due_every_n_and_never_for_zero() -> None:
    assert [epoch_due(_trainer(epoch=e), 2) for e in range(4)] == [False, True, False, True]
    assert not epoch_due(_trainer(epoch=0), 0)


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        (_trainer(), True),
        (_trainer(every=2), False),
        (_trainer(interval=0.5), False),
        (_trainer(val=False), True),
    ],
)
def test_saves_on_train_epoch_end_follows_validation_unless_set(trainer: Any, expected: bool) -> None:
    assert saves_on_train_epoch_end(trainer, None) is expected
    assert saves_on_train_epoch_end(trainer, not expected) is (not expected)


def test_validation_follows_only_the_last_batch_of_a_validating_epoch() -> None:
    assert validation_follows_epoch(_trainer(interval=0.5), None)
    assert not validation_follows_epoch(_trainer(interval=0.5, last=False), None)
    assert not validation_follows_epoch(_trainer(), None)  # checks run at the training epoch end
    assert validation_follows_epoch(_trainer(every=None, interval=6), None)  # Lightning assumes it validates
    assert not validation_follows_epoch(_trainer(every=2, epoch=0), False)
    assert validation_follows_epoch(_trainer(every=2, epoch=1), False)
