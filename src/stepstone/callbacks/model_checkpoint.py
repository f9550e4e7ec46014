"""ModelCheckpoint: decides *when* to checkpoint and *which* files to keep; the engine writes and deletes.

Lightning 2.x semantics (names, defaults, file names, top-k rules, ``state_key``), with stricter guarantees:
a save is committed before any bookkeeping points at it and before anything older is deleted; a failed save
leaves ``best_model_path``/``best_k_models``/``last_model_path`` as they were; ``last`` holds the newest state
at every trigger and is never serialized twice (the committed top-k file is copied or linked); the file a run
resumed from is never deleted.

Each trigger is one pure plan (``checkpoint_plan``: the files to write, the state afterwards, the files it
drops), adopted only once its files are committed (``checkpoint_writes``); the hooks that fire triggers are in
``checkpoint_triggers``.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from datetime import timedelta
from typing import Any, Literal

import torch
import yaml
from typing_extensions import override

import stepstone
from stepstone.callbacks.checkpoint_naming import check_names, format_name
from stepstone.callbacks.checkpoint_on_exception import check_argument, save_on_exception
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
from stepstone.callbacks.checkpoint_save_errors import tolerate
from stepstone.callbacks.checkpoint_settings import (
    exists,
    prepare_folder,
    resolve_dirpath,
    resolve_folder,
    validate_arguments,
    validate_extensions,
)
from stepstone.callbacks.checkpoint_writes import CheckpointWrites
from stepstone.errors import MisconfigurationException
from stepstone.strategies.collectives import exchange

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(CheckpointWrites):
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
        save_on_exception: when an exception stops the Trainer, save a checkpoint under the usual name (marked
            ``saved_on_exception``, outside the top k) and refresh ``last``; the error is re-raised. See
            :mod:`~stepstone.callbacks.checkpoint_on_exception`.
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
        save_on_exception: bool = False,
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
        validate_arguments(
            save_top_k, monitor, mode, save_last, every_n_train_steps, every_n_epochs, train_time_interval
        )
        validate_extensions(async_save, on_save_error, max_staging_bytes)
        self.on_save_error = on_save_error
        self.async_save = async_save
        self.max_staging_bytes = max_staging_bytes
        self.save_on_exception = check_argument(save_on_exception)
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
    @override
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
    @override
    def setup(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, stage: str) -> None:
        """Check the file names, resolve ``dirpath`` and clear temporaries that a crashed run left behind."""
        if stage == "fit":  # before anything is written
            names = {"filename": self.filename, "CHECKPOINT_NAME_LAST": self.CHECKPOINT_NAME_LAST}
            check_names(names, self.FILE_EXTENSION)
        if self._uses_async(trainer) and trainer.checkpoint_port.writes_directories:
            raise MisconfigurationException(
                "Asynchronous checkpointing (ModelCheckpoint(async_save=True) or AsyncCheckpointIO) cannot write "
                "FSDPStrategy(state_dict_type='sharded') checkpoints: every rank writes its shards in the "
                "save. Use async_save=False, or state_dict_type='full' (rank 0 then writes in the background)."
            )
        self.dirpath = resolve_folder(trainer, self.dirpath, self.save_last)
        if stage == "fit":
            prepare_folder(trainer, self.dirpath, self.save_top_k)

    @override
    def on_train_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the trigger clocks; finish the deletions the resumed checkpoint owed."""
        super().on_train_start(trainer, pl_module)
        if self._deferred_deletions:
            self._delete(trainer, [])

    @override
    def on_exception(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, exception: BaseException
    ) -> None:
        """With ``save_on_exception``, save the current state; a failed save is reported, never raised."""
        save_on_exception(self, trainer, exception)

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
    @override
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

    @override
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

    @override
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
        default = os.path.join(self.dirpath or ".", "best_k_models.yaml")
        target = os.fspath(filepath) if filepath is not None else default
        with open(target, "w") as f:
            yaml.safe_dump({k: float(v.item()) for k, v in self.best_k_models.items()}, f)

    def _info(self, message: str) -> None:
        print(message, file=sys.stderr)
