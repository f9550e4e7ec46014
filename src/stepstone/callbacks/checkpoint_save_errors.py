"""What a failed ModelCheckpoint save does: raise (default) or, with ``on_save_error="warn"``, warn and train on.

A background (async) save fails after its trigger, on rank 0 only under DDP; every rank must then take the
same decision, so the outcome is shared first (:func:`agree_on_outcome`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from stepstone.errors import CheckpointError
from stepstone.strategies.collectives import exchange

if TYPE_CHECKING:
    from stepstone.callbacks.checkpoint_writes import CheckpointWrites
    from stepstone.trainer.trainer import Trainer

__all__ = ["agree_on_outcome", "tolerate"]


def tolerate(
    trainer: Trainer, callback: CheckpointWrites, error: BaseException, path: str | None = None
) -> bool:
    """With ``on_save_error="warn"``, turn a failed save (I/O or checkpoint error) into a loud warning.

    Args:
        trainer: the Trainer.
        callback: the ModelCheckpoint whose save failed (its policy, and the committed files it names).
        error: what the save raised.
        path: the file that was not written, when known (background saves fail after their trigger).

    Returns:
        True when training should continue; False when ``error`` must be raised (policy ``"raise"``, or a
        programming error such as an unsafe object in the state, or an interrupt).
    """
    if callback.on_save_error != "warn" or not isinstance(error, (OSError, CheckpointError)):
        return False
    kept = callback.last_model_path or callback.best_model_path or "none yet"
    warnings.warn(
        f"CHECKPOINT NOT SAVED{f' ({path})' if path else ''} at epoch {trainer.current_epoch}, step "
        f"{trainer.global_step}: {error}. "
        f"Training continues (ModelCheckpoint(on_save_error='warn')); the checkpoints already committed are "
        f"intact (newest: {kept}). Free disk space or fix the error, or pass on_save_error='raise' to stop.",
        UserWarning,
        stacklevel=3,
    )
    return True


def agree_on_outcome(trainer: Trainer, filepath: str, failure: BaseException | None) -> BaseException | None:
    """Under DDP only rank 0 writes in the background: every rank learns whether its save committed.

    Args:
        trainer: the Trainer.
        filepath: the file of the background save.
        failure: this rank's outcome (None: committed, or nothing written on this rank).

    Returns:
        The failure every rank raises or tolerates, or None when rank 0 committed the file.
    """
    if trainer.world_size == 1:
        return failure
    told = exchange(f"background save {filepath}", None if failure is None else repr(failure))
    if told is not None and failure is None:
        return CheckpointError(f"rank 0's background save of {filepath} failed: {told}")
    return failure
