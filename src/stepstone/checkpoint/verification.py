"""Checks a checkpoint's chunk CRCs, in parallel, and serves only verified bytes to ``torch.load``.

Loading a checkpoint with verification must not cost a second pass over the disk. ``load_file`` gives
``torch.load`` a ``VerifiedReader`` instead of the path: every ``readinto`` first makes sure the chunks it
covers were verified, verifying them on the spot if no one has started them yet, while a background
thread verifies chunks ahead of torch in file order. The background read pulls each chunk into the page
cache just before torch copies it from there, so the file is read from disk once; and torch never parses
a byte (zip headers, pickle) that was not verified first. The read-ahead is bounded (``READ_AHEAD``) so
that on a file larger than memory the verified chunks are still cached when torch reads them.

On 2 cores, one background thread plus the reader's own thread was measured fastest (a second background
thread competes with torch's copy); ``verify_all`` (no load) uses 2 threads.
"""

from __future__ import annotations

import io
import os
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from typing_extensions import Buffer, override

from stepstone.checkpoint.format import TrailerInfo
from stepstone.checkpoint.progress import Progress
from stepstone.errors import CheckpointCorruptError, CheckpointError

__all__ = ["READ_AHEAD", "ChunkVerifier", "VerifiedReader", "load_verify_threads", "verify_buffer"]

#: How far (bytes) background verification may run ahead of what torch has asked for.
READ_AHEAD = 1024 * 1024 * 1024
_PIECE = 64 * 1024 * 1024  # most bytes per pread into torch's buffer (progress granularity)
_BLOCK = 4 * 1024 * 1024  # pread size: fits in cache so the CRC reads from cache, not from memory
_PENDING, _BUSY, _DONE = 0, 1, 2


def load_verify_threads() -> int:
    """Background verification threads to run beside ``torch.load`` (1 on <= 2 cores, else 2).

    Returns:
        The thread count.
    """
    return 1 if (os.cpu_count() or 1) <= 2 else 2


def _comment_length_offset(info: TrailerInfo) -> int:
    return info.zip_size - 2


class ChunkVerifier:
    """Verifies the chunks of an open local file against its trailer; safe to use from several threads.

    Args:
        fd: a file descriptor open for reading (positional reads only; its offset is not used).
        info: the file's parsed trailer.
        path: the file's name, for error messages.
    """

    def __init__(self, fd: int, info: TrailerInfo, path: str) -> None:
        self._fd = fd
        self._info = info
        self._path = path
        self._ranges = info.ranges()
        self._state = [_PENDING] * len(self._ranges)
        self._next = 0  # lowest chunk index that may still be pending
        self._horizon = READ_AHEAD  # background workers do not start chunks beyond this offset
        self._failure: CheckpointError | None = None
        self._stopped = False
        self._cond = threading.Condition()
        self._local = threading.local()

    @property
    def failure(self) -> CheckpointError | None:
        """The first verification failure, if any."""
        return self._failure

    def _buffer(self) -> bytearray:
        # One read buffer per thread, reused: fresh buffers would cost page faults on every call.
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = bytearray(_BLOCK)
        return buffer

    def _chunk_crc(self, index: int) -> int:
        start, end = self._ranges[index]
        buffer = self._buffer()
        # The CRCs were computed while the EOCD comment length was still 0x0000: hash those bytes as zero.
        data_end = max(start, min(end, _comment_length_offset(self._info)))
        crc, offset = 0, start
        with memoryview(buffer) as view:
            while offset < data_end:
                count = os.preadv(self._fd, [view[: min(len(buffer), data_end - offset)]], offset)
                if count == 0:
                    raise CheckpointCorruptError(self._path, f"the file ends early, at byte {offset}")
                crc = zlib.crc32(view[:count], crc)
                offset += count
        return zlib.crc32(bytes(end - data_end), crc)

    def _verify(self, index: int) -> None:
        failure: CheckpointError | None = None
        try:
            crc = self._chunk_crc(index)
            expected = self._info.crcs[index]
            if crc != expected:
                start, end = self._ranges[index]
                failure = CheckpointCorruptError(
                    self._path,
                    f"chunk {index} (bytes {start}-{end}) has CRC32 {crc:08x}, its trailer says {expected:08x}",
                )
        except CheckpointCorruptError as error:
            failure = error
        except OSError as error:
            failure = CheckpointCorruptError(self._path, f"reading it failed: {error}")
        except BaseException as error:  # e.g. MemoryError: fail the load rather than leave waiters hanging
            failure = CheckpointError(f"Verifying {self._path!r} failed: {error!r}")
            raise
        finally:
            with self._cond:
                self._state[index] = _DONE
                if failure is not None and self._failure is None:
                    self._failure = failure
                self._cond.notify_all()

    def _claim_next(self, bounded: bool) -> int | None:
        with self._cond:
            while True:
                while self._next < len(self._state) and self._state[self._next] != _PENDING:
                    self._next += 1
                if self._stopped or self._failure is not None or self._next >= len(self._state):
                    return None
                if not bounded or self._ranges[self._next][0] < self._horizon:
                    self._state[self._next] = _BUSY
                    return self._next
                self._cond.wait()

    def _work(self, bounded: bool) -> None:
        while (index := self._claim_next(bounded)) is not None:
            self._verify(index)

    def require(self, start: int, end: int) -> None:
        """Return once bytes ``[start, end)`` are verified; verify them here if no one has started.

        Args:
            start: first byte needed.
            end: end of the needed range (exclusive); bytes past the zip part (the trailer) were checked
                when the trailer was parsed.

        Raises:
            CheckpointCorruptError: if any chunk of the file failed verification.
        """
        end = min(end, self._info.zip_size)
        if start >= end:
            self._raise_if_failed()
            return
        first, last = start // self._info.chunk_size, (end - 1) // self._info.chunk_size
        cursor = first
        while True:
            with self._cond:
                self._horizon = max(self._horizon, end + READ_AHEAD)
                self._cond.notify_all()
                while cursor <= last and self._state[cursor] != _PENDING:
                    cursor += 1
                if cursor > last or self._failure is not None:
                    self._cond.wait_for(lambda: self._settled(first, last))
                    break
                self._state[cursor] = _BUSY
            # Help instead of waiting: the chunk torch needs next is verified by torch's own thread.
            self._verify(cursor)
        self._raise_if_failed()

    def _settled(self, first: int, last: int) -> bool:
        """Whether chunks ``first..last`` are all verified, or verification has failed (lock held)."""
        return self._failure is not None or all(self._state[i] == _DONE for i in range(first, last + 1))

    def finish(self) -> None:
        """Verify every chunk not verified yet (no read-ahead bound) and wait for all of them.

        Raises:
            CheckpointCorruptError: if any chunk of the file failed verification.
        """
        with self._cond:
            self._horizon = self._info.zip_size
            self._cond.notify_all()
        self._work(False)
        with self._cond:
            self._cond.wait_for(lambda: self._settled(0, len(self._state) - 1))
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    @contextmanager
    def background(self, threads: int) -> Iterator[None]:
        """Run ``threads`` background verifiers (bounded read-ahead) for the duration of the block.

        They are stopped and joined when the block exits, whatever happens inside.

        Args:
            threads: number of background threads (>= 1).

        Yields:
            Nothing.
        """
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stepstone-verify") as pool:
            futures = [pool.submit(self._work, True) for _ in range(threads)]
            try:
                yield
            finally:
                with self._cond:
                    self._stopped = True
                    self._cond.notify_all()
        for future in futures:
            future.result()

    def verify_all(self, threads: int = 2) -> None:
        """Verify every chunk, using ``threads`` threads (the caller's included).

        Args:
            threads: total threads (>= 1).

        Raises:
            CheckpointCorruptError: if any chunk does not match.
        """
        helpers = max(0, threads - 1)
        with ThreadPoolExecutor(max_workers=max(1, helpers), thread_name_prefix="stepstone-verify") as pool:
            futures = [pool.submit(self._work, False) for _ in range(helpers)]
            self.finish()
        for future in futures:
            future.result()


