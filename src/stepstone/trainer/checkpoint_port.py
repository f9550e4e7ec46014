"""The Trainer's one public door to checkpoint files (the role of Lightning's ``strategy.checkpoint_io``).

Every save of a Trainer goes through here, synchronous or asynchronous, by ``trainer.save_checkpoint`` or a
callback: the checkpoint dict is built on every rank (its hooks and the gathers of a "full" FSDP state run
everywhere), rank 0 writes it (every rank writes its shards of a sharded FSDP directory), and a
:class:`~stepstone.checkpoint.SaveHandle` reports the commit. A callback that saves asynchronously hands an
``on_complete`` function with its save; the port calls it with the handle on the training thread before the
next asynchronous save is built (so that file holds the callback's committed state) and when the run ends.
Callbacks therefore need no private attribute of the Trainer, and the Trainer calls no callback's private method.

Every write and deletion goes through the engine's run-directory object: one
:class:`~stepstone.checkpoint.CheckpointManager` per checkpoint folder (``port.manager(folder)``), all sharing the
Trainer's one :class:`~stepstone.checkpoint.SaveQueue` (``port.queue``: one save in flight, one host copy).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from stepstone.checkpoint import CheckpointManager, CheckpointRecord, SaveHandle, SaveQueue
from stepstone.checkpoint.writer import done_handle
from stepstone.errors import MisconfigurationException
from stepstone.strategies import is_fsdp

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["CheckpointPort", "OnComplete", "split_checkpoint_path"]

#: Called with the handle of an asynchronous save once the port settles it (see the module docstring).
OnComplete = Callable[[SaveHandle], None]


def split_checkpoint_path(path: str) -> tuple[str, str]:
    """The folder of a checkpoint path or URL and the checkpoint's name in it.

    Args:
        path: a local path (relative or absolute) or an fsspec URL.

    Returns:
        ``(folder, name)``; a bare local name is in ``"."``.

    Raises:
        MisconfigurationException: ``path`` ends with a separator (it names a folder, not a checkpoint).
    """
    if "://" in path or "::" in path:
        folder, _, name = path.rpartition("/")
        folder = folder + "/" if folder.endswith(":/") else folder  # "memory://x.ckpt": the root
    else:
        folder, name = os.path.split(path)
        folder = folder or "."
    if not name:
        raise MisconfigurationException(f"path={path!r} names a directory; pass a checkpoint file path")
    return folder, name


def _scalar_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.item()) for k, v in metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1}


class CheckpointPort:
    """Saves, removes and settles the checkpoints of one Trainer (``trainer.checkpoint_port``).

    Args:
        trainer: the Trainer it serves.
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self._completions: list[tuple[SaveHandle, OnComplete]] = []
        self._queue = SaveQueue()
        self._managers: dict[str, CheckpointManager] = {}

    @property
    def queue(self) -> SaveQueue:
        """The Trainer's queue of background saves and deletions (its writer and staging buffers, once used)."""
        return self._queue

    def manager(self, directory: str, storage_options: dict[str, Any] | None = None) -> CheckpointManager:
        """The run-directory object through which the Trainer saves into and deletes from ``directory``.

        Args:
            directory: the checkpoint folder (local path or URL).
            storage_options: fsspec options; a manager with options is made for the call, not kept.

        Returns:
            The folder's :class:`~stepstone.checkpoint.CheckpointManager` (sharing ``queue``), kept for the
            Trainer's life.
        """
        if storage_options is not None:
            return CheckpointManager(directory, storage_options=storage_options, queue=self._queue)
        found = self._managers.get(directory)
        if found is None:
            found = self._managers[directory] = CheckpointManager(directory, queue=self._queue)
        return found

    def metadata(self) -> dict[str, Any]:
        """The trailer metadata of a checkpoint of the current state.

        Returns:
            ``{"step": global_step, "epoch": current_epoch, "metrics": scalar callback_metrics}``.
        """
        trainer = self._trainer
        return {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metrics": _scalar_metrics(trainer.callback_metrics),
        }

    @property
    def asynchronous(self) -> bool:
        """Whether the Trainer saves in the background by default (``plugins=[AsyncCheckpointIO()]``)."""
        return self._trainer._async_checkpointing

    @property
    def writes_directories(self) -> bool:
        """Whether a checkpoint is a sharded directory (``FSDPStrategy(state_dict_type='sharded')``)."""
        strategy = self._trainer._strategy
        return is_fsdp(strategy) and strategy.state_dict_type == "sharded"

    @property
    def resume_requested(self) -> bool:
        """Whether the current ``fit`` was given a ``ckpt_path`` (set before the ``setup`` hooks run)."""
        return self._trainer._resume_requested

    def save(
        self,
        path: str,
        weights_only: bool = False,
        storage_options: Any = None,
        asynchronous: bool = False,
        max_staging_bytes: int | None = None,
        on_complete: OnComplete | None = None,
        publish_as: str | None = None,
        publish_link: bool = False,
        marks: dict[str, Any] | None = None,
    ) -> SaveHandle:
        """Build the checkpoint dict on every rank and commit it to ``path`` (rank 0's path under DDP).

        Args:
            path: the file (local path or fsspec URL), or the directory of a sharded checkpoint.
            weights_only: leave out optimizer, scheduler and callback state.
            storage_options: options for the fsspec filesystem of ``path`` (synchronous saves).
            asynchronous: return once the state is copied into host buffers; the write runs in the background.
            max_staging_bytes: for an asynchronous save, the most bytes of host buffers (None: one full copy).
            on_complete: for an asynchronous save, called with its handle on the training thread when the port
                settles it (before the next asynchronous save is built, and at the end of the run).
            publish_as: once the file is committed also make it available under this path (a durable copy, or
                a symlink with ``publish_link``), before the handle completes; for an asynchronous save on the
                writer thread, so the training thread never copies a checkpoint. Not for a sharded directory.
            publish_link: link instead of copy.
            marks: entries added to the file's ``checkpoint["stepstone"]`` dict, e.g.
                ``{"saved_on_exception": {...}}`` (shown by ``stepstone ckpt show``); plain values only.

        Returns:
            The save's handle: already done for a synchronous save (its result is the record on rank 0, None
            on the other ranks).

        Raises:
            MisconfigurationException: no model is attached.
            Exception: a synchronous save's failure, or a settled earlier save's failure (see ``complete``).
        """
        from stepstone.trainer.distributed import save_on_all_ranks

        if self._trainer.model is None:
            raise MisconfigurationException(
                "trainer.save_checkpoint() needs a model: call fit/validate/test/predict first (they attach it)."
            )
        if publish_as is not None and "/" not in publish_as and os.sep not in publish_as:
            # A bare name is in the working directory (as a save path is), not in the save's folder.
            publish_as = os.path.abspath(publish_as)
        if not asynchronous:
            record = save_on_all_ranks(
                self._trainer, path, weights_only, storage_options, marks, publish_as, publish_link
            )
            return done_handle(record)
        handle = self._save_async(path, weights_only, max_staging_bytes, publish_as, publish_link, marks)
        if on_complete is not None:
            self._completions.append((handle, on_complete))
        return handle

    def write(
        self,
        path: str,
        weights_only: bool,
        storage_options: Any = None,
        marks: dict[str, Any] | None = None,
        publish_as: str | None = None,
        publish_link: bool = False,
    ) -> CheckpointRecord | None:
        """Build the checkpoint dict on this rank and commit it now, by the rank rules (no barrier).

        ``save_on_all_ranks`` wraps it with the ranks' agreement; call that (or ``save``) instead.

        Args:
            path: the file, or the directory of a sharded checkpoint.
            weights_only: leave out optimizer, scheduler and callback state.
            storage_options: options for the fsspec filesystem of ``path``.
            marks: entries added to the file's ``checkpoint["stepstone"]`` dict.
            publish_as: once committed, also a copy (or link) there, made by rank 0 (files only).
            publish_link: link instead of copy.

        Returns:
            The committed checkpoint's record on rank 0, None on the other ranks.
        """
        from stepstone.trainer.checkpoint_io import dump_checkpoint

        trainer = self._trainer
        # Every rank builds it: hooks such as on_save_checkpoint run everywhere, as in Lightning, and the
        # gathers of a "full" FSDP state dict take place.
        checkpoint = dump_checkpoint(trainer, weights_only, marks)
        folder, name = split_checkpoint_path(path)
        if self.writes_directories:  # every rank writes its own shards; rank 0 commits the directory
            manager = self.manager(folder)
            record = manager.save_as(name, checkpoint, metadata=self.metadata(), sharded=True).result()
            return record if trainer.is_global_zero else None
        if not trainer.is_global_zero:
            return None
        manager = self.manager(folder, storage_options)
        return manager.save_as(
            name,
            checkpoint,
            metadata=self.metadata(),
            asynchronous=False,
            publish_as=publish_as,
            publish_link=publish_link,
        ).result()

    def _save_async(
        self,
        path: str,
        weights_only: bool,
        max_staging_bytes: int | None,
        publish_as: str | None,
        publish_link: bool,
        marks: dict[str, Any] | None,
    ) -> SaveHandle:
        from stepstone.trainer.checkpoint_io import dump_checkpoint

        self.complete()  # the new file holds every callback's committed state
        checkpoint = dump_checkpoint(
            self._trainer, weights_only, marks
        )  # every rank: it gathers the ranks' RNG states
        if not self._trainer.is_global_zero:
            return done_handle(None)  # under DDP only rank 0 writes
        self._queue.max_staging_bytes = max_staging_bytes
        folder, name = split_checkpoint_path(path)
        return self.manager(folder).save_as(
            name,
            checkpoint,
            metadata=self.metadata(),
            asynchronous=True,
            publish_as=publish_as,
            publish_link=publish_link,
        )

    def wait_turn(self) -> None:
        """Backpressure before a new asynchronous save: wait for the one in flight, reporting a long wait."""
        self._queue.wait_turn()

    def complete(self) -> None:
        """Settle the asynchronous saves handed with an ``on_complete``: call each with its handle, in order.

        Raises:
            Exception: the first ``on_complete`` failure (the saves after it stay to be settled later).
        """
        while self._completions:
            handle, on_complete = self._completions.pop(0)
            on_complete(handle)

    def remove(self, path: str, background: bool = False) -> None:
        """Delete a committed checkpoint (a file or a sharded directory) on rank 0; the other ranks return.

        Args:
            path: the checkpoint's path.
            background: delete a local file on a background thread (a large unlink stalls the training step);
                a failure is raised by a later save or removal, or when ``fit`` ends.
        """
        if not self._trainer.is_global_zero:
            return
        folder, name = split_checkpoint_path(path)
        self.manager(folder).remove(name, background=background)  # the engine's one deletion, every kind

    def finish(self) -> BaseException | None:
        """At the end of a run: settle every asynchronous save, join the writer, free the buffers.

        Returns:
            The first failure met (every save is still settled), or None.
        """
        failure: BaseException | None = None
        while self._completions:
            try:
                self.complete()
            except BaseException as error:  # returned to the caller, which raises it
                failure = failure or error
        later = self._queue.finish()
        return failure or later
