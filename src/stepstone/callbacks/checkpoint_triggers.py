"""When ModelCheckpoint saves: Lightning 2.6's triggers (steps, time, epochs, after validation, end of training).

The hooks here decide *when* a trigger fires and with which metrics; :class:`ModelCheckpoint` decides what the
trigger writes (``_save_on_trigger``). Pure rules about the Trainer's position live in ``checkpoint_schedule``.
"""

from __future__ import annotations

import time
import warnings
from datetime import timedelta
from typing import Any, Literal

import torch
from typing_extensions import override

import stepstone
from stepstone.callbacks.checkpoint import Checkpoint
from stepstone.callbacks.checkpoint_schedule import (
    epoch_due,
    saves_on_train_epoch_end,
    validation_follows_epoch,
)
from stepstone.errors import MisconfigurationException
from stepstone.strategies.collectives import broadcast_object

__all__ = ["CheckpointTriggers"]


class CheckpointTriggers(Checkpoint):
    """The trigger hooks of :class:`~stepstone.callbacks.ModelCheckpoint` (which sets the attributes below)."""

    monitor: str | None
    save_last: bool | Literal["link"] | None
    save_top_k: int
    _every_n_train_steps: int
    _every_n_epochs: int
    _train_time_interval: timedelta | None
    _save_on_train_epoch_end: bool | None
    _last_global_step_saved: int
    _last_time_checked: float | None
    _last_checkpoint_saved: str
    _last_step_written: int | None
    _held_step: int | None
    _defer_save_until_validation: bool
    _warned: set[str]
    CHECKPOINT_NAME_LAST: str

    def _save_on_trigger(
        self,
        trainer: stepstone.Trainer,
        candidates: dict[str, torch.Tensor],
        top_k: bool = True,
        lightning_saves_last: bool = False,
    ) -> None:
        raise NotImplementedError  # abstract: ModelCheckpoint writes the trigger's plan

    def _poll_pending(self, trainer: stepstone.Trainer) -> None:
        raise NotImplementedError  # abstract: CheckpointWrites applies a finished background save

    @override
    def on_train_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the clock of ``train_time_interval``.

        A run resumed from a checkpoint written in ``on_train_batch_end``: Lightning's resume skips that batch's
        validation and epoch end, so no ModelCheckpoint saves at the restored step. stepstone runs them (an exact
        resume), yet likewise writes no second file for that step (the interrupted run may have written it).
        """
        self._last_time_checked = time.monotonic()
        if trainer.fit_loop.resumed_after_batch_end:
            self._hold_restored_step(trainer.global_step)

    @override
    def on_train_batch_start(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """A new batch: triggers at the restored step count again (Lightning saves there too)."""
        if self._held_step is not None:
            self._last_global_step_saved, self._held_step = self._held_step, None

    def _hold_restored_step(self, step: int) -> None:
        """Save nothing at ``step`` until the next batch: the restored batch's hooks ran before the checkpoint."""
        self._held_step = self._last_global_step_saved
        self._last_global_step_saved = step

    @override
    def on_train_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Step and time triggers (Lightning's order: a trigger may wait for validation before anything else)."""
        self._poll_pending(trainer)
        step_due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        time_due = False
        now = time.monotonic()
        if self._train_time_interval is not None and self._last_time_checked is not None:
            time_due = now - self._last_time_checked >= self._train_time_interval.total_seconds()
            # Clocks differ between ranks: rank 0's answer holds everywhere (a no-op on one process).
            time_due = broadcast_object(time_due)
        if not (step_due or time_due):
            return
        if time_due:
            self._last_time_checked = now
        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None and (
            self.monitor not in candidates or validation_follows_epoch(trainer, self._save_on_train_epoch_end)
        ):
            # The metric is missing (e.g. validation has not run yet), or this is the epoch's last batch and
            # its validation follows: save after validation with the fresh value. Lightning 2.6 decides this
            # before the other skip rules, so even a trigger at an already saved step (global_step 0 while
            # accumulating) waits, and where checks run at the training epoch end, it never saves it
            # (``on_validation_end``).
            self._defer_save_until_validation = True
            return
        if self._should_skip(trainer):
            return
        self._save_on_trigger(trainer, candidates, lightning_saves_last=True)

    @override
    def on_train_epoch_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Epoch trigger when checks run at the end of the training epoch."""
        self._poll_pending(trainer)
        if self._should_skip(trainer) or not self._should_save_on_train_epoch_end(trainer):
            return
        self._epoch_end_check(trainer)

    @override
    def on_validation_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Epoch trigger after validation, and step/time triggers that waited for validation."""
        self._poll_pending(trainer)
        if self._should_skip(trainer) or self._should_save_on_train_epoch_end(trainer):
            # Lightning's contract: nothing is saved here then, not even a step/time save deferred for a
            # missing metric (it is dropped; the next trigger saves).
            return
        if self._defer_save_until_validation:
            self._defer_save_until_validation = False
            self._save_on_trigger(trainer, self._monitor_candidates(trainer), lightning_saves_last=True)
            return
        self._epoch_end_check(trainer)

    def _epoch_end_check(self, trainer: stepstone.Trainer) -> None:
        if self._epoch_due(trainer):
            self._save_on_trigger(trainer, self._monitor_candidates(trainer))
        elif (
            self.save_last == "link"
            and self._last_checkpoint_saved
            and self._last_step_written != trainer.global_step
        ):
            # Lightning refreshes a linked last at every epoch-end check once anything was saved, due or not.
            self._save_on_trigger(
                trainer, self._monitor_candidates(trainer), top_k=False, lightning_saves_last=True
            )

    @override
    def on_train_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Make ``last`` hold the final state unless this run's ``last`` already holds this step.

        So a run resumed right after a batch end, which writes no file for the restored step at its triggers
        (see ``checkpoint_io``), still leaves its own ``last`` when it saved nothing else (Lightning's rule).
        """
        if not self.save_last or self._should_skip(trainer, any_step=True):
            return
        if self._last_step_written == trainer.global_step:
            return  # this run's last already holds this step
        self._save_on_trigger(trainer, self._monitor_candidates(trainer), top_k=False)

    def _should_skip(self, trainer: stepstone.Trainer, any_step: bool = False) -> bool:
        from stepstone.trainer.state import TrainerFn

        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or (not any_step and self._last_global_step_saved == trainer.global_step)
        )

    def _epoch_due(self, trainer: stepstone.Trainer) -> bool:
        return epoch_due(trainer, self._every_n_epochs)

    def _should_save_on_train_epoch_end(self, trainer: stepstone.Trainer) -> bool:
        return saves_on_train_epoch_end(trainer, self._save_on_train_epoch_end)

    def _monitor_candidates(self, trainer: stepstone.Trainer) -> dict[str, torch.Tensor]:
        candidates = dict(trainer.callback_metrics)
        epoch, step = candidates.get("epoch"), candidates.get("step")
        candidates["epoch"] = (
            epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
        )
        candidates["step"] = (
            step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
        )
        return candidates

    def _missing_monitor(self, trainer: stepstone.Trainer, candidates: dict[str, torch.Tensor]) -> None:
        message = (
            f"ModelCheckpoint(monitor={self.monitor!r}) could not find the monitored key in the returned metrics: "
            f"{list(candidates)}. HINT: Did you call log({self.monitor!r}, value) in the LightningModule?"
        )
        # Lightning's rule: once validation has run, the key had its chance (a typo); before that, it may be a
        # validation metric still to come, or validation is disabled: warn and train on without a top k.
        if trainer.fit_loop.validation_has_run or trainer.validating:
            raise MisconfigurationException(message)
        if message not in self._warned:
            self._warned.add(message)
            kept = f" {self.CHECKPOINT_NAME_LAST!r} is still saved." if self.save_last else ""
            warnings.warn(
                f"{message} No top-k checkpoint is saved until {self.monitor!r} is logged.{kept}",
                UserWarning,
                stacklevel=2,
            )