class VerifiedReader(io.RawIOBase):
    """A read-only, seekable file object over ``fd`` that only returns verified bytes.

    Args:
        fd: the open file (not closed by this object).
        size: the file's size.
        verifier: the verifier of that file.
        progress: counts the bytes served (reports a long load); None counts nothing.
    """

    def __init__(self, fd: int, size: int, verifier: ChunkVerifier, progress: Progress | None = None) -> None:
        super().__init__()
        self._fd = fd
        self._size = size
        self._verifier = verifier
        self._progress = progress
        self._position = 0

    @override
    def readable(self) -> bool:
        """Always True."""
        return True

    @override
    def seekable(self) -> bool:
        """Always True."""
        return True

    @override
    def tell(self) -> int:
        """The current position."""
        return self._position

    @override
    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position like ``io.RawIOBase.seek``.

        Args:
            offset: the offset.
            whence: SEEK_SET, SEEK_CUR or SEEK_END.

        Returns:
            The new position.
        """
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    @override
    def readinto(self, buffer: Buffer) -> int:
        """Read verified bytes into ``buffer``.

        Args:
            buffer: the destination (torch passes a view of the tensor's storage).

        Returns:
            Bytes read (0 at the end of the file).

        Raises:
            CheckpointCorruptError: if the requested bytes (or any other chunk) failed verification.
        """
        with memoryview(buffer) as raw, raw.cast("B") as view:
            want = min(view.nbytes, max(0, self._size - self._position))
            self._verifier.require(self._position, self._position + want)
            done = 0
            while done < want:
                # Pieces of at most _PIECE bytes, so that one multi-GiB tensor still reports its progress.
                count = os.preadv(self._fd, [view[done : min(want, done + _PIECE)]], self._position + done)
                if count == 0:
                    break
                done += count
                if self._progress is not None:
                    self._progress.add(count)  # one clock read per piece: nothing beside the pread
        self._position += done
        return done


def verify_buffer(data: memoryview, info: TrailerInfo, path: str, threads: int = 2) -> None:
    """Verify the chunk CRCs of a checkpoint held in memory (remote files are read whole).

    Args:
        data: the whole file.
        info: its parsed trailer.
        path: its name, for error messages.
        threads: threads to use.

    Raises:
        CheckpointCorruptError: naming the first chunk that does not match.
    """
    ranges = info.ranges()
    zero_from = _comment_length_offset(info)

    def check(index: int) -> str | None:
        start, end = ranges[index]
        data_end = max(start, min(end, zero_from))
        crc = zlib.crc32(bytes(end - data_end), zlib.crc32(data[start:data_end]))
        if crc == info.crcs[index]:
            return None
        return f"chunk {index} (bytes {start}-{end}) has CRC32 {crc:08x}, its trailer says {info.crcs[index]:08x}"

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stepstone-verify") as pool:
        for problem in pool.map(check, range(len(ranges))):
            if problem is not None:
                raise CheckpointCorruptError(path, problem)
