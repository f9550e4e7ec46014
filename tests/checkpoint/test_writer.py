"""The synchronous and asynchronous writers and the save handle."""

from __future__ import annotations

import copy
import pickle
import re
import threading

import pytest

from blocking import ReleaseWhenBlocked
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.writer import AsyncWriter, SaveJob, SyncWriter
from stepstone.errors import CheckpointError

RECORD = CheckpointRecord(path="/d/a.ckpt", name="a.ckpt", size=1, step=1, epoch=None)


def test_submit_runs_the_job_now_and_returns_a_finished_handle() -> None:
    calls: list[int] = []

    def job() -> CheckpointRecord:
        calls.append(1)
        return RECORD

    handle = SyncWriter().submit(job)
    assert calls == [1]
    assert handle.done() and handle.result() is RECORD and handle.exception() is None


def test_failures_are_raised_from_submit_not_stored() -> None:
    def job() -> CheckpointRecord:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        SyncWriter().submit(job)


def test_a_finished_handle_copies_and_pickles_with_its_outcome_a_running_one_refuses() -> None:
    def failing() -> CheckpointRecord:
        raise OSError("disk full")

    done = SyncWriter().submit(lambda: RECORD)
    copied = pickle.loads(pickle.dumps(done))
    assert copied.done() and copied.result() == RECORD
    writer = AsyncWriter()
    failed = writer.submit(failing)
    assert isinstance(failed.exception(timeout=5), OSError)
    with pytest.raises(OSError, match="disk full"):
        copy.deepcopy(failed).result()
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    release = threading.Event()
    writer = AsyncWriter()
    running = writer.submit(_blocked_job(release))
    with pytest.raises(TypeError, match="still in progress cannot be copied; call result"):
        copy.deepcopy(running)
    release.set()
    writer.close()


def test_closed_writer_refuses_jobs() -> None:
    writer = SyncWriter()
    writer.wait()
    writer.close()
    with pytest.raises(CheckpointError, match="closed"):
        writer.submit(lambda: RECORD)


# --- AsyncWriter ------------------------------------------------------------------------------------


def _blocked_job(release: threading.Event, started: threading.Event | None = None) -> SaveJob:
    def job() -> CheckpointRecord:
        if started is not None:
            started.set()
        assert release.wait(5)
        return RECORD

    return job


def test_async_submit_returns_at_once_and_the_handle_gives_the_record() -> None:
    writer = AsyncWriter()
    release = threading.Event()
    handle = writer.submit(_blocked_job(release))
    assert not handle.done() and writer.busy
    release.set()
    assert handle.result(timeout=5) is RECORD
    writer.close()
    assert not writer.busy


def test_a_second_save_waits_for_the_first_and_the_wait_is_reported() -> None:
    lines: list[str] = []
    writer = AsyncWriter(report=lines.append, report_min_wait_s=0.0)
    release, started = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> CheckpointRecord:
        started.set()
        assert release.wait(5)
        order.append("first")
        return RECORD

    writer.submit(first)
    assert started.wait(5)
    # Backpressure: the second submit blocks until the first job ended; it is released only once it waits.
    releaser = ReleaseWhenBlocked(threading.main_thread(), "submit", release)
    writer.submit(lambda: order.append("second") or RECORD)
    assert releaser.join()
    writer.close()
    assert order == ["first", "second"]
    assert writer.waits == 1 and writer.waited_s > 0
    assert len(lines) == 1 and re.search(r"waited \d+\.\d\d s for the previous one", lines[0])


def test_reports_are_rate_limited() -> None:
    lines: list[str] = []
    writer = AsyncWriter(report=lines.append, report_min_wait_s=0.0, report_every_s=60.0)
    releases = [threading.Event() for _ in range(3)]
    releasers = []
    for index, release in enumerate(releases):
        if index:  # the job before is held until this submit waits for it
            releasers.append(ReleaseWhenBlocked(threading.main_thread(), "submit", releases[index - 1]))
        writer.submit(_blocked_job(release))
    releases[-1].set()
    writer.close()
    assert all(releaser.join() for releaser in releasers)
    assert writer.waits == 2 and len(lines) == 1


def _failing() -> CheckpointRecord:
    raise OSError("injected disk failure")


def test_a_background_failure_is_raised_at_the_next_submit_and_the_job_is_not_started() -> None:
    writer = AsyncWriter()
    writer.submit(_failing)
    ran: list[int] = []
    with pytest.raises(OSError, match="injected"):
        writer.submit(lambda: ran.append(1) or RECORD)
    assert ran == []
    writer.submit(lambda: RECORD).result(timeout=5)  # told once: the writer goes on
    writer.close()


@pytest.mark.parametrize("where", ["wait", "close"])
def test_a_background_failure_is_raised_by_wait_and_close(where: str) -> None:
    writer = AsyncWriter()
    writer.submit(_failing)
    with pytest.raises(OSError, match="injected"):
        getattr(writer, where)()
    writer.close()


def test_a_failure_raised_by_the_handle_is_not_raised_again_by_the_writer() -> None:
    writer = AsyncWriter()
    handle = writer.submit(_failing)
    with pytest.raises(OSError):
        handle.result(timeout=5)
    with pytest.raises(OSError):  # the handle keeps answering
        handle.result()
    writer.close()  # nothing left untold


def test_closed_async_writer_refuses_jobs_and_leaves_no_thread() -> None:
    writer = AsyncWriter(name="stepstone-test-writer")
    writer.submit(lambda: RECORD)
    writer.close()
    assert not any(t.name == "stepstone-test-writer" for t in threading.enumerate())
    with pytest.raises(CheckpointError, match="closed"):
        writer.submit(lambda: RECORD)
