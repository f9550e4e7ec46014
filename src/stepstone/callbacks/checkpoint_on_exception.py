"""Checkpoints saved because an exception stopped the Trainer (``ModelCheckpoint(save_on_exception=True)``).

Lightning 2.6's rule: when fit/validate/test/predict raises (``KeyboardInterrupt`` included), the
ModelCheckpoint writes the current state under its ordinary file name (``{epoch}-{step}`` by default), refreshes
``last`` when ``save_last`` is set, and the error is re-raised by the Trainer. Nothing is written when this
callback already saved at this global step (so never before the first optimizer step), during the sanity
check, or with ``fast_dev_run``. The file joins no top-k ranking (nothing deletes it later) and
``fit(ckpt_path=...)`` continues from it.

stepstone commits the file like every checkpoint (whole or absent), marks it
``checkpoint["stepstone"]["saved_on_exception"]`` and never writes a step twice: a preemption has just
committed ``last-preempted.ckpt`` at this step (:func:`preemption_checkpoint`). A save that fails is reported
alongside the exception that stopped the run, never raised in its place (:func:`report_failed_save`).
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Any

from stepstone.errors import MisconfigurationException
from stepstone.strategies.collectives import barrier
from stepstone.trainer.signals import Preempted

if TYPE_CHECKING:
    from stepstone.callbacks.model_checkpoint import ModelCheckpoint
    from stepstone.trainer.trainer import Trainer

__all__ = ["check_argument", "preemption_checkpoint", "report_failed_save", "save_on_exception"]

#: The key of ``checkpoint["stepstone"]`` that marks an exception save.
MARK = "saved_on_exception"


def check_argument(value: object) -> bool:
    """Validate ``ModelCheckpoint(save_on_exception=...)``.

    Args:
        value: the argument.

    Returns:
        ``value``.

    Raises:
        MisconfigurationException: ``value`` is not a bool.
    """
    if not isinstance(value, bool):
        raise MisconfigurationException(
            f"ModelCheckpoint(save_on_exception={value!r}) is invalid; pass True (save a checkpoint when an "
            "exception stops the Trainer) or False."
        )
    return value


def preemption_checkpoint(exception: BaseException) -> str | None:
    """The checkpoint a preemption committed at the current step, when ``exception`` is that preemption's exit.

    Args:
        exception: what stopped the Trainer.

    Returns:
        The path of ``last-preempted.ckpt``, or None when no preemption save holds this step (then an
        exception save should be written).
    """
    if isinstance(exception, Preempted):
        return exception.path
    return None


def report_failed_save(exception: BaseException, message: str) -> None:
    """Tell a failed exception save as a warning and as a note on ``exception``, which stays the one raised.

    Args:
        exception: the error that stopped the run.
        message: what was not saved and why.
    """
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    getattr(exception, "add_note", lambda note: None)(message)  # Python >= 3.11


def _due(callback: ModelCheckpoint, trainer: Trainer) -> bool:
    # Lightning's conditions; and a folder to write into (an exception before setup has none).
    return (
        callback.save_on_exception
        and not trainer.fast_dev_run
        and not trainer.sanity_checking
        and callback._last_global_step_saved != trainer.global_step
        and callback.dirpath is not None
    )


def save_on_exception(callback: ModelCheckpoint, trainer: Trainer, exception: BaseException) -> None:
    """Save ``callback``'s exception checkpoint (and ``last``), unless not due; never raises a save failure.

    Under DDP every rank calls it (as every rank calls ``on_exception`` in Lightning) and rank 0 writes; when
    only some ranks failed, the save's collectives fail within the strategy's timeout and that is reported.

    Args:
        callback: the ModelCheckpoint with ``save_on_exception=True``.
        trainer: the Trainer that raised.
        exception: what it raised (re-raised by the Trainer afterwards).
    """
    if not _due(callback, trainer):
        return
    preempted = preemption_checkpoint(exception)
    if preempted is not None:
        if trainer.is_global_zero:
            print(
                f"ModelCheckpoint(save_on_exception=True): not saving; the preemption checkpoint {preempted} holds "
                "the same step.",
                file=sys.stderr,
            )
        return
    try:
        filepath = _save(callback, trainer, exception)
    except Exception as failure:
        report_failed_save(
            exception,
            f"ModelCheckpoint(save_on_exception=True) could not save a checkpoint at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}: {failure!r}",
        )
        return
    if trainer.is_global_zero:
        print(
            f"An {type(exception).__name__} was raised with message: {exception}, saved checkpoint to {filepath}",
            file=sys.stderr,
        )


def _save(callback: ModelCheckpoint, trainer: Trainer, exception: BaseException) -> str:
    # Background saves first: their bookkeeping (and ``last`` published on the writer thread) must not land
    # after this newer state. One that failed is told, and this newer state is still saved.
    try:
        trainer.checkpoint_port.complete()
    except Exception as failure:
        report_failed_save(exception, f"Also, an earlier background checkpoint save failed: {failure!r}")
    candidates = callback._monitor_candidates(trainer)
    # The ordinary name; an existing file of that name gets a -vN suffix rather than being replaced (a
    # resumed run failing again at its restored step keeps the file it resumed from).
    filepath = callback._versioned_path(candidates, None)
    marks: dict[str, Any] = {MARK: {"type": type(exception).__name__, "message": str(exception)}}
    trainer.checkpoint_port.save(filepath, callback.save_weights_only, marks=marks).result()
    callback._last_global_step_saved = trainer.global_step
    callback._last_checkpoint_saved = filepath
    for logger in trainer.loggers:
        logger.after_save_checkpoint(callback)
    if callback.save_last:
        _refresh_last(callback, trainer, candidates, filepath)
    return filepath


def _refresh_last(
    callback: ModelCheckpoint, trainer: Trainer, candidates: dict[str, Any], filepath: str
) -> None:
    """Make ``last`` a copy of (or, with ``save_last="link"``, a link to) the committed exception file."""
    from stepstone.checkpoint import copy_file, link_file

    previous = callback.last_model_path
    last = callback._versioned_path(candidates, previous, callback.CHECKPOINT_NAME_LAST)
    if callback.save_last is True and trainer.checkpoint_port.writes_directories:
        trainer.checkpoint_port.save(last, callback.save_weights_only).result()  # a sharded directory: again
    else:
        if trainer.is_global_zero:  # the state was serialized once, into ``filepath``
            (link_file if callback.save_last == "link" else copy_file)(filepath, last)
        barrier(f"save last {last}")
    callback.last_model_path = last
    callback._last_step_written = trainer.global_step
    callback._delete(trainer, [previous] if previous and previous != last else [])
