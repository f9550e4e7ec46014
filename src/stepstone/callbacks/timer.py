"""Timer: time the train/validate/test loops and stop training when a time budget is spent (Lightning's callback).

``Trainer(max_time=...)`` is this callback: the Trainer adds ``Timer(duration=max_time, interval="step")``
unless the callbacks already hold a Timer (as Lightning does). The training time is saved in checkpoints, so
the budget covers the whole run across resumes, not each process separately.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import Any

from typing_extensions import override

import stepstone
from stepstone.callbacks.callback import Callback
from stepstone.callbacks.rank_decision import broadcast_decision
from stepstone.errors import MisconfigurationException
from stepstone.trainer.state import RunningStage

__all__ = ["Timer", "parse_duration"]

log = logging.getLogger(__name__)

_DURATION = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")
_INTERVALS = ("step", "epoch")


def parse_duration(value: str | timedelta | dict[str, int] | None, argument: str) -> timedelta | None:
    """Read a duration given as ``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of ``timedelta`` arguments.

    Args:
        value: the duration, or None for none.
        argument: how the caller names the argument in errors (``"Timer(duration"``, ``"Trainer(max_time"``).

    Returns:
        The duration as a ``timedelta`` (None for None).

    Raises:
        MisconfigurationException: a string not in the ``DD:HH:MM:SS`` form, or a value of another type.
        TypeError: a dict with keys ``timedelta`` does not take.
    """
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, dict):
        try:
            return timedelta(**value)
        except TypeError as exc:
            raise TypeError(
                f"{argument}={value!r}) is invalid: {exc}. Use datetime.timedelta's arguments, e.g. "
                "{'days': 1, 'hours': 2, 'minutes': 30}."
            ) from None
    if isinstance(value, str):
        found = _DURATION.fullmatch(value.strip())
        if found:
            days, hours, minutes, seconds = (int(part) for part in found.groups())
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise MisconfigurationException(
        f"{argument}={value!r}) is not a valid duration. Expected a string in the format DD:HH:MM:SS "
        "(e.g. '00:12:00:00' for 12 hours), a datetime.timedelta, or a dict like {'hours': 12}."
    )


class Timer(Callback):
    """Track the time spent training, validating and testing; stop training once ``duration`` is spent.

    The budget is checked when fit starts (a resumed run whose budget is spent stops at once), then after
    every training batch (``interval="step"``) or at the end of every training epoch (``"epoch"``). Running out
    sets ``trainer.should_stop``, so ``min_epochs``/``min_steps`` still hold and the last checkpoints are still
    written. Under DDP rank 0's clock decides for all ranks. The training time elapsed is saved in checkpoints
    (``{"time_elapsed": {stage: seconds}}`` under ``"Timer"``) and a resumed run counts on from it.

    Args:
        duration: the training time budget: ``"DD:HH:MM:SS"``, a ``datetime.timedelta``, or a dict of
            ``timedelta`` arguments; None only measures.
        interval: ``"step"`` (stop mid-epoch, after the batch that ran out) or ``"epoch"`` (at epoch end).
        verbose: log (INFO, rank 0) when the budget is spent.

    Raises:
        MisconfigurationException: ``duration`` is not one of those forms, or ``interval`` is neither
            ``"step"`` nor ``"epoch"`` (Lightning's type).
        TypeError: a ``duration`` dict with keys ``timedelta`` does not take.
    """

    def __init__(
        self,
        duration: str | timedelta | dict[str, int] | None = None,
        interval: str = "step",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        parsed = parse_duration(duration, "Timer(duration")
        if interval not in _INTERVALS:
            raise MisconfigurationException(
                f"Unsupported parameter value `Timer(interval={interval!r})`. Possible choices are: "
                f"{', '.join(_INTERVALS)}."
            )
        self._duration = parsed.total_seconds() if parsed is not None else None
        self._interval = interval
        self._verbose = verbose
        self._start_time: dict[RunningStage, float | None] = dict.fromkeys(RunningStage)
        self._end_time: dict[RunningStage, float | None] = dict.fromkeys(RunningStage)
        self._offset = 0.0  # training seconds of earlier runs, from a checkpoint

    def start_time(self, stage: str = RunningStage.TRAINING) -> float | None:
        """When ``stage`` (``"train"``, ``"validate"``, ``"test"``) last started, in ``time.monotonic()`` seconds."""
        return self._start_time[RunningStage(stage)]

    def end_time(self, stage: str = RunningStage.TRAINING) -> float | None:
        """When ``stage`` last ended, in ``time.monotonic()`` seconds (None while running or never run)."""
        return self._end_time[RunningStage(stage)]

    def time_elapsed(self, stage: str = RunningStage.TRAINING) -> float:
        """Seconds spent in ``stage``'s last run; for ``"train"`` plus the time restored from a checkpoint."""
        stage = RunningStage(stage)
        start, end = self.start_time(stage), self.end_time(stage)
        offset = self._offset if stage == RunningStage.TRAINING else 0
        if start is None:
            return offset
        if end is None:
            return time.monotonic() - start + offset
        return end - start + offset

    def time_remaining(self, stage: str = RunningStage.TRAINING) -> float | None:
        """Seconds of ``duration`` left for ``stage`` (negative once overrun); None without a duration."""
        if self._duration is None:
            return None
        return self._duration - self.time_elapsed(stage)

    @override
    def on_train_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the training clock."""
        self._start_time[RunningStage.TRAINING] = time.monotonic()

    @override
    def on_train_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Stop the training clock."""
        self._end_time[RunningStage.TRAINING] = time.monotonic()

    @override
    def on_validation_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the validation clock."""
        self._start_time[RunningStage.VALIDATING] = time.monotonic()

    @override
    def on_validation_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Stop the validation clock."""
        self._end_time[RunningStage.VALIDATING] = time.monotonic()

    @override
    def on_test_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the test clock."""
        self._start_time[RunningStage.TESTING] = time.monotonic()

    @override
    def on_test_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Stop the test clock."""
        self._end_time[RunningStage.TESTING] = time.monotonic()

    @override
    def on_fit_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Check the budget once the checkpoint (if any) is restored: it may be spent already."""
        if self._duration is not None:
            self._check_time_remaining(trainer)

    @override
    def on_train_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """With ``interval="step"``: check the budget after every training batch."""
        if self._interval == "step" and self._duration is not None:
            self._check_time_remaining(trainer)

    @override
    def on_train_epoch_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """With ``interval="epoch"``: check the budget at the end of every training epoch."""
        if self._interval == "epoch" and self._duration is not None:
            self._check_time_remaining(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The seconds elapsed per stage (Lightning's layout).

        Returns:
            ``{"time_elapsed": {"train": ..., "sanity_check": ..., "validate": ..., "test": ..., "predict": ...}}``.
        """
        return {"time_elapsed": {stage.value: self.time_elapsed(stage) for stage in RunningStage}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Count the training time on from the checkpoint's.

        Args:
            state_dict: the dict :meth:`state_dict` returned.
        """
        elapsed = state_dict.get("time_elapsed", {})
        self._offset = elapsed.get(RunningStage.TRAINING.value, 0)

    def _check_time_remaining(self, trainer: stepstone.Trainer) -> None:
        assert self._duration is not None
        should_stop = broadcast_decision(trainer, self.time_elapsed() >= self._duration)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose and trainer.is_global_zero:
            elapsed = timedelta(seconds=int(self.time_elapsed(RunningStage.TRAINING)))
            log.info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")
