"""Chunked CRC32: the integrity data stored in a checkpoint's trailer.

A checkpoint's zip bytes are split into fixed-size chunks and each chunk gets its own CRC32
(``zlib.crc32``, which releases the GIL and runs at several GB/s). Per-chunk checksums let the reader
verify chunks on several threads, verify the part of the file ``torch.load`` needs next before it reads
it, and name the damaged byte range in the error.

The trailer lives in the zip's end-of-central-directory comment, which is limited to 65535 bytes, so the
number of chunks must stay bounded while the file size is only known at the end. The accumulator starts
with small chunks (``BASE_CHUNK_SIZE``) and, whenever ``MAX_CHUNKS`` chunks are complete, merges adjacent
pairs into chunks of twice the size with ``crc32_combine`` (zlib's algorithm, which Python's ``zlib``
module does not expose; implemented here over GF(2)). So the CRC list never exceeds ``MAX_CHUNKS``
entries (32 KiB as hex) and there is no limit on the checkpoint size: a 1 GiB file has 256 chunks of
4 MiB, a 100 GiB file has 3200 chunks of 32 MiB.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

__all__ = ["BASE_CHUNK_SIZE", "MAX_CHUNKS", "ChunkedCrc32", "chunk_ranges", "crc32_combine"]

#: Size of a chunk before any merge: small enough that ``torch.load`` waits little for the chunk it
#: needs next, large enough that per-chunk bookkeeping is negligible.
BASE_CHUNK_SIZE = 4 * 1024 * 1024
#: Most chunks a trailer holds (8 hex digits each: 32 KiB of the 64 KiB zip comment).
MAX_CHUNKS = 4096

# The CRC32 polynomial (reflected), as used by zlib.
_POLY = 0xEDB88320


def _multiply(a: int, b: int) -> int:
    """Product of two polynomials modulo the CRC32 polynomial (bit-reflected, as zlib's ``multmodp``)."""
    product = 0
    mask = 1 << 31
    while a:
        if a & mask:
            product ^= b
            a ^= mask
        mask >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _powers() -> tuple[int, ...]:
    """``x^(2^k)`` modulo the polynomial, k = 0..63: the squarings ``_shift_operator`` multiplies."""
    power = 1 << 30  # x^1
    table = [power]
    for _ in range(63):
        power = _multiply(power, power)
        table.append(power)
    return tuple(table)


_X_POWERS = _powers()


@lru_cache(maxsize=256)
def _shift_operator(length: int) -> int:
    """``x^(8 * length)`` modulo the polynomial: what advancing a CRC over ``length`` zero bytes multiplies by.

    About 30 small multiplications for any length (zlib's ``x2nmodp``); cached because the writer and the
    reader combine many pieces of the chunk size.
    """
    operator = 1 << 31  # x^0
    exponent, bit = length, 3  # x^(8n) = product of x^(2^(k+3)) over the set bits k of n
    while exponent:
        if exponent & 1:
            operator = _multiply(_X_POWERS[bit % 64], operator)
        exponent >>= 1
        bit += 1
    return operator


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC32 of ``A + B`` from ``crc1 = crc32(A)``, ``crc2 = crc32(B)`` and ``length2 = len(B)``.

    Args:
        crc1: CRC32 of the first block.
        crc2: CRC32 of the second block.
        length2: length of the second block in bytes (>= 0).

    Returns:
        The CRC32 of the concatenation, as ``zlib.crc32`` would compute it.

    Raises:
        ValueError: if ``length2`` is negative.
    """
    if length2 < 0:
        raise ValueError(f"crc32_combine: length2 must be >= 0, got {length2}")
    if length2 == 0:
        return crc1
    return _multiply(_shift_operator(length2), crc1) ^ crc2


def chunk_ranges(total_size: int, chunk_size: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` byte ranges of the chunks covering ``total_size`` bytes.

    Args:
        total_size: number of bytes covered.
        chunk_size: size of every chunk but the last one.

    Returns:
        The ranges in file order; the last one may be shorter.
    """
    assert chunk_size > 0, chunk_size
    return [(start, min(start + chunk_size, total_size)) for start in range(0, total_size, chunk_size)]


class ChunkedCrc32:
    """Accumulates per-chunk CRC32s over a byte stream, merging chunks to stay under ``max_chunks``.

    Not thread-safe: the writer feeds it from one thread at a time.

    Args:
        chunk_size: initial chunk size in bytes.
        max_chunks: most chunks kept; must be even so that pairs can be merged.
    """

    def __init__(self, chunk_size: int = BASE_CHUNK_SIZE, max_chunks: int = MAX_CHUNKS) -> None:
        assert chunk_size > 0 and max_chunks >= 2 and max_chunks % 2 == 0, (chunk_size, max_chunks)
        self._chunk_size = chunk_size
        self._max_chunks = max_chunks
        self._crcs: list[int] = []
        self._current = 0  # running CRC of the chunk being filled
        self._filled = 0  # bytes in the chunk being filled
        self._total = 0

    @property
    def total(self) -> int:
        """Number of bytes fed so far."""
        return self._total

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the stream.

        Args:
            data: a bytes-like object in byte format (``memoryview.cast("B")`` for others).
        """
        view = memoryview(data)
        offset, size = 0, view.nbytes
        while offset < size:
            take = min(size - offset, self._chunk_size - self._filled)
            self._current = zlib.crc32(view[offset : offset + take], self._current)
            self._filled += take
            offset += take
            if self._filled == self._chunk_size:
                self._close_chunk()
        self._total += size

    def pieces(self, size: int) -> list[int]:
        """How to split the next ``size`` bytes of the stream so that no piece crosses a chunk boundary.

        Args:
            size: bytes about to be fed.

        Returns:
            The piece lengths, in stream order (for ``add``; merges only ever remove boundaries).
        """
        lengths: list[int] = []
        room = self._chunk_size - self._filled
        while size > 0:
            take = min(size, room)
            lengths.append(take)
            size -= take
            room = self._chunk_size
        return lengths

    def add(self, crc: int, length: int) -> None:
        """Feed the next ``length`` bytes by their CRC32 (computed elsewhere, e.g. on several threads).

        Args:
            crc: ``zlib.crc32`` of the bytes.
            length: their number, as given by ``pieces`` (the piece must not cross a chunk boundary).
        """
        assert 0 < length <= self._chunk_size - self._filled, (length, self._chunk_size, self._filled)
        self._current = crc if self._filled == 0 else crc32_combine(self._current, crc, length)
        self._filled += length
        self._total += length
        if self._filled == self._chunk_size:
            self._close_chunk()

    def _close_chunk(self) -> None:
        self._crcs.append(self._current)
        self._current = 0
        self._filled = 0
        if len(self._crcs) == self._max_chunks:
            self._merge_pairs()

    def _merge_pairs(self) -> None:
        # The chunk being filled is shorter than the old size, so it simply keeps filling up to the new size.
        operator = _shift_operator(self._chunk_size)
        pairs = zip(self._crcs[0::2], self._crcs[1::2], strict=True)
        self._crcs = [_multiply(operator, first) ^ second for first, second in pairs]
        self._chunk_size *= 2

    def finish(self) -> tuple[int, list[int]]:
        """Close the last (partial) chunk.

        Returns:
            ``(chunk_size, crcs)``: the final chunk size and one CRC32 per chunk, in stream order.
        """
        if self._filled:
            self._crcs.append(self._current)
            self._current = 0
            self._filled = 0
        return self._chunk_size, list(self._crcs)
