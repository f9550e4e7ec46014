"""The loggers and callbacks a Trainer starts with: the user's, checked, plus Lightning's defaults."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stepstone.callbacks.callback import Callback, check_state_keys
from stepstone.callbacks.checkpoint import Checkpoint
from stepstone.callbacks.model_checkpoint import ModelCheckpoint
from stepstone.callbacks.model_summary import ModelSummary
from stepstone.callbacks.progress_bar import ProgressBar, TQDMProgressBar
from stepstone.errors import MisconfigurationException
from stepstone.loggers.csv_logs import CSVLogger
from stepstone.loggers.logger import Logger

__all__ = ["LOGGER_METHODS", "resolve_callbacks", "resolve_loggers"]

# What the Trainer calls on a logger (Lightning's Logger interface); any object that has them is accepted.
LOGGER_METHODS = ("log_metrics", "log_hyperparams", "log_graph", "save", "finalize", "after_save_checkpoint")


def resolve_loggers(logger: Any, root: str, fast_dev_run: bool) -> list[Logger]:
    """Lightning's rules: falsy means none, True/None the default CSVLogger, an iterable its items, else itself.

    Loggers are duck typed as in Lightning: any object with the Logger methods works (a ``MagicMock()`` is an
    iterable, so it means no logger, as in Lightning).
    """
    if fast_dev_run or logger is False:
        return []
    if logger is None or logger is True:
        return [CSVLogger(save_dir=root)]
    loggers: list[Any] = []
    if logger and not isinstance(logger, (str, bytes)) and isinstance(logger, Iterable):
        loggers = list(logger)
    elif logger:
        loggers = [logger]
    for item in loggers:
        missing = [m for m in LOGGER_METHODS if not callable(getattr(item, m, None))]
        if missing:
            raise MisconfigurationException(
                f"Trainer(logger={logger!r}) is invalid: {item!r} has no {', '.join(missing)} method; pass True, "
                "False, a logger (a stepstone.loggers.Logger or any object with its methods) or a list of them."
            )
    return loggers


def resolve_callbacks(
    callbacks: list[Callback] | Callback | None,
    enable_checkpointing: bool | None,
    enable_progress_bar: bool | None,
    enable_model_summary: bool,
) -> list[Callback]:
    """The user's callbacks, checked, plus Lightning's defaults (checkpoint, progress bar, summary), checkpoints last.

    Raises:
        MisconfigurationException: a non-Callback item, or a default switched off while its callback is given.
    """
    items = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
    bad = [type(cb).__name__ for cb in items if not isinstance(cb, Callback)]
    if bad:
        raise MisconfigurationException(
            f"Trainer(callbacks=...) contains {bad}, which are not stepstone Callback instances."
        )
    check_state_keys(items)
    given = [type(cb).__name__ for cb in items if isinstance(cb, Checkpoint)]
    has_checkpoint = bool(given)
    if enable_checkpointing is False and has_checkpoint:
        raise MisconfigurationException(
            f"Trainer(enable_checkpointing=False) was given together with the checkpoint callback {given[0]}; remove "
            "one of them."
        )
    if enable_checkpointing is not False and not has_checkpoint:
        items.append(ModelCheckpoint())
    has_bar = any(isinstance(cb, ProgressBar) for cb in items)
    if enable_progress_bar is False and has_bar:
        raise MisconfigurationException(
            "Trainer(enable_progress_bar=False) was given together with a progress bar callback; remove one of them."
        )
    if enable_progress_bar is not False and not has_bar:
        items.append(TQDMProgressBar())
    if enable_model_summary and not any(isinstance(cb, ModelSummary) for cb in items):
        items.append(ModelSummary())
    # Checkpoint callbacks run last so they see everything other callbacks logged (Lightning's order).
    return [cb for cb in items if not isinstance(cb, Checkpoint)] + [
        cb for cb in items if isinstance(cb, Checkpoint)
    ]
