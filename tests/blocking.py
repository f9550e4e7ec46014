"""Event-driven waits for tests: know that a thread is blocked instead of sleeping and hoping it is.

A test that must show "X waits for Y" holds Y on an event, lets X run into its wait, checks that X is
provably blocked there (its stack, not the clock), and only then releases Y.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

_THREADING = os.path.normcase(threading.__file__)
# Where a thread sleeps in the threading module: joining a thread (3.11: _wait_for_tstate_lock; 3.13: join),
# or waiting on a condition (Event.wait, Semaphore.acquire, Condition.wait).
_WAITS = ("_wait_for_tstate_lock", "join", "wait")


def blocked_on(thread: threading.Thread, frame_test: Callable[[FrameType], bool]) -> bool:
    """Whether ``thread`` now waits on a lock (a join, an event, a condition) below a frame ``frame_test`` picks.

    Args:
        thread: a started thread.
        frame_test: true for a frame of what the thread must be waiting in (its function, its ``self``).

    Returns:
        True when the innermost frame is a wait of the ``threading`` module, outside ``Thread.start`` (which
        waits a moment for the new thread), and a frame of the stack passes ``frame_test``.
    """
    frame: FrameType | None = sys._current_frames().get(thread.ident or -1)
    if frame is None or os.path.normcase(frame.f_code.co_filename) != _THREADING:
        return False
    if frame.f_code.co_name not in _WAITS:
        return False
    found = False
    while frame is not None:
        in_threading = os.path.normcase(frame.f_code.co_filename) == _THREADING
        if in_threading and frame.f_code.co_name == "start":
            return False
        found = found or frame_test(frame)
        frame = frame.f_back
    return found


def blocked_in(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` now waits on a lock somewhere inside a function named ``function``."""
    return blocked_on(thread, lambda frame: frame.f_code.co_name == function)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds; False when ``timeout`` seconds pass first.

    The timeout is a generous deadline for a stalled test, not a measure of speed.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


def wait_until_blocked_in(thread: threading.Thread, function: str, timeout: float = 10.0) -> bool:
    """Poll until ``thread`` is :func:`blocked_in` ``function``; False when ``timeout`` seconds pass first."""
    return (
        wait_until(lambda: blocked_in(thread, function) or not thread.is_alive(), timeout)
        and thread.is_alive()
    )


class ReleaseWhenBlocked:
    """Set ``release`` once ``thread`` is blocked inside ``function`` (or after ``timeout``, to end the test).

    Start it before the thread runs into the wait; afterwards ``was_blocked`` tells whether the thread really
    waited there while ``release`` was still unset.
    """

    def __init__(
        self, thread: threading.Thread, function: str, release: threading.Event, timeout: float = 10.0
    ) -> None:
        self.was_blocked = False

        def watch() -> None:
            self.was_blocked = wait_until_blocked_in(thread, function, timeout)
            release.set()

        self._watcher = threading.Thread(target=watch, name=f"release-when-blocked-in-{function}")
        self._watcher.start()

    def join(self) -> bool:
        """Wait for the watcher to finish; whether the thread was blocked before the release."""
        self._watcher.join()
        return self.was_blocked
