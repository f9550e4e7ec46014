"""Progress of a long save or load: bytes and rate, so a multi-minute save or load never looks like a hang.

``ProgressOutput`` wraps the ``RawOutput`` a checkpoint is serialized into and counts its bytes; the
``Progress`` it reports to stays silent for the first ``delay_s`` seconds (most saves finish well before)
and then emits one line every ``interval_s`` seconds, plus a final line when a reported save ends. Lines go
to ``emit`` (default: standard error, like the Trainer's other messages). Large writes are cut into
``_PIECE`` bytes so that a single multi-GiB tensor still produces regular reports. Loads count the bytes
``verification.VerifiedReader`` serves to ``torch.load`` into the same ``Progress``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from stepstone.checkpoint.outputs import RawOutput

__all__ = ["Progress", "ProgressOutput", "stderr_line"]

_PIECE = 64 * 1024 * 1024
_MIB = 1024 * 1024


def stderr_line(message: str) -> None:
    """Print one line to standard error.

    Args:
        message: the line.
    """
    print(message, file=sys.stderr, flush=True)


class Progress:
    """Counts the bytes of one operation and reports them once it takes long.

    Args:
        label: what is being done, e.g. ``"saving '/ckpts/epoch=3.ckpt'"``.
        delay_s: seconds before the first report.
        interval_s: seconds between reports.
        emit: where report lines go.
        clock: the time source (tests pass a fake one).
    """

    def __init__(
        self,
        label: str,
        *,
        delay_s: float = 2.0,
        interval_s: float = 5.0,
        emit: Callable[[str], None] = stderr_line,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._label = label
        self._delay = delay_s
        self._interval = interval_s
        self._emit = emit
        self._clock = clock
        self._start = clock()
        self._next = self._start + delay_s
        self._reported = False
        self.done = 0

    def _line(self, now: float, final: bool) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed / _MIB
        state = "done" if final else "in progress"
        return (
            f"stepstone: {self._label}: {state}, {self.done / _MIB:,.0f} MiB in {elapsed:.1f} s "
            f"({rate:,.0f} MiB/s)"
        )

    def add(self, count: int) -> None:
        """Count ``count`` more bytes; report if it is time to.

        Args:
            count: bytes just written or read.
        """
        self.done += count
        now = self._clock()
        if now >= self._next:
            self._emit(self._line(now, final=False))
            self._reported = True
            self._next = now + self._interval

    def finish(self) -> None:
        """Report the end, if anything was reported before (short operations stay silent)."""
        if self._reported:
            self._emit(self._line(self._clock(), final=True))


class ProgressOutput:
    """A ``RawOutput`` that counts into a ``Progress`` what it passes on.

    Args:
        inner: where the bytes go.
        progress: the counter.
    """

    def __init__(self, inner: RawOutput, progress: Progress) -> None:
        self._inner = inner
        self._progress = progress

    def write_all(self, data: memoryview) -> None:
        """Write all of ``data`` to the inner output, in pieces, counting them.

        Args:
            data: bytes in byte format.

        Raises:
            OSError: whatever the inner output raises.
        """
        size = data.nbytes
        for start in range(0, size, _PIECE):
            piece = data[start : start + _PIECE]
            self._inner.write_all(piece)
            self._progress.add(piece.nbytes)
