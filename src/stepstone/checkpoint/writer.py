"""Runs save jobs: now synchronously; shaped so a background writer can be added without API changes.

A save job is a callable that writes, commits and indexes one checkpoint and returns its record. The
manager hands jobs to a ``Writer`` and gets a ``SaveHandle`` back.

The contract a writer keeps (the synchronous one trivially):

- at most one save in flight: ``submit`` first waits for the previous job;
- failures are never dropped: a failed job re-raises from ``submit`` (sync) or, for a background writer,
  from the next ``submit``, ``wait`` or ``close`` -- whichever comes first -- and from its handle;
- ``close`` waits for the job in flight; a closed writer refuses new jobs.

An asynchronous writer would run the job on one worker thread after the state was snapshotted to host
memory (``staging.py``), and return the handle immediately.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from stepstone.checkpoint.record import CheckpointRecord
from stepstone.errors import CheckpointError

__all__ = ["SaveHandle", "SyncWriter", "Writer"]

SaveJob = Callable[[], CheckpointRecord]


class SaveHandle:
    """The outcome of one save.

    Args:
        future: the future of the save job.
    """

    def __init__(self, future: Future[CheckpointRecord]) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> CheckpointRecord:
        """Wait for the save and return its record.

        Args:
            timeout: seconds to wait at most (None: no limit).

        Returns:
            The committed checkpoint's record.

        Raises:
            TimeoutError: if the save is still running after ``timeout``.
            Exception: the save's own failure, re-raised.
        """
        return self._future.result(timeout)

    def done(self) -> bool:
        """Whether the save finished (committed or failed).

        Returns:
            True when finished.
        """
        return self._future.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The save's failure, or None if it succeeded.

        Args:
            timeout: seconds to wait at most.

        Returns:
            The exception or None.
        """
        return self._future.exception(timeout)


class Writer(Protocol):
    """Runs save jobs (see the module docstring for the contract)."""

    def submit(self, job: SaveJob) -> SaveHandle:
        """Run (or schedule) a save job."""

    def wait(self) -> None:
        """Wait for the job in flight; re-raise its failure."""

    def close(self) -> None:
        """Wait, then refuse new jobs."""


class SyncWriter:
    """Runs each save job in the caller's thread, before ``submit`` returns."""

    def __init__(self) -> None:
        self._closed = False

    def submit(self, job: SaveJob) -> SaveHandle:
        """Run ``job`` now.

        Args:
            job: the save job.

        Returns:
            A finished handle holding the record.

        Raises:
            CheckpointError: if the writer is closed.
            Exception: whatever the job raised (re-raised at once, not stored).
        """
        if self._closed:
            raise CheckpointError("This checkpoint writer is closed; create a new CheckpointManager to save")
        future: Future[CheckpointRecord] = Future()
        future.set_result(job())
        return SaveHandle(future)

    def wait(self) -> None:
        """Nothing is ever in flight."""

    def close(self) -> None:
        """Refuse further jobs."""
        self._closed = True
