"""When ModelCheckpoint checks: Lightning 2.6's rules for the epoch trigger and for waiting on validation.

Pure functions of the Trainer's settings and loop position; the callback decides what to save.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["epoch_due", "saves_on_train_epoch_end", "validation_follows_epoch"]


def epoch_due(trainer: Trainer, every_n_epochs: int) -> bool:
    """Whether the epoch ending now is one the epoch trigger (every ``every_n_epochs``, 0: never) saves.

    Args:
        trainer: the fitting Trainer.
        every_n_epochs: the callback's epoch interval.

    Returns:
        True at every ``every_n_epochs``-th epoch.
    """
    return every_n_epochs >= 1 and (trainer.current_epoch + 1) % every_n_epochs == 0


def saves_on_train_epoch_end(trainer: Trainer, flag: bool | None) -> bool:
    """Whether epoch-end checks run at the training epoch end (True) or after validation (False).

    Args:
        trainer: the fitting Trainer.
        flag: the callback's ``save_on_train_epoch_end`` (None: decide from the Trainer).

    Returns:
        ``flag`` if set; else True only when validation is off, or runs once at every epoch end.
    """
    if flag is not None:
        return flag
    if trainer.check_val_every_n_epoch != 1:
        return False
    if not trainer.fit_loop.validation_enabled:
        return True
    return trainer.val_check_interval == 1.0


def validation_follows_epoch(trainer: Trainer, flag: bool | None) -> bool:
    """Lightning's rule for a step trigger's metric being stale: this is the epoch's last batch, checks run
    after validation, and this epoch validates (always so with ``check_val_every_n_epoch=None``).

    Args:
        trainer: the fitting Trainer, at a training batch end.
        flag: the callback's ``save_on_train_epoch_end``.

    Returns:
        Whether the save should wait for validation.
    """
    if saves_on_train_epoch_end(trainer, flag) or not trainer.fit_loop.batch_progress.is_last_batch:
        return False
    every = trainer.check_val_every_n_epoch
    return trainer.fit_loop.validation_enabled and (every is None or (trainer.current_epoch + 1) % every == 0)
