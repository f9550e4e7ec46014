"""EarlyStopping: stop training when a monitored metric stops improving (Lightning 2.6's callback)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from enum import Enum
from typing import Any

import torch
from typing_extensions import override

import stepstone
from stepstone.callbacks.callback import Callback
from stepstone.callbacks.rank_decision import reduce_boolean_decision
from stepstone.errors import MisconfigurationException
from stepstone.trainer.state import TrainerFn

__all__ = ["EarlyStopping", "EarlyStoppingReason"]

log = logging.getLogger(__name__)


class EarlyStoppingReason(Enum):
    """Why :class:`EarlyStopping` stopped training (``stopping_reason``); the values are Lightning's."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


class EarlyStopping(Callback):
    """Monitor a metric and stop training when it stops improving.

    The check runs once per validation: at the end of the training epoch when validation runs once per epoch
    (``val_check_interval=1.0``, ``check_val_every_n_epoch=1``), else at the end of each validation; or as
    ``check_on_train_epoch_end`` says. ``patience`` counts checks, not epochs. Under DDP training stops on every
    rank when it stops on one. ``wait_count``, ``stopped_epoch``, ``best_score``, ``patience`` and the stopping
    reason are saved in checkpoints under :attr:`state_key`, so a resumed run continues the patience count.

    Args:
        monitor: the logged metric to watch (a key of ``trainer.callback_metrics``).
        min_delta: an improvement of at most this much (absolute) counts as no improvement.
        patience: checks without improvement after which training stops.
        verbose: log each improvement and the reason for stopping (``logging`` INFO), and warn when a
            non-strict monitor is missing.
        mode: ``"min"`` (stop when the metric stops decreasing) or ``"max"`` (stops increasing).
        strict: raise when ``monitor`` is not among the logged metrics; False skips the check instead.
        check_finite: stop when the metric becomes NaN or infinite.
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        check_on_train_epoch_end: check at the end of the training epoch (True) or of validation (False);
            None decides as described above.
        log_rank_zero_only: under several processes, only rank 0 logs the messages.

    Raises:
        MisconfigurationException: ``mode`` is neither ``"min"`` nor ``"max"`` (Lightning's type).
    """

    mode_dict: dict[str, Callable[..., torch.Tensor]] = {"min": torch.lt, "max": torch.gt}
    order_dict = {"min": "<", "max": ">"}
    _monitors_metrics = (
        True  # runs after the module's on_train_epoch_end, as Lightning's monitoring callbacks
    )

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        super().__init__()
        if mode not in self.mode_dict:
            raise MisconfigurationException(
                f"EarlyStopping(mode={mode!r}) is invalid: `mode` can be {', '.join(self.mode_dict)}, got {mode}. "
                "Pass mode='min' for a metric that should decrease (a loss) or mode='max' for one that should "
                "increase (an accuracy)."
            )
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.wait_count = 0
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None
        # Stored with the sign that makes "current - min_delta beats best" the improvement test in both modes.
        self.min_delta = min_delta * (1 if mode == "max" else -1)
        inf = torch.tensor(torch.inf)
        self.best_score: torch.Tensor = inf if mode == "min" else -inf

    @property
    @override
    def state_key(self) -> str:
        """``EarlyStopping{'monitor': ..., 'mode': ...}``: several instances differing in these keep their states."""
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self) -> Callable[..., torch.Tensor]:
        """``torch.lt`` for ``mode="min"``, ``torch.gt`` for ``"max"``: whether the first value is better."""
        return self.mode_dict[self.mode]

    @override
    def setup(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, stage: str) -> None:
        """Decide where the check runs, if ``check_on_train_epoch_end`` left it open (Lightning's rule)."""
        if self._check_on_train_epoch_end is None:
            self._check_on_train_epoch_end = (
                trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        """The state a resumed run continues from (Lightning's keys).

        Returns:
            ``wait_count``, ``stopped_epoch``, ``best_score`` (a tensor), ``patience``, ``stopping_reason``
            (the enum's int value) and ``stopping_reason_message``.
        """
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values (checkpoints without the reason, as Lightning's older ones, load).

        Args:
            state_dict: the dict stored under :attr:`state_key`.
        """
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        reason = state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value)
        self.stopping_reason = EarlyStoppingReason(reason)
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    def _should_skip_check(self, trainer: stepstone.Trainer) -> bool:
        return trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking

    @override
    def on_train_epoch_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Check here when validation runs once per epoch (or ``check_on_train_epoch_end=True``)."""
        if not self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    @override
    def on_validation_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Check here when validation runs more or less often than once per epoch."""
        if self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def _validate_condition_metric(self, logs: dict[str, torch.Tensor]) -> bool:
        if logs.get(self.monitor) is not None:
            return True
        message = (
            f"Early stopping conditioned on metric `{self.monitor}` which is not available."
            " Pass in or modify your `EarlyStopping` callback to use any of the following:"
            f" `{'`, `'.join(list(logs.keys()))}`"
        )
        if self.strict:
            raise RuntimeError(message)
        if self.verbose:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return False

    def _run_early_stopping_check(self, trainer: stepstone.Trainer) -> None:
        logs = trainer.callback_metrics
        # fast_dev_run only checks that the program runs: it never stops early.
        if trainer.fast_dev_run or not self._validate_condition_metric(logs):
            return
        current = torch.as_tensor(logs[self.monitor]).squeeze()
        should_stop, reason = self._evaluate_stopping_criteria(current)
        should_stop = reduce_boolean_decision(trainer, should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (
                f"Monitored metric {self.monitor} = {current} is not finite."
                f" Previous best value was {self.best_score:.3f}. Signaling Trainer to stop."
            )
        order = self.order_dict[self.mode]
        if self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (
                f"Stopping threshold reached: {self.monitor} = {current} {order} {self.stopping_threshold}."
                " Signaling Trainer to stop."
            )
        if self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (
                f"Divergence threshold reached: {self.monitor} = {current} {order} {self.divergence_threshold}."
                " Signaling Trainer to stop."
            )
        if self.monitor_op(current - self.min_delta, self.best_score.to(current.device)):
            reason = self._improvement_message(current)
            self.best_score = current
            self.wait_count = 0
            return False, reason
        self.wait_count += 1
        if self.wait_count < self.patience:
            return False, None
        self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
        return True, (
            f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records."
            f" Best score: {self.best_score:.3f}. Signaling Trainer to stop."
        )

    def _improvement_message(self, current: torch.Tensor) -> str:
        if torch.isfinite(self.best_score):
            return (
                f"Metric {self.monitor} improved by {abs(self.best_score - current):.3f} >="
                f" min_delta = {abs(self.min_delta)}. New best score: {current:.3f}"
            )
        return f"Metric {self.monitor} improved. New best score: {current:.3f}"

    @staticmethod
    def _log_info(trainer: stepstone.Trainer, message: str, log_rank_zero_only: bool) -> None:
        rank = trainer.global_rank if trainer.world_size > 1 else None
        if rank is not None:
            message = f"[rank: {rank}] {message}"
        if rank is None or not log_rank_zero_only or rank == 0:
            log.info(message)
