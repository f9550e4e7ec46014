"""Where serialized bytes go: a local file descriptor or a binary stream (an fsspec upload)."""

from __future__ import annotations

import os
from typing import BinaryIO, Protocol

__all__ = ["FdOutput", "RawOutput", "StreamOutput"]


class RawOutput(Protocol):
    """Where the serialized bytes go: ``write_all`` writes every byte or raises."""

    def write_all(self, data: memoryview) -> None:
        """Write all of ``data``.

        Args:
            data: bytes in byte format.
        """


class FdOutput:
    """``RawOutput`` over a local file descriptor (``os.write``, short writes retried).

    Args:
        fd: a file descriptor open for writing.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

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
