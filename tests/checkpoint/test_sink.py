"""The sink torch.save writes into: every byte written once, in order, and checksummed in order."""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from stepstone.checkpoint.checksum import ChunkedCrc32
from stepstone.checkpoint.sink import HOLD, ChecksummingSink
from stepstone.checkpoint.stable_memory import StableMemory


class BytesOutput:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.calls = 0

    def write_all(self, data: memoryview) -> None:
        self.calls += 1
        self.buffer += data


def _pieces() -> tuple[torch.Tensor, list[bytes | memoryview]]:
    big = torch.arange(3 * 1024 * 1024, dtype=torch.uint8)  # 3 MiB: the direct path
    pieces: list[bytes | memoryview] = [os.urandom(n) for n in (30, 1000, 70_000)]
    pieces += [memoryview(big.numpy()), os.urandom(2 * 1024 * 1024), b"tail-of-stream-" * 3]
    return big, pieces


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("stable", [False, True])
def test_bytes_and_crcs_are_exact_on_every_path(threads: bool, stable: bool) -> None:
    big, pieces = _pieces()
    output, crc = BytesOutput(), ChunkedCrc32(chunk_size=1 << 20)
    with ThreadPoolExecutor(1) as pool:
        sink = ChecksummingSink(
            output, crc, pool if threads else None, StableMemory({"t": big}) if stable else None
        )
        for piece in pieces:
            assert sink.write(piece) == memoryview(piece).nbytes
        sink.flush()
        tail = sink.finish()
    stream = b"".join(bytes(p) for p in pieces)
    assert tail == stream[-HOLD:] and bytes(output.buffer) == stream[:-HOLD]
    assert sink.total == crc.total == len(stream)
    size, crcs = crc.finish()
    assert crcs == [zlib.crc32(stream[i : i + size]) for i in range(0, len(stream), size)]


def test_small_writes_are_batched() -> None:
    output = BytesOutput()
    sink = ChecksummingSink(output, ChunkedCrc32(), None, None)
    for _ in range(10_000):
        sink.write(b"h" * 30)
    sink.finish()
    assert output.calls <= 2


def test_non_byte_memoryviews_are_accepted() -> None:
    output, crc = BytesOutput(), ChunkedCrc32()
    floats = torch.arange(10, dtype=torch.float32).numpy()
    sink = ChecksummingSink(output, crc, None, None)
    sink.write(memoryview(floats))
    tail = sink.finish()
    assert bytes(output.buffer) + tail == floats.tobytes()


def test_output_error_is_recorded_and_raised() -> None:
    class Failing:
        def write_all(self, data: memoryview) -> None:
            raise OSError(28, "No space left on device")

    with ThreadPoolExecutor(1) as pool:
        sink = ChecksummingSink(Failing(), ChunkedCrc32(), pool, None)
        with pytest.raises(OSError, match="No space"):
            sink.write(os.urandom(2 * 1024 * 1024))
    assert isinstance(sink.error, OSError)


def test_stream_shorter_than_the_end_record_is_refused() -> None:
    sink = ChecksummingSink(BytesOutput(), ChunkedCrc32(), None, None)
    sink.write(b"short")
    with pytest.raises(ValueError, match="shorter"):
        sink.finish()


@pytest.mark.parametrize("pieces_pool", [False, True])
def test_members_are_written_once_and_hashed_once(pieces_pool: bool) -> None:
    big = torch.randint(0, 255, (5 * 1024 * 1024 + 7,), dtype=torch.uint8)
    members: list[bytes | memoryview] = [memoryview(big.numpy()), os.urandom(3000), os.urandom(1 << 21)]
    output, crc = BytesOutput(), ChunkedCrc32(chunk_size=1 << 20, max_chunks=4)  # merges happen
    with ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(2) as pieces:
        sink = ChecksummingSink(output, crc, pool, None, pieces if pieces_pool else None)
        sink.write(b"header")
        for member in members:
            assert sink.write_member(member) == zlib.crc32(member)
            sink.write(b"descriptor")
        sink.write(b"x" * HOLD)
        tail = sink.finish()
    stream = bytes(output.buffer) + tail
    expected = b"header" + b"".join(bytes(m) + b"descriptor" for m in members) + b"x" * HOLD
    assert stream == expected and sink.total == crc.total == len(expected)
    size, crcs = crc.finish()
    assert crcs == [zlib.crc32(expected[i : i + size]) for i in range(0, len(expected), size)]
