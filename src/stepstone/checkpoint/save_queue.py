"""SaveQueue: the background writer, the host buffers and the background deleter of one training run.

Checkpoint managers that share one queue (every directory a Trainer saves into; several managers of a
hand-written loop) keep at most one save in flight and at most one copy of the state in host memory,
however many of them save. A save's failure on the writer thread, or a deletion's failure on the deleter
thread, is never dropped: the save's handle raises it, or the next save, wait or ``finish`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from stepstone.checkpoint.kinds import remove_checkpoint
from stepstone.checkpoint.live import LiveGate, submit_staged
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.safety import check_weights_only_safe
from stepstone.checkpoint.staging import HostStaging
from stepstone.checkpoint.storage import Storage
from stepstone.checkpoint.writer import AsyncWriter, SaveHandle
from stepstone.errors import MisconfigurationException

__all__ = ["SaveQueue", "queue_for_manager"]

#: Writes a snapshot; opens the gate once the snapshot's live (unstaged) storages are written.
StagedSave = Callable[[dict[str, Any], LiveGate], CheckpointRecord]


def _check_budget(value: object) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise MisconfigurationException(
            f"max_staging_bytes must be an int >= 0 (bytes) or None (one full copy of the state), got {value!r}"
        )
    return value


class SaveQueue:
    """One writer thread, one set of reusable host buffers and one deleter thread, shared by managers.

    The writer and the buffers are created on the first save, the deleter on the first background deletion.

    Args:
        max_staging_bytes: the most bytes of host buffers (None: one full copy of the state; 0: none). Storages
            over the budget are not copied: the save returns once they are written to the file.

    Raises:
        MisconfigurationException: if ``max_staging_bytes`` is not None or an int >= 0.
    """

    def __init__(self, *, max_staging_bytes: int | None = None) -> None:
        self._staging_budget = _check_budget(max_staging_bytes)
        self._writer: AsyncWriter | None = None
        self._staging: HostStaging | None = None
        self._deleter: ThreadPoolExecutor | None = None
        self._deletions: dict[str, Future[None]] = {}  # path -> its background deletion

    @property
    def writer(self) -> AsyncWriter | None:
        """The background writer (None before the first save)."""
        return self._writer

    @property
    def staging(self) -> HostStaging | None:
        """The host buffers (None before the first save)."""
        return self._staging

    @property
    def max_staging_bytes(self) -> int | None:
        """The budget of the host buffers for the next save (None: one full copy of the state)."""
        return self._staging_budget

    @max_staging_bytes.setter
    def max_staging_bytes(self, value: int | None) -> None:
        # Raises MisconfigurationException for a value that is not None or an int >= 0.
        self._staging_budget = _check_budget(value)

    def reserve(self) -> None:
        """Wait for the save in flight (backpressure, reported when long) and raise its untold failure.

        Raises:
            Exception: the previous save's failure, if nobody was told about it yet.
        """
        if self._writer is not None:
            self._writer.reserve()

    def submit(self, state: dict[str, Any], save: StagedSave) -> SaveHandle:
        """Snapshot ``state`` into the host buffers, then run ``save`` of the snapshot on the writer thread.

        The caller waits only for the previous save (backpressure) and for the copy; afterwards it may change
        the state freely. Under a budget it also waits until the unstaged storages are written.

        Args:
            state: the checkpoint dict (references to the live state).
            save: writes the snapshot and returns the committed record; runs on the writer thread.

        Returns:
            The save's handle.

        Raises:
            TypeError: if ``state`` is not weights_only-safe (nothing is scheduled).
            Exception: the previous save's failure, if nobody was told about it yet.
        """
        check_weights_only_safe(state)  # in the caller's thread, before anything is scheduled
        if self._writer is None or self._staging is None:
            self._writer, self._staging = AsyncWriter(), HostStaging()
        self._writer.reserve()  # the buffers are free again before they are overwritten
        self._staging.max_staging_bytes = self._staging_budget
        staged = self._staging.snapshot(state)
        return submit_staged(self._writer, self._staging.live_gate(), lambda gate: save(staged, gate))

    def remove_later(self, path: str, storage: Storage | None = None) -> None:
        """Delete a committed checkpoint on the deleter thread (a large unlink would stall training).

        Args:
            path: the checkpoint (as ``storage`` names it, or a local path or URL).
            storage: where ``path`` is; None to find out from ``path``.

        Raises:
            Exception: an earlier background deletion that failed (raised here, by a save of its path through
                a manager, or by ``finish``).
        """
        self._raise_failed([p for p, future in self._deletions.items() if future.done()])
        if self._deleter is None:
            self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepstone-delete")
        self._deletions[path] = self._deleter.submit(remove_checkpoint, path, storage)

    def settle_deletions(self, path: str | None = None) -> None:
        """Wait for the background deletion of ``path`` (None: of every checkpoint).

        Args:
            path: a checkpoint about to be written (its pending deletion must not remove the new one).

        Raises:
            Exception: a deletion waited for failed.
        """
        self._raise_failed(
            list(self._deletions) if path is None else [path] if path in self._deletions else []
        )

    def _raise_failed(self, paths: list[str]) -> None:
        errors = [error for error in (self._deletions.pop(p).exception() for p in paths) if error is not None]
        if errors:
            raise errors[0]

    def wait_turn(self) -> None:
        """Wait for the save in flight and report a long wait; raises nothing (its owner learns its outcome)."""
        if self._writer is not None:
            self._writer.wait_turn()

    def wait(self) -> None:
        """Wait for the save in flight.

        Raises:
            Exception: its failure, if nobody was told about it yet.
        """
        if self._writer is not None:
            self._writer.wait()

    def finish(self) -> BaseException | None:
        """Join the writer, settle every deletion, stop the deleter and free the buffers; reusable afterwards.

        Returns:
            The first failure met (everything is still settled), or None.
        """
        failure: BaseException | None = None
        try:
            self.wait()
        except BaseException as error:  # returned to the caller, which raises it
            failure = error
        try:
            self.settle_deletions()
        except BaseException as error:
            failure = failure or error
        if self._deleter is not None:
            self._deleter.shutdown(wait=True)
            self._deleter = None
        if self._staging is not None:
            self._staging.release()
        return failure


def queue_for_manager(queue: object, async_save: bool, max_staging_bytes: int | None) -> SaveQueue | None:
    """The queue of a new ``CheckpointManager``: the shared one, its own (``async_save``), or none yet.

    Args:
        queue: the manager's ``queue`` argument.
        async_save: its ``async_save`` argument.
        max_staging_bytes: its ``max_staging_bytes`` argument.

    Returns:
        The queue, or None (a synchronous manager makes one when it first saves in the background).

    Raises:
        MisconfigurationException: for a ``queue`` that is no SaveQueue, or a ``max_staging_bytes`` that
            cannot apply (a synchronous manager, or a shared queue, which owns the budget).
    """
    if queue is not None and not isinstance(queue, SaveQueue):
        raise MisconfigurationException(f"queue must be a SaveQueue or None, got {queue!r}")
    if max_staging_bytes is not None and not async_save:
        raise MisconfigurationException(
            f"max_staging_bytes={max_staging_bytes!r} only applies to async_save=True (a synchronous save "
            "stages nothing); pass async_save=True or drop it"
        )
    if queue is not None and max_staging_bytes is not None:
        raise MisconfigurationException(
            f"max_staging_bytes={max_staging_bytes!r} with a shared queue: set queue.max_staging_bytes "
            "instead (the queue owns the host buffers)"
        )
    if queue is None and async_save:
        return SaveQueue(max_staging_bytes=max_staging_bytes)
    return queue
