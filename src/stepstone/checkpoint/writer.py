"""Runs save jobs, synchronously (``SyncWriter``) or on one background thread (``AsyncWriter``).

A save job is a callable that writes and commits one checkpoint (then applies retention) and returns its record. The
manager hands jobs to a ``Writer`` and gets a ``SaveHandle`` back.

The contract a writer keeps (the synchronous one trivially):

- at most one save in flight: ``submit`` first waits for the previous job;
- failures are never dropped: a failed job re-raises from ``submit`` (sync) or, for a background writer,
  from the next ``submit``, ``wait`` or ``close`` -- whichever comes first -- and from its handle;
- ``close`` waits for the job in flight; a closed writer refuses new jobs.

``AsyncWriter`` runs each job on a fresh writer thread (one at a time, so no idle thread outlives a save)
after the caller snapshotted the state to host memory (``staging.py``), and returns the handle at once. A
job submitted while another is writing waits for it (backpressure); that wait is reported, rate-limited.
A failure is raised once by the writer (at the next ``reserve``/``submit``/``wait``/``close``) unless its
handle's ``result()`` already raised it to the owner; ``result()`` itself always raises it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypedDict

from stepstone.checkpoint.progress import stderr_line
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.errors import CheckpointError

__all__ = ["AsyncWriter", "SaveHandle", "SyncWriter", "Writer", "done_handle"]

SaveJob = Callable[[], CheckpointRecord]


class _HandleState(TypedDict):
    """A finished ``SaveHandle`` as it is copied or pickled: its outcome."""

    record: CheckpointRecord | None
    error: BaseException | None
    raised: bool


class SaveHandle:
    """The outcome of one save.

    Args:
        future: the future of the save job.
    """

    def __init__(self, future: Future[CheckpointRecord]) -> None:
        self._future = future
        self._raised = False  # whether the failure was already raised to someone

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
        try:
            return self._future.result(timeout)
        except TimeoutError:
            if not self._future.done():
                raise
            self._raised = True
            raise
        except BaseException:
            self._raised = True
            raise

    def _unraised_failure(self) -> BaseException | None:
        """The failure if nobody was told about it yet (it then counts as told)."""
        error = self._future.exception()
        if error is None or self._raised:
            return None
        self._raised = True
        return error

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

    def __getstate__(self) -> _HandleState:
        # A Future holds a lock (not picklable): a finished save travels as its outcome (a Trainer or
        # ModelCheckpoint holding this handle can then be deep-copied or pickled); a running one cannot.
        if not self._future.done():
            raise TypeError("A SaveHandle of a save still in progress cannot be copied; call result() first.")
        error = self._future.exception()
        return {"record": None if error else self._future.result(), "error": error, "raised": self._raised}

    def __setstate__(self, state: _HandleState) -> None:
        future: Future[CheckpointRecord] = Future()
        error, record = state["error"], state["record"]
        if error is not None:
            future.set_exception(error)
        else:
            assert record is not None  # a save that did not fail returned its record
            future.set_result(record)
        self._future, self._raised = future, bool(state["raised"])


def done_handle(record: CheckpointRecord | None) -> SaveHandle:
    """The handle of a save already finished (a synchronous one).

    Args:
        record: its record (None where this process did not write, e.g. a rank other than 0).

    Returns:
        A finished handle whose ``result()`` is ``record``.
    """
    future: Future[Any] = Future()
    future.set_result(record)
    return SaveHandle(future)


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


class AsyncWriter:
    """Runs each save job on a background writer thread; at most one job in flight.

    Args:
        name: the writer thread's name.
        report: where backpressure reports go (one line).
        report_min_wait_s: waits shorter than this are not reported.
        report_every_s: at most one report per this many seconds (the totals are in each line).
    """

    def __init__(
        self,
        *,
        name: str = "stepstone-checkpoint-writer",
        report: Callable[[str], None] = stderr_line,
        report_min_wait_s: float = 0.1,
        report_every_s: float = 30.0,
    ) -> None:
        self._name = name
        self._report = report
        self._report_min = report_min_wait_s
        self._report_every = report_every_s
        self._last_report = -float("inf")
        self._thread: threading.Thread | None = None
        self._handle: SaveHandle | None = None
        self._closed = False
        #: Number of saves that had to wait for the previous one, and the seconds they waited in total.
        self.waits = 0
        self.waited_s = 0.0

    @property
    def busy(self) -> bool:
        """Whether a save is being written now."""
        return self._handle is not None and not self._handle.done()

    def _join(self) -> float:
        """Wait for the job in flight; return the seconds waited and re-raise its untold failure."""
        started = time.monotonic()
        thread, handle = self._thread, self._handle
        if thread is not None:
            thread.join()
            self._thread = None
        waited = time.monotonic() - started
        if handle is not None:
            self._handle = None
            error = handle._unraised_failure()
            if error is not None:
                raise error
        return waited

    def reserve(self) -> float:
        """Make room for a new save: wait for the one in flight (backpressure) and report the wait.

        Call this before snapshotting a state into buffers the previous save may still be reading.

        Returns:
            The seconds waited.

        Raises:
            CheckpointError: if the writer is closed.
            Exception: the previous save's failure, if nobody was told about it yet.
        """
        if self._closed:
            raise CheckpointError("This checkpoint writer is closed; create a new one to save")
        waited = self.wait_turn()
        self._join()
        return waited

    def wait_turn(self) -> float:
        """Wait for the save in flight (backpressure) and report the wait; raises nothing.

        The owner of that save learns its outcome from its handle (or the next ``reserve``/``wait``).

        Returns:
            The seconds waited.
        """
        was_busy = self.busy
        started = time.monotonic()
        if self._thread is not None:
            self._thread.join()
        waited = time.monotonic() - started
        if was_busy:
            self.waits += 1
            self.waited_s += waited
            now = time.monotonic()
            if waited >= self._report_min and now - self._last_report >= self._report_every:
                self._last_report = now
                self._report(
                    f"stepstone: a checkpoint save waited {waited:.2f} s for the previous one to finish writing "
                    f"({self.waits} waits, {self.waited_s:.1f} s in total); the disk is slower than the "
                    "checkpoint rate -- checkpoint less often to avoid these stalls"
                )
        return waited

    def submit(self, job: SaveJob) -> SaveHandle:
        """Start ``job`` on the writer thread, after the previous job finished.

        Args:
            job: the save job; it must only touch data that stays unchanged until it ends (a snapshot).

        Returns:
            The handle of the save, at once.

        Raises:
            CheckpointError: if the writer is closed.
            Exception: the previous save's failure, if nobody was told about it yet (``job`` is then not
                started).
        """
        self.reserve()
        future: Future[CheckpointRecord] = Future()

        def run() -> None:
            try:
                future.set_result(job())
            except BaseException as error:  # stored, raised to the training thread later
                future.set_exception(error)

        thread = threading.Thread(target=run, name=self._name, daemon=False)
        self._handle = SaveHandle(future)
        self._thread = thread
        thread.start()
        return self._handle

    def wait(self) -> None:
        """Wait for the job in flight.

        Raises:
            Exception: its failure, if nobody was told about it yet.
        """
        self._join()

    def close(self) -> None:
        """Wait for the job in flight, then refuse new ones. Idempotent.

        Raises:
            Exception: the last job's failure, if nobody was told about it yet (the writer is closed anyway).
        """
        self._closed = True
        self._join()
