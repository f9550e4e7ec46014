"""Chunk verification, and the reader that only hands verified bytes to torch.load."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepstone.checkpoint.checksum import chunk_ranges
from stepstone.checkpoint.format import TrailerInfo
from stepstone.checkpoint.verification import ChunkVerifier, VerifiedReader, verify_buffer
from stepstone.errors import CheckpointCorruptError

# Every save here runs on both serializers (the fast zip writer and the reference torch.save).
pytestmark = pytest.mark.usefixtures("serializer")

TRAILER = b"T" * 40  # stands for the trailer: the verifier only needs its size


def _synthetic(zip_part: bytes, chunk_size: int) -> tuple[bytes, TrailerInfo]:
    """A file whose last 2 zip bytes hold the trailer length, as in a real checkpoint."""
    hashed = zip_part[:-2] + b"\x00\x00"
    crcs = tuple(zlib.crc32(hashed[a:b]) for a, b in chunk_ranges(len(hashed), chunk_size))
    data = zip_part[:-2] + len(TRAILER).to_bytes(2, "little") + TRAILER
    return data, TrailerInfo(len(zip_part), chunk_size, crcs, {}, len(TRAILER))


def _open(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "f.ckpt"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(min_value=3, max_value=200), chunk_size=st.integers(min_value=1, max_value=40))
def test_every_chunk_boundary_near_the_comment_length_verifies(size: int, chunk_size: int) -> None:
    # The last chunk may hold 1 byte, or split the 2 comment-length bytes: the zeros must be hashed right.
    data, info = _synthetic(bytes((i * 7 + 3) % 256 for i in range(size)), chunk_size)
    verify_buffer(memoryview(data), info, "mem", threads=1)
    damaged = bytearray(data)
    damaged[0] ^= 1
    with pytest.raises(CheckpointCorruptError):
        verify_buffer(memoryview(bytes(damaged)), info, "mem", threads=1)


def test_verify_all_and_detection_naming_the_range(tmp_path: Path) -> None:
    data, info = _synthetic(os.urandom(100_000), 4096)
    fd = _open(tmp_path, data)
    try:
        ChunkVerifier(fd, info, "good.ckpt").verify_all(threads=2)
    finally:
        os.close(fd)
    damaged = bytearray(data)
    damaged[50_000] ^= 1
    fd = _open(tmp_path, bytes(damaged))
    try:
        with pytest.raises(CheckpointCorruptError) as error:
            ChunkVerifier(fd, info, "bad.ckpt").verify_all(threads=2)
    finally:
        os.close(fd)
    assert error.value.path == "bad.ckpt" and "chunk 12 (bytes 49152-53248)" in error.value.reason


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    data, info = _synthetic(os.urandom(10_000), 1000)
    fd = _open(tmp_path, data[:5000])
    try:
        with pytest.raises(CheckpointCorruptError, match="ends early"):
            ChunkVerifier(fd, info, "cut.ckpt").verify_all(threads=1)
    finally:
        os.close(fd)


def test_reader_returns_verified_bytes_with_file_semantics(tmp_path: Path) -> None:
    data, info = _synthetic(os.urandom(50_000), 1024)
    fd = _open(tmp_path, data)
    try:
        verifier = ChunkVerifier(fd, info, "f.ckpt")
        with verifier.background(threads=1):
            reader = VerifiedReader(fd, len(data), verifier)
            assert reader.read(4) == data[:4]
            assert reader.seek(-10, io.SEEK_END) == len(data) - 10
            assert reader.read() == data[-10:]
            reader.seek(30_000)
            assert reader.read(5000) == data[30_000:35_000] and reader.tell() == 35_000
            assert reader.read(0) == b""
            verifier.finish()
    finally:
        os.close(fd)


def test_reader_refuses_bytes_of_a_damaged_chunk_and_everything_after(tmp_path: Path) -> None:
    data, info = _synthetic(os.urandom(50_000), 1024)
    damaged = bytearray(data)
    damaged[20_000] ^= 0x80
    fd = _open(tmp_path, bytes(damaged))
    try:
        verifier = ChunkVerifier(fd, info, "f.ckpt")  # no background thread: deterministic order
        reader = VerifiedReader(fd, len(data), verifier)
        assert reader.read(100) == data[:100]
        reader.seek(19_900)
        with pytest.raises(CheckpointCorruptError, match="chunk 19"):
            reader.read(200)
        reader.seek(0)
        with pytest.raises(CheckpointCorruptError):  # fail fast: nothing more is served from this file
            reader.read(10)
        with pytest.raises(CheckpointCorruptError):
            verifier.finish()
        assert verifier.failure is not None
    finally:
        os.close(fd)


def test_bounded_read_ahead_still_verifies_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stepstone.checkpoint.verification as verification

    monkeypatch.setattr(verification, "READ_AHEAD", 2048)
    data, info = _synthetic(os.urandom(64_000), 512)
    fd = _open(tmp_path, data)
    try:
        verifier = ChunkVerifier(fd, info, "f.ckpt")
        with verifier.background(threads=2):
            reader = VerifiedReader(fd, len(data), verifier)
            reader.seek(60_000)
            assert reader.read(100) == data[60_000:60_100]
            verifier.finish()
    finally:
        os.close(fd)
