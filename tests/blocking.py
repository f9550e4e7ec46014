"""Event-driven waits for tests: know that a thread is blocked instead of sleeping and hoping it is.

A test that must show "X waits for Y" holds Y on an event, lets X run into its wait, checks that X is
provably blocked there (its stack, not the clock), and only then releases Y.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_THREADING = os.path.normcase(threading.__file__)
# Where a thread sleeps in the threading module: joining a thread (3.11: _wait_for_tstate_lock; 3.13: join),
# or waiting on a condition (Event.wait, Semaphore.acquire, Condition.wait).
_WAITS = ("_wait_for_tstate_lock", "join", "wait")


def blocked_in(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` now waits on a lock (a join, an event, a condition) somewhere inside ``function``.

    Args:
        thread: a started thread.
        function: the name of a function on that thread's stack (``"close"``, ``"wait_turn"``...).

    Returns:
        True when the innermost frame is a wait of the ``threading`` module and a frame of ``function`` is
        below it.
    """
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None or os.path.normcase(frame.f_code.co_filename) != _THREADING:
        return False
    if frame.f_code.co_name not in _WAITS:
        return False
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def wait_until_blocked_in(thread: threading.Thread, function: str, timeout: float = 10.0) -> bool:
    """Poll until ``thread`` is :func:`blocked_in` ``function``; False when ``timeout`` seconds pass first.

    The timeout is a generous deadline for a stalled test, not a measure of speed.
    """
    deadline = time.monotonic() + timeout
    while not blocked_in(thread, function):
        if time.monotonic() >= deadline or not thread.is_alive():
            return False
        time.sleep(0.001)
    return True


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
