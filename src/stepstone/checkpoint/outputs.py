"""Where serialized bytes go: a local file descriptor or a binary stream (an fsspec upload)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from typing import BinaryIO, Protocol

__all__ = ["FdOutput", "RawOutput", "StreamOutput"]

#: ``FdOutput`` starts the disk writing back what it wrote every this many bytes (``sync_file_range``).
WRITEBACK_EVERY = 64 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), which Python's ``os`` does not expose; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_RANGE = _sync_file_range()


class RawOutput(Protocol):
    """Where the serialized bytes go: ``write_all`` writes every byte or raises."""

    def write_all(self, data: memoryview) -> None:
        """Write all of ``data``.

        Args:
            data: bytes in byte format.
        """


class FdOutput:
    """``RawOutput`` over a local file descriptor (``os.write``, short writes retried).

    Every ``WRITEBACK_EVERY`` bytes it asks the kernel to start writing the dirty pages to the disk
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait for them): the disk then works while
    the rest is serialized and hashed, instead of receiving the whole file as one burst at the final fsync
    (which still provides the durability; this only moves work earlier).

    Args:
        fd: a file descriptor open for writing.
        writeback_every: bytes between two writeback requests (0: never ask).
    """

    def __init__(self, fd: int, writeback_every: int = WRITEBACK_EVERY) -> None:
        self._fd = fd
        self._every = writeback_every if _SYNC_RANGE is not None else 0
        self._unflushed = 0

    def write_all(self, data: memoryview) -> None:
        """Write all of ``data`` at the current offset.

        Args:
            data: bytes in byte format.

        Raises:
            OSError: on a write failure (ENOSPC, EIO, ...).
        """
        offset, size = 0, data.nbytes
        while offset < size:
            written = os.write(self._fd, data[offset:])
            if written <= 0:  # never happens on regular files; guards against an endless loop
                raise OSError(f"os.write wrote {written} bytes")
            offset += written
        self._unflushed += size
        if self._every and self._unflushed >= self._every and _SYNC_RANGE is not None:
            self._unflushed = 0
            # Offset 0, length 0: the whole file; pages already under writeback are skipped. A failure
            # (e.g. a pipe, or a filesystem without it) only loses the head start: fsync still follows.
            _SYNC_RANGE(self._fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


class StreamOutput:
    """``RawOutput`` over a binary stream (an fsspec file).

    Args:
        stream: a file object open for writing.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write_all(self, data: memoryview) -> None:
        """Write all of ``data`` (buffered writers accept the whole buffer).

        Args:
            data: bytes in byte format.
        """
        self._stream.write(data)
