"""Suite-wide guards: every test must leave no threads, open files or process groups behind."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import torch.distributed as dist


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


def _live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    threads_before = _live_threads()
    files_before = _open_files()
    yield
    deadline = time.monotonic() + 2.0
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
