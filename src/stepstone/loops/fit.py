"""The fit loop: epochs, the batches inside them, validation checks, schedulers, and its resumable counters."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from stepstone.errors import MisconfigurationException
from stepstone.loops.batches import iterate_batches, profiled
from stepstone.loops.data_position import DataPosition
from stepstone.loops.optimization import run_automatic, run_manual
from stepstone.loops.progress import (
    BatchProgress,
    EpochProgress,
    OptimizerProgress,
    Progress,
    fit_loop_state,
    restore_fit_loop,
)
from stepstone.trainer.rng import capture_rng, restore_rng

if TYPE_CHECKING:
    from stepstone.profilers import Profiler
    from stepstone.trainer.trainer import Trainer

__all__ = ["FitLoop"]


class FitLoop:
    """Runs ``trainer.fit``'s training: the counters here are what a checkpoint's ``loops`` entry stores."""

    def __init__(
        self, trainer: Trainer, max_epochs: int, min_epochs: int, max_steps: int, min_steps: int
    ) -> None:
        self.trainer = trainer
        self.max_epochs = max_epochs
        self.min_epochs = min_epochs
        self.max_steps = max_steps
        self.min_steps = min_steps
        self.epoch_progress = EpochProgress()
        self.batch_progress = BatchProgress()
        self.scheduler_progress = Progress()
        self.optim_progress = OptimizerProgress()
        self.manual_progress = Progress()
        self.val_batch_progress = BatchProgress()
        self.batches_that_stepped = 0
        self._resume_batch: int | None = None
        # The resumed batches begin a new epoch / the restored epoch is completed at run start (see
        # _restore_finished_epoch).
        self._resume_starts_epoch = False
        self._complete_epoch_on_run = False
        self._stepped_on_load = False
        # Restored from a checkpoint written in on_train_batch_end (see _restore_mid_epoch).
        self.resumed_after_batch_end = False
        # Lightning's ``restarting``: restored inside an epoch, or for iteration-based training (max_steps set).
        # A restarting fit runs no sanity check. Set by load_state_dict, cleared at the start of each fit.
        self.restarting = False
        # What remains of the current batch when a checkpoint is written: "validate" (its validation check and
        # bookkeeping), "after_validation" (only the bookkeeping), "epoch_end" (the end of the epoch's
        # callbacks), or None. A resumed run finishes exactly that part first (see resume_exactly).
        self.tail: str | None = None
        self.data = DataPosition()
        self._exact: dict[str, Any] | None = None
        self._warned_none = False

    # --- counters -----------------------------------------------------------------------------------
    @property
    def current_epoch(self) -> int:
        """Epochs completed (Lightning's ``trainer.current_epoch``)."""
        return self.epoch_progress.current.completed

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (automatic) or ``optimizer.step()`` calls (manual optimization)."""
        if self.trainer.lightning_module.automatic_optimization:
            return self.optim_progress.step.total.completed
        return self.manual_progress.total.completed

    @property
    def validation_enabled(self) -> bool:
        """Whether this fit validates: validation data with at least one batch to run (before the first
        validation, where ``limit_val_batches`` is still to be checked, whether there is validation data)."""
        return self.trainer._val_enabled()

    @property
    def validation_has_run(self) -> bool:
        """Whether a validation (not the sanity check) has run in this fit (restored on resume)."""
        return self.trainer._validation_has_run

    @property
    def batch_idx(self) -> int:
        """Index of the current (or last) training batch within the epoch."""
        return self.batch_progress.current.ready - 1

    @property
    def total_batch_idx(self) -> int:
        """Index of the current (or last) training batch across epochs."""
        return self.batch_progress.total.ready - 1

    def state_dict(self) -> dict[str, Any]:
        """The fit loop's counters in Lightning's layout (``checkpoint["loops"]["fit_loop"]``)."""
        return fit_loop_state(
            self.epoch_progress,
            self.batch_progress,
            self.scheduler_progress,
            self.optim_progress,
            self.manual_progress,
            self.batches_that_stepped,
            self.val_batch_progress,
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters and work out where training continues (Lightning 2.6's rules).

        A checkpoint written once the epoch's training finished (in ``on_train_epoch_end`` or after ``fit``)
        continues with the next epoch, except that iteration-based training (``max_steps`` set) first runs the
        batches that ``max_steps`` cut from that epoch, as Lightning does. One written after a batch was processed
        (``on_train_batch_end``, mid-epoch validation) continues with the following batch, counting that batch in
        ``_batches_that_stepped`` (which Lightning increments only after those hooks); one written before a batch
        was processed repeats that batch.
        """
        self.batches_that_stepped = restore_fit_loop(
            state,
            self.epoch_progress,
            self.batch_progress,
            self.scheduler_progress,
            self.optim_progress,
            self.manual_progress,
            self.val_batch_progress,
        )
        self._resume_batch = None
        self._resume_starts_epoch = False
        self._complete_epoch_on_run = False
        self._stepped_on_load = False
        self.resumed_after_batch_end = False
        epoch = self.epoch_progress.current
        finished = epoch.ready == epoch.started == epoch.processed
        self.restarting = not finished or self.max_steps != -1
        if finished:
            self._restore_finished_epoch()
        elif epoch.started == epoch.ready and self.batch_progress.current.processed > 0:
            self._restore_mid_epoch()
        else:  # saved before the epoch's first batch was processed (or in on_train_epoch_start): it starts again
            self._settle(self.epoch_progress, self.batch_progress)

    @staticmethod
    def _settle(*progresses: Progress) -> None:
        """Drop the stages a checkpoint caught half-way: every tracker back to its completed count."""
        for progress in progresses:
            for tracker in (progress.current, progress.total):
                tracker.ready = tracker.started = tracker.processed = tracker.completed

    def _restore_finished_epoch(self) -> None:
        epoch, batch = self.epoch_progress, self.batch_progress
        done = batch.current.processed
        cut_short = 0 < done < self.trainer.num_training_batches and not batch.is_last_batch
        if self.max_steps != -1 and cut_short:
            # Lightning's iteration-based training goes on with the batches max_steps left out of the epoch. Saved
            # in on_train_epoch_end, they finish that epoch (its end hooks run again); saved after it, they make
            # up a new epoch (on_train_epoch_start runs first).
            self._resume_batch = done
            self._resume_starts_epoch = epoch.current.completed == epoch.current.processed
            for tracker in (batch.current, batch.total):
                tracker.ready = tracker.started = tracker.completed = tracker.processed
            return
        # The epoch is done (saved in on_train_epoch_end it is only missing its completed count): the next starts.
        # As in Lightning, the count is completed when training starts: until then (the sanity check,
        # on_fit_start) current_epoch is the checkpoint's.
        self._complete_epoch_on_run = True
        self._settle(batch)

    def _restore_mid_epoch(self) -> None:
        epoch, batch = self.epoch_progress, self.batch_progress.current
        done = batch.processed
        if batch.ready == done:
            # Saved after the batch was processed, before _batches_that_stepped counted it. In on_train_batch_end
            # (not yet completed) Lightning runs no validation or epoch end for that batch on resume, so no
            # checkpoint trigger fires at the restored step.
            self.resumed_after_batch_end = batch.completed < done
            is_last = self.batch_progress.is_last_batch or done == self.trainer.num_training_batches
            if done % self.trainer.accumulate_grad_batches == 0 or is_last:
                self.batches_that_stepped += 1
                self._stepped_on_load = True
        self._resume_batch = done
        for tracker in (batch, self.batch_progress.total):
            tracker.ready = tracker.started = tracker.completed = tracker.processed
        # The epoch is running: it was started, not processed.
        for tracker in (epoch.current, epoch.total):
            tracker.processed = tracker.completed
            tracker.ready = tracker.started = tracker.completed + 1

    # --- stopping -----------------------------------------------------------------------------------
    def _can_stop_early(self) -> bool:
        met_epochs = self.epoch_progress.current.processed >= self.min_epochs if self.min_epochs else True
        met_steps = self.global_step >= self.min_steps if self.min_steps else True
        return met_epochs and met_steps

    def _max_steps_reached(self) -> bool:
        return self.max_steps != -1 and self.global_step >= self.max_steps

    def done(self) -> bool:
        """Whether training ends before the next epoch."""
        if self.trainer.num_training_batches == 0 or self._max_steps_reached():
            return True
        if self.max_epochs != -1 and self.epoch_progress.current.processed >= self.max_epochs:
            self.epoch_progress.current.completed = self.epoch_progress.current.processed
            return True
        return self.trainer.should_stop and self._can_stop_early()

    def _epoch_should_end(self) -> bool:
        if self._max_steps_reached():
            return True
        return self.trainer.should_stop and self._can_stop_early()

    def _num_ready_batches_reached(self) -> bool:
        progress = self.batch_progress
        return progress.current.ready == self.trainer.num_training_batches or progress.is_last_batch

    def warn_none_step(self) -> None:
        """Warn once that a ``training_step`` returned None (the batch is skipped)."""
        if not self._warned_none:
            self._warned_none = True
            warnings.warn(
                "training_step returned None, so this batch ran no backward. If this was on purpose, ignore this "
                "warning.",
                UserWarning,
                stacklevel=2,
            )

    # --- running ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Train until ``max_epochs``/``max_steps``/``max_time`` or ``should_stop``.

        As in Lightning, nothing runs (not even ``on_train_start``) when there is nothing to train:
        ``limit_train_batches=0``, ``max_epochs=0``, or a resumed run that is already done.
        """
        hooks = self.trainer._hooks
        try:
            if self.trainer.num_training_batches == 0 or self._max_steps_reached():
                # Nothing to train: as in Lightning, the restored epoch is not completed (current_epoch stays the
                # checkpoint's).
                self._keep_generators()
                return
            complete, self._complete_epoch_on_run = self._complete_epoch_on_run, False
            if self.done():
                # As in Lightning, a run stopped before it starts (should_stop set in on_fit_start, e.g. by a
                # Timer whose budget the checkpoint spent) leaves the restored epoch uncompleted.
                self._keep_generators()
                return
            if complete:
                epoch = self.epoch_progress
                epoch.current.completed = epoch.current.processed
                epoch.total.completed = max(epoch.total.completed, epoch.total.processed)
            every = self.trainer.check_val_every_n_epoch
            if self.trainer._val_enabled() and (every is None or (self.current_epoch + 1) % every == 0):
                self.trainer._raise_val_limit_error()  # Lightning sets up this epoch's validation data here
            hooks.both("on_train_start")
            self._continue_exactly()
            profiler = self.trainer._hooks.profiler
            while not self.done():
                if profiler is None:
                    self.run_epoch()
                else:
                    with profiler.profile("run_training_epoch"):
                        self.run_epoch()
            hooks.both("on_train_end")
        finally:
            self._exact = None  # a resume's state is for this run only

    def run_epoch(self) -> None:
        """One training epoch, its validations, and its end-of-epoch hooks."""
        trainer = self.trainer
        hooks = trainer._hooks
        start, self._resume_batch = self._resume_batch, None
        starts_epoch, self._resume_starts_epoch = start is None or self._resume_starts_epoch, False
        trainer._runner.fit_data.reload_train_if_due()  # reload_dataloaders_every_n_epochs
        trainer._set_sampler_epoch(self.epoch_progress.current.processed)
        if start is None:
            start = 0
            self.batch_progress.current.reset()
            self.batch_progress.is_last_batch = False
            self.val_batch_progress.total.reset()
        if starts_epoch:
            self.epoch_progress.increment("ready")
            hooks.both("on_train_epoch_start")
            self.epoch_progress.increment("started")
        # A run resumed mid-epoch continues it without calling on_train_epoch_start again (Lightning's rule).
        self._run_batches(start)
        self._finish_epoch()

    def _run_batches(self, start: int) -> None:
        trainer = self.trainer
        total = trainer.num_training_batches
        loader = trainer._train_loader
        exact, self._exact = self._exact, None
        if total == 0 or loader is None:
            return
        if exact is not None and start > 0 and not self._resume_inside_epoch(exact, start, total):
            return
        iterator = self.data.open(
            loader, start, exact.get("loader_state") if exact else None, lookahead=math.isinf(total)
        )
        profiler = trainer._hooks.profiler
        if profiler is not None:
            iterator = profiled(iterator, profiler, "[_TrainingEpochLoop].train_dataloader_next")
        preemption = trainer._preemption
        for batch_idx, batch, is_last in iterate_batches(iterator, start, total):
            self.batch_progress.is_last_batch = is_last
            accumulating = self._should_accumulate(batch_idx, is_last)
            if not self._profiled_batch(profiler, batch, batch_idx, accumulating):
                break
            if not accumulating and preemption.due(trainer):
                preemption.save_and_exit(trainer)  # raises SystemExit after the optimizer step
            if not self._after_batch(batch_idx, is_last, accumulating, validate=True):
                break

    def _resume_inside_epoch(self, exact: dict[str, Any], start: int, total: float) -> bool:
        """Finish the batch an exact checkpoint was written in; False when its epoch has no batch left to run."""
        tail = exact.get("tail")
        if tail in ("validate", "after_validation"):
            # Its validation and bookkeeping come first.
            last = self.batch_progress.is_last_batch
            accumulating = self._should_accumulate(start - 1, last)
            if not self._after_batch(start - 1, last, accumulating, validate=tail == "validate"):
                return False
        if start >= total:
            return False
        self.data.resume_from(exact.get("epoch_state") or {}, capture_rng())
        return True

    def _profiled_batch(
        self, profiler: Profiler | None, batch: Any, batch_idx: int, accumulating: bool
    ) -> bool:
        """Run one training batch, inside the profiler's ``run_training_batch`` span when one records."""
        if profiler is None:
            return self._run_batch(batch, batch_idx, accumulating)
        with profiler.profile("run_training_batch"):
            return self._run_batch(batch, batch_idx, accumulating)

    def _after_batch(self, batch_idx: int, is_last: bool, accumulating: bool, validate: bool) -> bool:
        """What follows a training batch: validation if due, step bookkeeping; False when the epoch must end."""
        trainer = self.trainer
        if validate and self._should_validate(batch_idx, is_last):
            if not accumulating:
                trainer._hooks.module("on_validation_model_zero_grad")
            self.tail = "after_validation"
            trainer._run_fit_validation()
        if not accumulating:
            self._update_schedulers("step", plateau=True)
            # Counted once per optimizer step, after validation, for the loggers' step axis (Lightning's).
            self.batches_that_stepped += 1
        self.tail = None
        return not self._epoch_should_end()

    # --- exact resume -------------------------------------------------------------------------------
    def resume_exactly(self, state: dict[str, Any]) -> None:
        """Take the ``checkpoint["stepstone"]["loop"]`` state of an exact checkpoint (after ``load_state_dict``).

        Args:
            state: ``tail``, ``rng`` (generator states at save time), ``epoch_state`` (how the epoch's order
                was drawn) and ``loader_state`` (a stateful loader's ``state_dict()``).
        """
        self._exact = dict(state)
        self.data.carry(state.get("epoch_state"), state.get("workers"), state.get("loader_state"))
        if self._resume_batch is None:
            return
        if state.get("tail") in ("validate", "after_validation") and self._stepped_on_load:
            # The batch's bookkeeping is finished by _after_batch when the run continues.
            self.batches_that_stepped -= 1
            self._stepped_on_load = False

    def _keep_generators(self) -> None:
        """A resumed run with nothing left to train still goes on with the checkpoint's generators: the
        checkpoints it writes then equal the uninterrupted run's (e.g. preempted on the very last step)."""
        if self._exact is not None and self._exact.get("rng") is not None:
            restore_rng(self._exact["rng"])

    def _continue_exactly(self) -> None:
        """At the start of a resumed run: generators as at save time, then the rest of an interrupted epoch end."""
        exact = self._exact
        if exact is None:
            return
        if exact.get("rng") is not None:
            restore_rng(exact["rng"])
        if self._resume_batch is None:
            self._exact = None
            if exact.get("tail") == "epoch_end" and self._num_ready_batches_reached():
                self._update_schedulers("epoch", plateau=True)

    def _run_batch(self, batch: Any, batch_idx: int, accumulating: bool) -> bool:
        trainer = self.trainer
        hooks = trainer._hooks
        batch = trainer._transfer_batch(batch, 0)
        trainer._metrics.current_batch = batch
        self.batch_progress.increment("ready")
        hooks.callbacks("on_train_batch_start", batch, batch_idx)
        if hooks.module("on_train_batch_start", batch, batch_idx) == -1:
            self.batch_progress.increment("processed")
            return False
        self.batch_progress.increment("started")
        if trainer.lightning_module.automatic_optimization:
            outputs = run_automatic(self, batch, batch_idx, accumulating)
        else:
            outputs = run_manual(self, batch, batch_idx)
        self.batch_progress.increment("processed")
        self.tail = "validate"
        if not accumulating:
            self._update_schedulers("step", plateau=False)
        if self._num_ready_batches_reached():
            # Epoch-interval schedulers step with the epoch's last batch, before its validation (Lightning's order).
            self._update_schedulers("epoch", plateau=False)
        hooks.callbacks("on_train_batch_end", outputs, batch, batch_idx)
        hooks.module("on_train_batch_end", outputs, batch, batch_idx)
        trainer._metrics.current_batch = None
        self.batch_progress.increment("completed")
        if not accumulating:
            force = bool(trainer.fast_dev_run) or trainer.should_stop
            trainer._metrics.flush_step(self.batches_that_stepped, force=force)
        return True

    def _should_accumulate(self, batch_idx: int, is_last: bool) -> bool:
        accumulate = self.trainer.accumulate_grad_batches
        return accumulate > 1 and not ((batch_idx + 1) % accumulate == 0 or is_last)

    def _should_validate(self, batch_idx: int, is_last: bool) -> bool:
        """Whether validation runs after training batch ``batch_idx`` (Lightning's ``_should_check_val_fx``)."""
        trainer = self.trainer
        if not trainer._val_enabled():
            return False
        every = trainer.check_val_every_n_epoch
        if every is not None and (self.current_epoch + 1) % every != 0:
            return False
        interval = trainer.val_check_batch
        if math.isinf(interval):
            return is_last or (trainer.should_stop and self._can_stop_early())
        if trainer.should_stop and self._can_stop_early():
            return True
        current = self.total_batch_idx if every is None else batch_idx
        return (current + 1) % int(interval) == 0

    def _finish_epoch(self) -> None:
        trainer = self.trainer
        hooks = trainer._hooks
        hub = trainer._metrics
        hub.publish_epoch(hub.train_results)
        self.epoch_progress.increment("processed")
        self.tail = "epoch_end"
        # Callbacks that monitor metrics (ModelCheckpoint, EarlyStopping) run after the module's hook so that
        # they see what the module logs in on_train_epoch_end (Lightning's order).
        hooks.callbacks("on_train_epoch_end", monitoring=False)
        hooks.module("on_train_epoch_end")
        hooks.callbacks("on_train_epoch_end", monitoring=True)
        to_log = hub.publish_epoch(hub.train_results)
        if self._num_ready_batches_reached():
            self._update_schedulers("epoch", plateau=True)
        hub.send(
            to_log, step=max(self.batches_that_stepped - 1, 0)
        )  # each logger saved after its log_metrics
        hub.train_results.reset()
        self.tail = None
        self.epoch_progress.increment("completed")

    def _update_schedulers(self, interval: str, plateau: bool) -> None:
        trainer = self.trainer
        if not trainer.lr_scheduler_configs or not trainer.lightning_module.automatic_optimization:
            return
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval or config.reduce_on_plateau != plateau:
                continue
            index = self.global_step if interval == "step" else self.current_epoch + 1
            if index % config.frequency != 0:
                continue
            metric = None
            if config.reduce_on_plateau:
                metric = trainer.callback_metrics.get(config.monitor or "")
                if metric is None:
                    if config.strict:
                        raise MisconfigurationException(
                            f"ReduceLROnPlateau conditioned on metric {config.monitor!r} which is not available. "
                            f"Available metrics are: {sorted(trainer.callback_metrics)}. Set the metric with the "
                            "'monitor' key of the lr_scheduler dict (or 'strict': False to skip)."
                        )
                    warnings.warn(
                        f"ReduceLROnPlateau metric {config.monitor!r} is not available; the scheduler was not "
                        "stepped.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
            self.scheduler_progress.increment("ready")
            trainer._hooks.module("lr_scheduler_step", config.scheduler, metric)
            self.scheduler_progress.increment("completed")
