"""The synchronous writer and the save handle."""

from __future__ import annotations

import pytest

from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.writer import SyncWriter
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


def test_closed_writer_refuses_jobs() -> None:
    writer = SyncWriter()
    writer.wait()
    writer.close()
    with pytest.raises(CheckpointError, match="closed"):
        writer.submit(lambda: RECORD)
