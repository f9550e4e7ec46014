"""CheckpointManager: the one object that saves, publishes, deletes, lists and restores a run directory's checkpoints.

It composes the engine: ``files.save_file`` (or ``sharded.save_sharded``) writes and commits one checkpoint,
``RunIndex`` lists the directory (from the files' trailers), the retention policy decides what to keep, and
``kinds.remove_checkpoint`` deletes the rest -- only after the new checkpoint is committed. Files stepstone did
not write (no trailer) are never deleted by retention. A :class:`SaveQueue` runs asynchronous saves and
background deletions; managers sharing one (the Trainer's, one per directory) keep one save in flight. Restoring
"latest" or "best" verifies the candidate while loading it and falls back to the next candidate, with a warning,
when it is corrupt.

``restore("best")`` ranks by ``best_metric``/``best_mode`` if given, else by the metric of the
``KeepBest`` policy in ``retention`` (alone or inside ``AnyOf``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import torch.distributed as dist

from stepstone.checkpoint import files
from stepstone.checkpoint.filename_template import check_checkpoint_name, check_filename, fill_filename
from stepstone.checkpoint.files import sweep_stale_temps
from stepstone.checkpoint.format import estimate_size
from stepstone.checkpoint.index import RunIndex
from stepstone.checkpoint.kinds import remove_checkpoint
from stepstone.checkpoint.live import LiveGate
from stepstone.checkpoint.loading import MapLocation
from stepstone.checkpoint.publishing import AfterCommit, publisher
from stepstone.checkpoint.record import CheckpointRecord, normalize_metadata
from stepstone.checkpoint.restore_choice import load_first_valid, restore_candidates
from stepstone.checkpoint.retention import KeepAll, KeepBest, RetentionPolicy
from stepstone.checkpoint.save_queue import SaveQueue, queue_for_manager
from stepstone.checkpoint.storage import split_url
from stepstone.checkpoint.writer import SaveHandle, done_handle
from stepstone.errors import (
    CheckpointError,
    MisconfigurationException,
)

__all__ = ["CheckpointManager"]


def _sweeps_here() -> bool:
    # Under torch.distributed only global rank 0 sweeps a directory the ranks may share.
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class CheckpointManager:
    """Saves, publishes, deletes, lists and restores the checkpoints of one run directory.

    Args:
        directory: the checkpoint directory (local path or URL); created on first save.
        retention: a policy (``KeepLatest(3)``, ``KeepBest(2, "val_loss")``, ``AnyOf(...)``); None keeps all.
        filename: file name template of ``save`` with ``{step}`` and optionally ``{epoch}`` and metric names,
            ending in ``.ckpt``.
        storage_options: fsspec options for a remote directory.
        best_metric: metric ranking ``restore("best")`` (default: the ``KeepBest`` metric of ``retention``).
        best_mode: ``"min"`` or ``"max"`` for ``best_metric``.
        async_save: save in the background by default: a save returns once the state is copied into reusable
            host buffers (one copy of the state, kept between saves); the write, commit and retention run on
            a writer thread, one save at a time. ``wait``/``close`` wait for it.
        max_staging_bytes: with ``async_save`` and no ``queue``, the most bytes of host buffers (None: one full
            copy of the state). Storages over the budget are not copied: ``save`` returns once they are
            written to the file (the loop stalls for that part; the rest is written in the background).
        queue: a :class:`SaveQueue` shared with other managers (one save in flight and one copy of the state
            for all of them; its owner calls ``queue.finish()``). None: the manager makes its own when it
            first saves in the background, and ``close`` finishes it.

    Raises:
        MisconfigurationException: for an invalid argument.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        retention: RetentionPolicy | None = None,
        filename: str = "step={step}.ckpt",
        storage_options: dict[str, Any] | None = None,
        best_metric: str | None = None,
        best_mode: str = "min",
        async_save: bool = False,
        max_staging_bytes: int | None = None,
        queue: SaveQueue | None = None,
    ) -> None:
        if retention is not None and not callable(retention):
            raise MisconfigurationException(
                f"retention={retention!r} is not a policy; pass e.g. KeepLatest(3) or None"
            )
        self._retention: RetentionPolicy = retention if retention is not None else KeepAll()
        self._filename = check_filename(filename)
        self._best = KeepBest(1, best_metric, best_mode) if best_metric is not None else None
        if best_metric is None and best_mode != "min":
            raise MisconfigurationException(
                f"best_mode={best_mode!r} needs best_metric; pass best_metric='...'"
            )
        self._options = storage_options
        self._index = RunIndex(directory, storage_options=storage_options)
        self._storage, self._directory = split_url(os.fspath(directory), storage_options)
        if not isinstance(async_save, bool):
            raise MisconfigurationException(f"async_save must be True or False, got {async_save!r}")
        self._async = async_save
        self._queue = queue_for_manager(queue, async_save, max_staging_bytes)
        self._owns_queue = queue is None
        self._last: SaveHandle | None = None  # this manager's latest background save
        self._closed = False
        self.last_restored: CheckpointRecord | None = None
        if _sweeps_here():
            sweep_stale_temps(self._index.directory)

    @property
    def directory(self) -> str:
        """The checkpoint directory, as a path or URL."""
        return self._index.directory

    @property
    def queue(self) -> SaveQueue | None:
        """The queue of background saves and deletions (None until the first, for a synchronous manager)."""
        return self._queue

    def _path(self, name: str) -> str:
        return self._storage.join(self._directory, name)

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("CheckpointManager is closed; create a new one to save")

    def _own_queue(self) -> SaveQueue:
        if self._queue is None:
            self._queue = SaveQueue()
        return self._queue

    def save(
        self,
        step: int,
        state: dict[str, Any],
        metrics: Mapping[str, Any] | None = None,
        *,
        epoch: int | None = None,
    ) -> SaveHandle:
        """Save a checkpoint for ``step`` under the ``filename`` template, then apply retention.

        Args:
            step: the training step (int >= 0), unique within the directory.
            state: the checkpoint dict (weights_only-safe content).
            metrics: metric values stored in the trailer (used by ``KeepBest``).
            epoch: the epoch, stored with the checkpoint.

        Returns:
            The save's handle: finished for a synchronous manager; for ``async_save=True``, returned once
            the state is snapshotted (``handle.result()`` waits for the commit).

        Raises:
            CheckpointError: if the manager is closed or ``step`` already has a checkpoint.
            MisconfigurationException: for an invalid argument.
            TypeError: if ``state`` holds an object that is not weights_only-safe.
            OSError: if writing fails (nothing is committed and nothing is deleted); with ``async_save``,
                raised by the next ``save``/``wait``/``close`` unless ``handle.result()`` raised it first.
        """
        self._check_open()
        if self._async and self._queue is not None:
            self._queue.reserve()  # the previous save is committed before this one's name is checked
        meta = normalize_metadata({"step": step, "epoch": epoch, "metrics": metrics})
        if meta["step"] is None:
            raise MisconfigurationException("step must be an int >= 0, got None")
        name = fill_filename(self._filename, meta["step"], meta["epoch"], meta["metrics"])
        for record in self._index.entries():
            if record.step == step or record.name == name:
                raise CheckpointError(
                    f"A checkpoint for step {step} already exists in {self.directory!r} ({record.name!r}); each "
                    "step is saved once. Remove it first, or save into a new directory."
                )
        return self._save_file(name, state, meta, self._async, lambda record: self._apply_retention())

    def save_as(
        self,
        name: str,
        state: dict[str, Any],
        *,
        metadata: Mapping[str, Any] | None = None,
        asynchronous: bool | None = None,
        publish_as: str | None = None,
        publish_link: bool = False,
        sharded: bool = False,
    ) -> SaveHandle:
        """Save a checkpoint under an explicit name (one there is replaced atomically); no retention runs.

        The free-space preflight runs first, and a pending background deletion of the name is settled.

        Args:
            name: a file name (any, e.g. ``"last.ckpt"``) or, with ``sharded``, a directory name.
            state: the checkpoint dict (weights_only-safe content; see ``save_sharded`` for ``sharded``).
            metadata: ``{"step": int, "epoch": int, "metrics": {name: float}}`` for the trailer.
            asynchronous: save in the background through the queue (None: the manager's ``async_save``).
            publish_as: once committed, also a durable copy (or symlink) as this name in the directory, or
                this path or URL (anything with a '/'); on the writer thread for a background save.
            publish_link: link instead of copy (local paths only).
            sharded: write a sharded directory with ``save_sharded``, a collective: call it on every rank.

        Returns:
            The save's handle (finished for a synchronous save).

        Raises:
            CheckpointError: if the manager is closed.
            MisconfigurationException: for an invalid argument.
            TypeError: if ``state`` is not a dict or is not weights_only-safe (nothing is written).
            OSError: writing or publishing failed (a previous checkpoint of that name is kept); for a
                background save raised by ``handle.result()`` or the next save/``wait``/``close``.
        """
        self._check_open()
        name = check_checkpoint_name("name", name)
        if asynchronous is None:
            asynchronous = self._async
        flags = {"asynchronous": asynchronous, "publish_link": publish_link, "sharded": sharded}
        for argument, flag in flags.items():
            if not isinstance(flag, bool):
                raise MisconfigurationException(f"{argument} must be True or False, got {flag!r}")
        meta = normalize_metadata(metadata)
        if sharded:
            if asynchronous or publish_as is not None:
                raise MisconfigurationException(
                    f"save_as({name!r}, sharded=True) is synchronous and publishes nothing, got "
                    f"asynchronous={asynchronous!r}, publish_as={publish_as!r}; save the other name again instead"
                )
            return self._save_sharded(name, state, meta)
        publish = None
        if publish_as is not None:
            target, publish = publisher(
                self._storage, self._directory, self._options, publish_as, publish_link
            )
            self._settle_deletion(target)  # an older copy being deleted there must not remove the new one
        return self._save_file(name, state, meta, asynchronous, publish)

    def _settle_deletion(self, path: str) -> None:
        if self._queue is not None:
            self._queue.settle_deletions(path)

    def _save_file(
        self,
        name: str,
        state: dict[str, Any],
        meta: dict[str, Any],
        asynchronous: bool,
        after_commit: AfterCommit | None,
    ) -> SaveHandle:
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict (the checkpoint), got {type(state).__name__}")
        path = self._path(name)
        self._settle_deletion(path)  # a background deletion of this name never removes the new file
        url = self._storage.url(path)
        size = estimate_size(state)  # the free-space preflight, for synchronous and asynchronous saves alike

        def write(snapshot: dict[str, Any], gate: LiveGate) -> CheckpointRecord:
            record = files.save_file(  # looked up at the call: the one write, observable by tests
                url,
                snapshot,
                metadata=meta,
                storage_options=self._options,
                live_gate=gate,
                expected_size=size,
            )
            if after_commit is not None:
                after_commit(record)
            return record

        if not asynchronous:
            return done_handle(write(state, LiveGate()))  # an open gate: the caller is held anyway
        self._last = self._own_queue().submit(state, write)
        return self._last

    def _save_sharded(self, name: str, state: dict[str, Any], meta: dict[str, Any]) -> SaveHandle:
        from stepstone.checkpoint.sharded import save_sharded  # torch.distributed.checkpoint: slow to import

        if not self._storage.is_local:
            raise MisconfigurationException(
                f"sharded=True needs a local directory, got {self.directory!r}; save a file checkpoint instead"
            )
        path = self._path(name)
        self._settle_deletion(path)
        return done_handle(save_sharded(path, state, metadata=meta))

    def remove(self, name: str, background: bool = False) -> None:
        """Delete a checkpoint of the directory (a file, a ``last`` link, or a sharded directory).

        The one deletion entry (retention deletes through it); a missing checkpoint is not an error.

        Args:
            name: the checkpoint's name in the directory.
            background: delete a local checkpoint on the queue's deleter thread (a large unlink stalls);
                its failure is raised by a later save of that name or removal, ``queue.finish()``, ``close``.
                A remote checkpoint, or any after ``close``, is deleted at once.

        Raises:
            MisconfigurationException: for an invalid name.
            IsADirectoryError: ``name`` is a directory that is not a committed checkpoint (nothing deleted).
            OSError: the deletion failed.
        """
        path = self._path(check_checkpoint_name("name", name))
        if background and self._storage.is_local and not self._closed:
            self._own_queue().remove_later(path, self._storage)
        else:
            remove_checkpoint(path, self._storage)

    def _apply_retention(self) -> None:
        # Only stepstone's own files are subject to retention; foreign *.ckpt files and sharded directories
        # (written by an FSDP Trainer, not by this manager) are never deleted.
        records = [
            r for r in self._index.entries() if r.format_version > 0 and not self._index.is_sharded(r.name)
        ]
        keep = self._retention(records)
        for record in records:
            if record.name not in keep:
                self.remove(record.name)

    def restore(self, which: str | int = "latest", map_location: MapLocation = None) -> dict[str, Any]:
        """Load a checkpoint, verified; ``self.last_restored`` then holds its record.

        Args:
            which: ``"latest"`` (newest valid by step), ``"best"`` (best valid by the best metric) or a step.
            map_location: where tensors go, as for ``torch.load``.

        Returns:
            The checkpoint dict.

        Raises:
            CheckpointNotFoundError: if no (valid) checkpoint matches.
            CheckpointCorruptError: if the checkpoint of an explicit step is corrupt (no fallback then).
            MisconfigurationException: for an invalid ``which`` or when "best" has no metric to rank by.
        """
        records = [r for r in self._index.entries() if not self._index.is_sharded(r.name)]  # files only
        candidates = restore_candidates(records, which, self._best, self._retention)
        state, self.last_restored = load_first_valid(
            self._storage, self._directory, candidates, which, map_location, self.directory
        )
        return state

    def all_checkpoints(self) -> list[CheckpointRecord]:
        """The committed checkpoints of the directory, oldest first.

        Returns:
            Their records (trailers read, not verified).
        """
        return self._index.entries()

    def latest_step(self) -> int | None:
        """The largest step with a checkpoint (not verified), or None.

        Returns:
            The step or None.
        """
        steps = [r.step for r in self._index.entries() if r.step is not None]
        return max(steps) if steps else None

    def wait(self) -> None:
        """Wait for this manager's save in flight and re-raise its failure (if ``handle.result()`` did not).

        Raises:
            Exception: that failure.
        """
        if self._queue is not None and self._owns_queue:
            self._queue.wait()
            return
        handle, self._last = self._last, None
        if handle is not None:
            handle.exception()  # waits
            error = handle._unraised_failure()
            if error is not None:
                raise error

    def close(self) -> None:
        """Wait for pending saves (and background deletions of an own queue), then refuse new ones. Idempotent.

        Raises:
            Exception: a background failure nobody was told about yet (the manager is closed anyway).
        """
        if self._closed:
            return
        self._closed = True
        if self._queue is not None and self._owns_queue:
            failure = self._queue.finish()
            if failure is not None:
                raise failure
        else:
            self.wait()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
