"""Suite-wide guards (every test must leave no threads, open files or process groups behind) and the S3 server."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import torch.distributed as dist

from s3_server import S3Server, s3_server


def _open_files() -> dict[int, str]:
    found: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        # Only regular files count: pipes, sockets and ttys belong to pytest and the interpreter.
        if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
            found[int(name)] = target
    return found


def _fsspec_io_threads() -> set[threading.Thread]:
    """fsspec's process-wide IO loop thread and its executor's threads (s3fs, aiohttp's DNS lookups).

    fsspec starts them on the first async filesystem use and keeps them for the life of the process, by
    design: they are not a test's leak.
    """
    asyn = sys.modules.get("fsspec.asyn")
    if asyn is None or asyn.iothread[0] is None:
        return set()
    executor = getattr(asyn.loop[0], "_default_executor", None)
    return {asyn.iothread[0], *getattr(executor, "_threads", ())}


def _live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()} - _fsspec_io_threads()


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    threads_before = _live_threads()
    files_before = _open_files()
    yield
    # A thread told to stop may take a moment to end: a generous deadline on a loaded machine, not a speed limit.
    deadline = time.monotonic() + 10.0
    leaked_threads = _live_threads() - threads_before
    while leaked_threads and time.monotonic() < deadline:
        time.sleep(0.02)
        leaked_threads = _live_threads() - threads_before
    leaked_files = {fd: p for fd, p in _open_files().items() if files_before.get(fd) != p}
    initialized = dist.is_available() and dist.is_initialized()
    if initialized:
        dist.destroy_process_group()
    problems = []
    if leaked_threads:
        problems.append(f"leaked threads: {sorted(t.name for t in leaked_threads)}")
    if leaked_files:
        problems.append(f"leaked open files: {sorted(leaked_files.values())}")
    if initialized:
        problems.append("leaked a torch.distributed process group")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-API server (moto) on loopback, started once; boto's environment points at it meanwhile."""
    with (
        s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as server,
        pytest.MonkeyPatch.context() as patch,
    ):
        for name, value in server.env.items():
            patch.setenv(name, value)
        yield server


@pytest.fixture
def s3_dir(s3: S3Server) -> str:
    """A fresh, empty ``s3://`` folder on the loopback server (a unique prefix in its bucket)."""
    return s3.new_folder()
