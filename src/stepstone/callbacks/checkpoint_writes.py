"""How ModelCheckpoint carries out a trigger's plan: writes its files, adopts the plan once they are committed.

A synchronous save is committed when ``trainer.save_checkpoint`` returns, and the plan is adopted at once. An
asynchronous save returns a handle; the checkpoint port calls back (``_settle``) before the next asynchronous
save is built and when ``fit`` ends, and the plan is adopted then -- until that moment the callback still names
the earlier, committed files, and a failed save leaves them so. Deletions come last, after the adoption.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from typing_extensions import override

import stepstone
from stepstone.callbacks.checkpoint_deletions import sort_deletions
from stepstone.callbacks.checkpoint_pending import PendingSave
from stepstone.callbacks.checkpoint_plan import TopKState, TriggerPlan
from stepstone.callbacks.checkpoint_save_errors import agree_on_outcome, tolerate
from stepstone.callbacks.checkpoint_triggers import CheckpointTriggers
from stepstone.strategies.collectives import barrier

if TYPE_CHECKING:
    from stepstone.checkpoint import SaveHandle

__all__ = ["CheckpointWrites"]


class CheckpointWrites(CheckpointTriggers):
    """The writing side of :class:`~stepstone.callbacks.ModelCheckpoint` (which sets the attributes below)."""

    dirpath: str | None
    save_weights_only: bool
    async_save: bool | None
    max_staging_bytes: int | None
    on_save_error: Literal["raise", "warn"]
    best_k_models: dict[str, torch.Tensor]
    kth_best_model_path: str
    kth_value: torch.Tensor
    best_model_path: str
    best_model_score: torch.Tensor | None
    current_score: torch.Tensor | None
    last_model_path: str
    _deferred_deletions: list[str]
    _pending: PendingSave | None

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
        # The engine publishes the committed top-k file as ``last`` (copied or linked, serialized once) right
        # after its commit, on the writer thread for a background save; a sharded directory is handled below.
        publish = last if written and last and not trainer.checkpoint_port.writes_directories else ""
        handle = self._save_checkpoint(trainer, written, publish_as=publish or None) if written else None
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
        if publish:
            pass  # published with the save (``publish_as``)
        elif written and self.save_last is True:
            self._save_checkpoint(trainer, last)  # a sharded directory is written again, not copied
            saves += 1
        elif written:
            from stepstone.checkpoint import link_file

            if trainer.is_global_zero:  # a sharded directory linked; the others wait for the link below
                link_file(written, last)
            barrier(f"save last {last}")
        else:
            handle = self._save_checkpoint(trainer, last)
            saves += 1
            if not counts:
                self._last_global_step_saved = step_saved
        self._last_checkpoint_saved = written or last
        self._last_step_written = trainer.global_step
        return handle, saves

    def _uses_async(self, trainer: stepstone.Trainer) -> bool:
        return self.async_save if self.async_save is not None else trainer.checkpoint_port.asynchronous

    def _save_checkpoint(
        self, trainer: stepstone.Trainer, filepath: str, publish_as: str | None = None
    ) -> SaveHandle | None:
        """Save ``filepath`` (and publish it as ``publish_as``); returns an asynchronous save's handle, else None."""
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
        # Under DDP: built on every rank, written (and published) once by rank 0, then a barrier (all ranks
        # reach this save).
        trainer.checkpoint_port.save(
            filepath, self.save_weights_only, publish_as=publish_as, publish_link=self.save_last == "link"
        ).result()
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

    @override
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
        """Delete the files a committed trigger dropped; the resume source stays owed (see ``sort_deletions``)."""
        tracked = {self.best_model_path, self.last_model_path, *self.best_k_models}
        delete, self._deferred_deletions = sort_deletions(
            [*self._deferred_deletions, *paths], tracked, trainer.ckpt_path, self.dirpath
        )
        for path in delete:
            # Rank 0 deletes; asynchronous saves also delete off the training thread, like the write.
            trainer.checkpoint_port.remove(path, background=self._uses_async(trainer))
