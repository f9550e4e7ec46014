"""Chunked CRC32: per-chunk checksums, CRC combination and chunk merging."""

from __future__ import annotations

import itertools
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepstone.checkpoint.checksum import (
    BASE_CHUNK_SIZE,
    MAX_CHUNKS,
    ChunkedCrc32,
    chunk_ranges,
    crc32_combine,
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32_combine_equals_crc_of_concatenation(first: bytes, second: bytes) -> None:
    combined = crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
    assert combined == zlib.crc32(first + second)


def test_crc32_combine_large_length_and_edge_cases() -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    assert crc32_combine(zlib.crc32(b"head"), zlib.crc32(block), len(block)) == zlib.crc32(b"head" + block)
    assert crc32_combine(1234, zlib.crc32(b""), 0) == 1234
    with pytest.raises(ValueError, match="length2"):
        crc32_combine(0, 0, -1)


def _expected(data: bytes, chunk_size: int) -> list[int]:
    return [zlib.crc32(data[start:end]) for start, end in chunk_ranges(len(data), chunk_size)]


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    chunk_size=st.integers(min_value=1, max_value=64),
    max_chunks=st.sampled_from([2, 4, 8, 64]),
)
def test_chunked_crc_matches_direct_computation_for_any_split(
    data: bytes, cuts: list[int], chunk_size: int, max_chunks: int
) -> None:
    accumulator = ChunkedCrc32(chunk_size=chunk_size, max_chunks=max_chunks)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(bounds):
        accumulator.update(memoryview(data)[start:end])
    final_size, crcs = accumulator.finish()
    assert accumulator.total == len(data)
    assert len(crcs) <= max_chunks
    # Merging only ever doubles the chunk size.
    assert final_size % chunk_size == 0 and (final_size // chunk_size) & (final_size // chunk_size - 1) == 0
    assert crcs == _expected(data, final_size)


def test_merging_keeps_at_most_max_chunks_and_doubles_the_size() -> None:
    accumulator = ChunkedCrc32(chunk_size=4, max_chunks=4)
    data = bytes(range(100))
    accumulator.update(data)
    size, crcs = accumulator.finish()
    assert (size, len(crcs)) == (32, 4)  # 4 -> 8 -> 16 -> 32 bytes per chunk
    assert crcs == _expected(data, 32)


def test_defaults_bound_the_trailer() -> None:
    assert MAX_CHUNKS * 8 <= 32 * 1024  # hex CRC list fits in half of the 64 KiB zip comment
    assert BASE_CHUNK_SIZE == 4 * 1024 * 1024


def test_chunk_ranges_cover_everything_once() -> None:
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(8, 4) == [(0, 4), (4, 8)]
    assert chunk_ranges(0, 4) == []


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    chunk_size=st.integers(min_value=1, max_value=64),
    max_chunks=st.sampled_from([2, 4, 64]),
)
def test_feeding_piece_crcs_equals_feeding_the_bytes(
    data: bytes, cuts: list[int], chunk_size: int, max_chunks: int
) -> None:
    accumulator = ChunkedCrc32(chunk_size=chunk_size, max_chunks=max_chunks)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(bounds):
        # One "member": split where the chunks end, hashed piece by piece, folded in without the bytes.
        offset = start
        for length in accumulator.pieces(end - start):
            accumulator.add(zlib.crc32(data[offset : offset + length]), length)
            offset += length
        assert offset == end
    final_size, crcs = accumulator.finish()
    assert accumulator.total == len(data) and len(crcs) <= max_chunks
    assert crcs == _expected(data, final_size)


def test_combine_with_cached_and_uncached_lengths() -> None:
    block = bytes(range(256)) * 16384  # 4 MiB: the chunk size, cached
    for tail in (block, block[:12345], b"x"):
        assert crc32_combine(zlib.crc32(block), zlib.crc32(tail), len(tail)) == zlib.crc32(block + tail)
