"""``Trainer(max_time=...)`` is a Timer callback, as in Lightning: one mechanism for the time budget."""

from __future__ import annotations

import logging
from datetime import timedelta

from stepstone.callbacks.callback import Callback
from stepstone.callbacks.checkpoint import Checkpoint
from stepstone.callbacks.timer import Timer

__all__ = ["add_max_time_timer"]

log = logging.getLogger(__name__)


def add_max_time_timer(callbacks: list[Callback], max_time: timedelta | None) -> list[Callback]:
    """Add ``Timer(duration=max_time, interval="step")`` unless the callbacks already hold a Timer.

    Lightning appends it after the user's callbacks and the defaults, and checkpoint callbacks run last: so it
    goes before the first checkpoint callback.

    Args:
        callbacks: the Trainer's callbacks, checkpoint callbacks last.
        max_time: the resolved ``max_time`` (None: no Timer is added).

    Returns:
        The callbacks, with the Timer when one was added.
    """
    if max_time is None:
        return callbacks
    if any(isinstance(cb, Timer) for cb in callbacks):
        log.info("Ignoring `Trainer(max_time=...)`, callbacks list already contains a Timer.")
        return callbacks
    at = next((i for i, cb in enumerate(callbacks) if isinstance(cb, Checkpoint)), len(callbacks))
    return [*callbacks[:at], Timer(duration=max_time, interval="step"), *callbacks[at:]]
