"""ModelCheckpoint: decides *when* to checkpoint and *which* files to keep; the engine writes and deletes.

Lightning 2.x semantics (names, defaults, file names, top-k rules, ``state_key``), with stricter guarantees:
a save is committed before any bookkeeping points at it and before anything older is deleted; a failed save
leaves ``best_model_path``/``best_k_models``/``last_model_path`` as they were; ``last`` holds the newest state
at every trigger and is never serialized twice (the committed top-k file is copied or linked); the file a run
resumed from is never deleted.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import torch
import yaml

import stepstone
from stepstone.callbacks.checkpoint import Checkpoint
from stepstone.callbacks.checkpoint_naming import check_names, format_name
from stepstone.callbacks.checkpoint_pending import PendingSave
from stepstone.callbacks.checkpoint_plan import (
    TopKPlan,
    TopKState,
    TriggerPlan,
    enters,
    plan_newest,
    plan_top_k,
    plan_trigger,
)
from stepstone.callbacks.checkpoint_save_errors import agree_on_outcome, tolerate
from stepstone.callbacks.checkpoint_schedule import (
    epoch_due,
    saves_on_train_epoch_end,
    validation_follows_epoch,
)
from stepstone.callbacks.checkpoint_settings import (
    default_dirpath,
    exists,
    has_checkpoints,
    is_folder,
    is_local,
    resolve_dirpath,
    validate_arguments,
)
from stepstone.errors import MisconfigurationException
from stepstone.strategies.collectives import barrier, broadcast_object, exchange

if TYPE_CHECKING:
    from stepstone.checkpoint import SaveHandle

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Checkpoint):
    """Save checkpoints periodically and keep the best ``save_top_k`` by a monitored metric.

    Args:
        dirpath: folder of the checkpoints; default ``<logger save_dir>/<name>/version_N/checkpoints``, or
            ``default_root_dir/checkpoints`` without a logger.
        filename: name template, e.g. ``"sample-mnist-{epoch:02d}-{val_loss:.2f}"``; default ``"{epoch}-{step}"``.
        monitor: metric to rank checkpoints by (anything logged with ``self.log``, or ``epoch``/``step``);
            None keeps the newest ``save_top_k`` (which must then be -1, 0 or 1).
        verbose: print each decision.
        save_last: True also keeps ``last.ckpt`` with the newest state; ``"link"`` makes it a symlink to the newest
            file when there is one.
        save_top_k: how many best checkpoints to keep; -1 all, 0 none.
        save_weights_only: leave optimizer, scheduler and callback state out of the files.
        mode: ``"min"`` or ``"max"``: whether a lower or a higher monitored value is better.
        auto_insert_metric_name: write ``name=value`` for each template field.
        every_n_train_steps: checkpoint every N optimizer steps.
        train_time_interval: checkpoint every ``timedelta`` of training time.
        every_n_epochs: checkpoint every N epochs (default 1 when no other trigger is set).
        save_on_train_epoch_end: check at the end of the training epoch (True) or after validation (False);
            default: after validation when it runs once per epoch, else at the training epoch end.
        enable_version_counter: add ``-v1``, ``-v2``, ... instead of replacing a file of the same name.
        async_save: (stepstone extension) save in the background: training pauses only while the state is
            copied into reusable host buffers. ``best_model_path``, ``best_k_models``, ``last`` and deletions
            change only once the file is committed; a failed save is raised at the next save or when ``fit``
            ends. None (default): follow the Trainer (``plugins=[AsyncCheckpointIO()]``).
        max_staging_bytes: (stepstone extension) for asynchronous saves, the most bytes of host buffers
            (None: one full copy of the state). Storages over the budget are written before training goes on.
        on_save_error: (stepstone extension) what a failed save (disk full, I/O error) does: ``"raise"``
            (default) stops training with the error; ``"warn"`` warns loudly and trains on. Either way the
            temporary file is removed, earlier checkpoints and the index are untouched, and the callback's
            state (best, top-k, last) still names only committed files.

    Raises:
        MisconfigurationException: for invalid arguments or combinations, naming them.
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1
    _monitors_metrics = True

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        async_save: bool | None = None,
        on_save_error: Literal["raise", "warn"] = "raise",
        max_staging_bytes: int | None = None,
    ) -> None:
        if on_save_error not in ("raise", "warn"):
            raise MisconfigurationException(
                f"ModelCheckpoint(on_save_error={on_save_error!r}) is invalid; pass 'raise' (stop training on a "
                "failed save) or 'warn' (warn and train on)."
            )
        self.on_save_error = on_save_error
        if async_save is not None and not isinstance(async_save, bool):
            raise MisconfigurationException(
                f"ModelCheckpoint(async_save={async_save!r}) is invalid; pass True, False or None (follow the Trainer)."
            )
        self.async_save = async_save
        if max_staging_bytes is not None and (type(max_staging_bytes) is not int or max_staging_bytes < 0):
            raise MisconfigurationException(
                f"ModelCheckpoint(max_staging_bytes={max_staging_bytes!r}) is invalid; pass an int >= 0 (bytes) or None."
            )
        self.max_staging_bytes = max_staging_bytes
        validate_arguments(
            save_top_k, monitor, mode, save_last, every_n_train_steps, every_n_epochs, train_time_interval
        )
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        self._every_n_train_steps = every_n_train_steps or 0
        self._train_time_interval = train_time_interval
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs = 1
        self._every_n_epochs = every_n_epochs or 0
        self.dirpath: str | None = resolve_dirpath(dirpath)
        self.filename = filename
        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.best_model_score: torch.Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self.current_score: torch.Tensor | None = None
        self._last_global_step_saved = 0
        self._last_time_checked: float | None = None
        self._last_checkpoint_saved = ""
        self._last_step_written: int | None = None  # global_step of the last file this run wrote
        self._held_step: int | None = None  # see ``_hold_restored_step``
        self._defer_save_until_validation = False
        self._warned: set[str] = set()
        self._deferred_deletions: list[str] = []  # owed deletions not done yet (see ``_delete``)
        self._writing: TriggerPlan | None = None  # the plan whose files are being built (see ``state_dict``)
        self._pending: PendingSave | None = None  # the async save in flight and what to do once it commits

    @property
    def state_key(self) -> str:
        """Lightning's key: several ModelCheckpoints with different settings keep separate state."""
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self) -> int:
        """The epoch interval (0 when another trigger is used)."""
        return self._every_n_epochs

    # --- hooks --------------------------------------------------------------------------------------
    def setup(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, stage: str) -> None:
        """Check the file names, resolve ``dirpath`` and clear temporaries that a crashed run left behind."""
        if stage == "fit":  # before anything is written
            names = {"filename": self.filename, "CHECKPOINT_NAME_LAST": self.CHECKPOINT_NAME_LAST}
            check_names(names, self.FILE_EXTENSION)
        if self._uses_async(trainer) and _writes_directories(trainer):
            raise MisconfigurationException(
                "Asynchronous checkpointing (ModelCheckpoint(async_save=True) or AsyncCheckpointIO) cannot write "
                "FSDPStrategy(state_dict_type='sharded') checkpoints: every rank writes its shards in the "
                "save. Use async_save=False, or state_dict_type='full' (rank 0 then writes in the background)."
            )
        if self.dirpath is None:
            self.dirpath = default_dirpath(trainer)
        elif self.dirpath == "":
            # Lightning writes bare names into the working directory; the same folder, named absolutely
            # (the run index needs a folder path).
            self.dirpath = os.path.realpath(os.curdir)
        # Rank 0's folder everywhere: a logger's next version number may differ between ranks that look at
        # the disk at different moments (Lightning broadcasts it too).
        self.dirpath = broadcast_object(self.dirpath)
        if self.save_last == "link" and not is_local(self.dirpath):
            raise MisconfigurationException(
                f"ModelCheckpoint(save_last='link') needs a local dirpath (symlinks), got {self.dirpath!r}; use "
                "save_last=True for remote storage."
            )
        if stage != "fit":
            return
        from stepstone.checkpoint import sweep_stale_temps

        if is_folder(self.dirpath):
            sweep_stale_temps(self.dirpath)  # local only: a remote object is whole or absent
            resuming = trainer.checkpoint_port.resume_requested
            if (
                self.save_top_k != 0
                and trainer.is_global_zero
                and not resuming
                and has_checkpoints(self.dirpath)
            ):
                warnings.warn(
                    f"Checkpoint directory {self.dirpath} exists and is not empty; files of an earlier run are kept "
                    "and new names get -vN suffixes when they would clash.",
                    UserWarning,
                    stacklevel=2,
                )

    def on_train_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the clock of ``train_time_interval``; finish deletions the resumed checkpoint owed.

        A run resumed from a checkpoint written in ``on_train_batch_end``: Lightning's resume skips that batch's
        validation and epoch end, so no ModelCheckpoint saves at the restored step. stepstone runs them (an exact
        resume), yet likewise writes no second file for that step (the interrupted run may have written it).
        """
        self._last_time_checked = time.monotonic()
        if trainer.fit_loop.resumed_after_batch_end:
            self._hold_restored_step(trainer.global_step)
        if self._deferred_deletions:
            self._delete(trainer, [])

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

    def on_train_epoch_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Epoch trigger when checks run at the end of the training epoch."""
        self._poll_pending(trainer)
        if self._should_skip(trainer) or not self._should_save_on_train_epoch_end(trainer):
            return
        self._epoch_end_check(trainer)

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

    # --- decisions ----------------------------------------------------------------------------------
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

    def check_monitor_top_k(self, trainer: stepstone.Trainer, current: torch.Tensor | None = None) -> bool:
        """Whether ``current`` earns a place in the top k (strictly better than the k-th; ties never enter).

        Args:
            trainer: the Trainer (Lightning's signature).
            current: the monitored value (None: not logged).

        Returns:
            Whether a top-k file is saved for it.
        """
        return enters(self._top_k_state(), current, self.save_top_k, self.mode)

    # --- saving -------------------------------------------------------------------------------------
    def _save_on_trigger(
        self,
        trainer: stepstone.Trainer,
        candidates: dict[str, torch.Tensor],
        top_k: bool = True,
        lightning_saves_last: bool = False,
    ) -> None:
        """One trigger: plan it (top k, ``last``, deletions), write the plan's files, adopt the plan once committed.

        The callback's state is replaced by the plan's only after the commit (an asynchronous save: when the
        port completes its handle), so a failed save leaves it untouched.
        """
        if trainer.world_size > 1:
            # Under DDP every decision below (top k, file names, version suffixes, deletions, last) is taken
            # from rank 0's metrics, so every rank holds the same state and names the one file rank 0 writes.
            # Named, so that a rank saving something else (a misplaced trainer.save_checkpoint) fails at once.
            candidates = exchange(
                "ModelCheckpoint trigger", {name: value.detach().cpu() for name, value in candidates.items()}
            )
        if self._pending is not None:
            trainer.checkpoint_port.wait_turn()  # backpressure, reported when it stalls training
        self._complete_pending(trainer)  # plan from the state of the committed files
        state = self._top_k_state()
        plan = plan_trigger(
            state,
            self.last_model_path,
            self._plan_top_k(trainer, candidates, state) if top_k else None,
            self._versioned_path(candidates, self.last_model_path, self.CHECKPOINT_NAME_LAST)
            if self.save_last
            else None,
        )
        if plan is None:
            return
        self._writing = plan  # what ``state_dict`` reports while the plan's files are built
        try:
            handle, saves = self._write(trainer, plan, lightning_saves_last)
        except BaseException as error:
            if not tolerate(trainer, self, error):
                raise
            return
        finally:
            self._writing = None
        if handle is not None:
            self._pending = PendingSave(handle, plan.top_k_path or plan.last_path, plan)
            return
        self._commit(trainer, plan, saves)

    def _plan_top_k(
        self, trainer: stepstone.Trainer, candidates: dict[str, torch.Tensor], state: TopKState
    ) -> TopKPlan | None:
        if self.save_top_k == 0:
            return None
        if self.monitor is None:
            return plan_newest(
                state, self.save_top_k, lambda previous: self._versioned_path(candidates, previous)
            )
        if self.monitor not in candidates:
            self._missing_monitor(trainer, candidates)
            return None
        current = candidates[self.monitor]
        k = len(state.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        plan = plan_top_k(
            state,
            current,
            self.save_top_k,
            self.mode,
            lambda replaced: self._versioned_path(candidates, replaced),
        )
        if self.verbose:
            at = f"Epoch {trainer.current_epoch:d}, global step {trainer.global_step:d}: {self.monitor!r}"
            if plan is None:
                self._info(f"{at} was not in top {self.save_top_k}")
            else:
                best = plan.state.best_model_score
                assert best is not None
                self._info(
                    f"{at} reached {current.item():0.5f} (best {best.item():0.5f}), saving model to "
                    f"{plan.filepath!r} as top {k}"
                )
        return plan

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

    def _top_k_state(self) -> TopKState:
        return TopKState(
            tuple(self.best_k_models.items()),
            self.kth_best_model_path,
            self.kth_value,
            self.best_model_path,
            self.best_model_score,
            self.current_score,
        )

    def _write(
        self, trainer: stepstone.Trainer, plan: TriggerPlan, lightning_saves_last: bool
    ) -> tuple[SaveHandle | None, int]:
        """Write the plan's files; returns the asynchronous save's handle (None: all committed) and the count."""
        written, last = plan.top_k_path, plan.last_path
        handle = self._save_checkpoint(trainer, written, publish_as=last or None) if written else None
        saves = int(bool(written))
        if not last:
            return handle, saves
        # Lightning counts a step as saved (no second trigger at it) only for files it writes; where it writes
        # no last file at this trigger (epoch-end checks without a top-k save) or links the old one, this
        # refreshed last leaves the count as it was.
        lightning_links = (
            self.save_last == "link" and bool(self._last_checkpoint_saved) and self.save_top_k != 0
        )
        counts = written or (lightning_saves_last and not lightning_links)
        step_saved = self._last_global_step_saved
        from stepstone.checkpoint import copy_file, link_file

        if written and handle is not None:
            pass  # the writer thread publishes the committed top-k file as ``last`` (``publish_as``)
        elif written and self.save_last is True and _writes_directories(trainer):
            self._save_checkpoint(trainer, last)  # a sharded directory is written again, not copied
            saves += 1
        elif written:
            if trainer.is_global_zero:  # one writer; the others wait for the file below
                (link_file if self.save_last == "link" else copy_file)(written, last)  # serialized once
            barrier(f"save last {last}")
        else:
            handle = self._save_checkpoint(trainer, last)
            saves += 1
            if not counts:
                self._last_global_step_saved = step_saved
        self._last_checkpoint_saved = written or last
        self._last_step_written = trainer.global_step
        return handle, saves

    def _versioned_path(
        self, candidates: dict[str, torch.Tensor], replaced: str | None, template: str | None = None
    ) -> str:
        filepath = self.format_checkpoint_name(candidates, template)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while filepath != replaced and exists(filepath):
                filepath = self.format_checkpoint_name(candidates, template, ver=version)
                version += 1
            # The ranks may not share a view of the disk: rank 0 (the writer) decides the suffix.
            filepath = exchange("ModelCheckpoint file name", filepath)
        return filepath

    def _uses_async(self, trainer: stepstone.Trainer) -> bool:
        return self.async_save if self.async_save is not None else trainer.checkpoint_port.asynchronous

    def _save_checkpoint(
        self, trainer: stepstone.Trainer, filepath: str, publish_as: str | None = None
    ) -> SaveHandle | None:
        """Save ``filepath``; returns the handle of an asynchronous save, None once a synchronous one committed."""
        if self._uses_async(trainer):
            # The port calls ``_settle`` before the next asynchronous save is built and when fit ends; the
            # writer thread publishes the committed file as ``last`` (copied or linked).
            handle = trainer.checkpoint_port.save(
                filepath,
                self.save_weights_only,
                asynchronous=True,
                max_staging_bytes=self.max_staging_bytes,
                on_complete=lambda done: self._settle(trainer, done),
                publish_as=publish_as,
                publish_link=self.save_last == "link",
            )
            self._last_global_step_saved = trainer.global_step
            return handle
        # Under DDP: built on every rank, written once by rank 0, then a barrier (all ranks reach this save).
        trainer.save_checkpoint(filepath, self.save_weights_only).result()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        return None

    def _commit(self, trainer: stepstone.Trainer, plan: TriggerPlan, saves: int) -> None:
        """The plan's files are committed: adopt its state, tell the loggers, delete what it dropped."""
        state = plan.state
        self.best_k_models = state.models()
        self.kth_best_model_path, self.kth_value = state.kth_best_model_path, state.kth_value
        self.best_model_path, self.best_model_score = state.best_model_path, state.best_model_score
        self.current_score, self.last_model_path = state.current_score, plan.last_model_path
        for _ in range(saves):
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)
        self._delete(trainer, list(plan.dropped))

    def _poll_pending(self, trainer: stepstone.Trainer) -> None:
        # Apply a finished background save's bookkeeping promptly (deletions, last), without waiting. Not under
        # DDP: the ranks complete a save together, at the same points (the next trigger, the end of fit).
        if self._pending is not None and trainer.world_size == 1 and self._pending.handle.done():
            self._complete_pending(trainer)

    def _settle(self, trainer: stepstone.Trainer, handle: SaveHandle) -> None:
        # Called by the checkpoint port; the callback may have completed this save itself already.
        if self._pending is not None and self._pending.handle is handle:
            self._complete_pending(trainer)

    def _complete_pending(self, trainer: stepstone.Trainer) -> None:
        """Wait for the async save in flight; once committed, adopt its plan.

        Raises:
            Exception: the save's failure; the state then still names the earlier, committed files.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.handle.result()
            failure = None
        except BaseException as error:
            failure = error
        failure = agree_on_outcome(trainer, pending.filepath, failure)
        if failure is not None:
            if tolerate(trainer, self, failure, pending.filepath):
                return
            raise failure
        self._last_checkpoint_saved = pending.filepath
        self._commit(trainer, pending.plan, 1)

    def _delete(self, trainer: stepstone.Trainer, paths: list[str]) -> None:
        """Delete the files a committed trigger dropped, keeping the one the run resumed from for later.

        A kill between a commit and these deletions would leave files no state tracks, forever. So every
        checkpoint records the deletions its trigger still owes (``pending_deletions`` in its callback state),
        and a run resumed from it finishes them in ``on_train_start``. The resume source is never deleted by
        its own run; it stays owed, and the next run deletes it.
        """
        owed = []
        for path in dict.fromkeys([*self._deferred_deletions, *paths]):
            if self._should_remove(trainer, path):
                self._remove_checkpoint(trainer, path)
            elif self._is_resume_source(trainer, path) and not self._tracks(path):
                owed.append(path)
        self._deferred_deletions = owed

    def _tracks(self, path: str) -> bool:
        return path in (self.best_model_path, self.last_model_path) or path in self.best_k_models

    @staticmethod
    def _is_resume_source(trainer: stepstone.Trainer, path: str) -> bool:
        resumed_from = trainer.ckpt_path
        return resumed_from is not None and os.path.abspath(resumed_from) == os.path.abspath(path)

    def _should_remove(self, trainer: stepstone.Trainer, path: str) -> bool:
        if self._tracks(path) or self._is_resume_source(trainer, path):
            return False
        if is_local(path) and self.dirpath is not None:
            return os.path.dirname(os.path.abspath(path)).startswith(os.path.abspath(self.dirpath))
        return True

    def _remove_checkpoint(self, trainer: stepstone.Trainer, path: str) -> None:
        # Rank 0 deletes; asynchronous saves also delete off the training thread, like the write.
        trainer.checkpoint_port.remove(path, background=self._uses_async(trainer))

    # --- names, state, export -----------------------------------------------------------------------
    def format_checkpoint_name(
        self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None, prefix: str = ""
    ) -> str:
        """The path of a checkpoint for these metrics (Lightning's rules, see :mod:`checkpoint_naming`).

        Args:
            metrics: metric values used by the template.
            filename: a template overriding :attr:`filename`.
            ver: a version number, appended as ``-v{ver}``.
            prefix: a prefix joined with ``-``.

        Returns:
            ``dirpath/<name>[-vN].ckpt``.
        """
        name = format_name(
            filename or self.filename,
            metrics,
            auto_insert_metric_name=self.auto_insert_metric_name,
            equals=self.CHECKPOINT_EQUALS_CHAR,
            join=self.CHECKPOINT_JOIN_CHAR,
            prefix=prefix,
        )
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        name = f"{name}{self.FILE_EXTENSION}"
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def state_dict(self) -> dict[str, Any]:
        """The top-k bookkeeping, stored in every checkpoint.

        While a trigger's files are built, the state its plan leads to (so a resumed run continues that top k)
        and the deletions it owes (finished by a resumed run when a crash comes first).
        """
        plan = self._writing
        state = plan.state if plan is not None else self._top_k_state()
        return {
            "monitor": self.monitor,
            "best_model_score": state.best_model_score,
            "best_model_path": state.best_model_path,
            "current_score": state.current_score,
            "dirpath": self.dirpath,
            "best_k_models": state.models(),
            "kth_best_model_path": state.kth_best_model_path,
            "kth_value": state.kth_value,
            "last_model_path": plan.last_model_path if plan is not None else self.last_model_path,
            # stepstone extension: deletions this checkpoint's trigger owes (finished by a resumed run).
            "pending_deletions": list(
                dict.fromkeys([*self._deferred_deletions, *(plan.dropped if plan is not None else ())])
            ),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the bookkeeping; if ``dirpath`` changed, only ``best_model_path`` (Lightning's rule)."""
        saved_dir = state_dict.get("dirpath", self.dirpath)
        if saved_dir == self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict["kth_best_model_path"]
            self.kth_value = state_dict["kth_value"]
            self.best_k_models = dict(state_dict["best_k_models"])
            self.last_model_path = state_dict["last_model_path"]
            self.current_score = state_dict.get("current_score")
            self._deferred_deletions = list(state_dict.get("pending_deletions", []))
        else:
            warnings.warn(
                f"The dirpath has changed from {saved_dir!r} to {self.dirpath!r}, therefore best_model_score, "
                "kth_best_model_path, kth_value, last_model_path and best_k_models won't be reloaded. Only "
                "best_model_path will be reloaded.",
                UserWarning,
                stacklevel=2,
            )
        self.best_model_path = state_dict["best_model_path"]

    def to_yaml(self, filepath: str | os.PathLike[str] | None = None) -> None:
        """Write ``best_k_models`` (path -> score) as YAML, by default to ``dirpath/best_k_models.yaml``."""
        target = (
            os.fspath(filepath)
            if filepath is not None
            else os.path.join(self.dirpath or ".", "best_k_models.yaml")
        )
        with open(target, "w") as f:
            yaml.safe_dump({k: float(v.item()) for k, v in self.best_k_models.items()}, f)

    def _info(self, message: str) -> None:
        print(message, file=sys.stderr)


def _writes_directories(trainer: stepstone.Trainer) -> bool:
    return trainer.checkpoint_port.writes_directories
