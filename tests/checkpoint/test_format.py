"""The file layout: torch's zip unchanged, plus the trailer in the end-of-central-directory comment."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from typing import Any

import pytest
import torch

from stepstone.checkpoint import format as fmt
from stepstone.checkpoint.checksum import ChunkedCrc32
from stepstone.checkpoint.format import (
    FORMAT_VERSION,
    MAGIC,
    MAX_METADATA_BYTES,
    TAIL_SIZE,
    check_metadata_size,
    encode_trailer,
    parse_tail,
    write_checkpoint,
)
from stepstone.errors import CheckpointCorruptError, CheckpointError, MisconfigurationException

META = {"step": 7, "epoch": 1, "metrics": {"loss": 0.25}, "created": 1.0, "producer": "test"}


class BytesOutput:
    """A RawOutput collecting everything in memory."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write_all(self, data: memoryview) -> None:
        self.buffer += data


def _write(state: dict[str, Any]) -> tuple[bytes, fmt.TrailerInfo]:
    output = BytesOutput()
    info = write_checkpoint(state, output, META)
    return bytes(output.buffer), info


def _parse(data: bytes, name: str = "f.ckpt") -> fmt.TrailerInfo | None:
    return parse_tail(data[-TAIL_SIZE:], data[:4], len(data), name)


def test_zip_part_is_what_torch_save_writes_and_the_trailer_is_its_comment(state: dict[str, Any]) -> None:
    data, info = _write(state)
    plain = io.BytesIO()
    torch.save(state, plain)
    reference = plain.getvalue()
    # Same bytes up to the EOCD comment length (torch's serialization id is random: compare the structure).
    assert info.zip_size == len(reference) and len(data) == info.zip_size + info.trailer_size
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # torch's own member CRCs are intact: zip tools agree
        assert archive.comment == data[info.zip_size :]
        assert archive.comment.endswith(MAGIC)
        with zipfile.ZipFile(io.BytesIO(reference)) as expected:
            assert [i.filename for i in archive.infolist()] == [i.filename for i in expected.infolist()]
    assert _parse(data) == info


def test_torch_load_reads_the_file_unchanged(state: dict[str, Any], same: Any, tmp_path: Any) -> None:
    data, _ = _write(state)
    same(torch.load(io.BytesIO(data), weights_only=True), state)
    path = tmp_path / "x.ckpt"
    path.write_bytes(data)
    same(torch.load(path, weights_only=True, mmap=True), state)


def test_trailer_json_content(state: dict[str, Any]) -> None:
    data, info = _write(state)
    json_size, json_crc = struct.unpack("<II", data[-16:-8])
    body = json.loads(data[-16 - json_size : -16])
    assert zlib.crc32(data[-16 - json_size : -16]) == json_crc
    assert body["format"] == "stepstone" and body["format_version"] == FORMAT_VERSION
    assert body["zip_size"] == info.zip_size and body["metadata"] == META
    assert len(body["crc32"]) == 8 * len(info.crcs)
    # The CRCs cover the zip bytes with the EOCD comment length still 0x0000.
    zip_bytes = bytearray(data[: info.zip_size])
    zip_bytes[-2:] = b"\x00\x00"
    assert list(info.crcs) == [zlib.crc32(zip_bytes[a:b]) for a, b in info.ranges()]


def test_files_without_trailer_are_recognized(state: dict[str, Any]) -> None:
    plain = io.BytesIO()
    torch.save(state, plain)
    assert _parse(plain.getvalue()) is None
    legacy = io.BytesIO()
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert not legacy.getvalue().startswith(b"PK")
    assert _parse(legacy.getvalue()) is None


@pytest.mark.parametrize("cut", [1, 2, 8, 16, 17, 100, 5000])
def test_truncated_end_is_corrupt_not_legacy(state: dict[str, Any], cut: int) -> None:
    data, info = _write(state)
    with pytest.raises(CheckpointCorruptError) as error:
        _parse(data[:-cut], "cut.ckpt")
    assert error.value.path == "cut.ckpt"
    # Cutting exactly the trailer leaves a zip whose EOCD still announces it: corrupt too.
    with pytest.raises(CheckpointCorruptError):
        _parse(data[: info.zip_size])


def test_damaged_trailer_fields_are_corrupt(state: dict[str, Any]) -> None:
    data, info = _write(state)
    for offset in range(len(data) - info.trailer_size - 22, len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x10
        try:
            parsed = _parse(bytes(damaged))
        except CheckpointCorruptError:
            continue
        # Only the EOCD bytes covered by the chunk CRCs may still parse (the verifier catches them).
        assert parsed is not None and offset < info.zip_size


def test_newer_format_version_is_a_clear_error_not_corruption(state: dict[str, Any]) -> None:
    data, info = _write(state)
    body = json.loads(data[info.zip_size : -16])
    body["format_version"] = FORMAT_VERSION + 1
    trailer = json.dumps(body).encode()
    trailer += struct.pack("<II", len(trailer), zlib.crc32(trailer)) + MAGIC
    rebuilt = data[: info.zip_size - 2] + struct.pack("<H", len(trailer)) + trailer
    with pytest.raises(CheckpointError, match="Upgrade stepstone") as error:
        _parse(rebuilt)
    assert not isinstance(error.value, CheckpointCorruptError)


def test_tiny_files_are_corrupt() -> None:
    with pytest.raises(CheckpointCorruptError, match="only 3 bytes"):
        parse_tail(b"abc", b"abc", 3, "tiny")


def test_metadata_size_is_limited_before_writing() -> None:
    check_metadata_size({"metrics": {"m": 1.0}})
    big = {"metrics": {f"metric_{i}": 1.0 for i in range(MAX_METADATA_BYTES // 10)}}
    with pytest.raises(MisconfigurationException, match="fewer metrics"):
        check_metadata_size(big)


def test_trailer_fits_the_zip_comment_at_the_limits() -> None:
    metadata = {"x": "y" * (MAX_METADATA_BYTES - 10)}
    trailer = encode_trailer(2**45, 2**33, [0xFFFFFFFF] * 4096, metadata)
    assert len(trailer) <= 0xFFFF


def test_many_chunks_are_merged(state: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fmt, "ChunkedCrc32", lambda: ChunkedCrc32(chunk_size=64, max_chunks=16))
    data, info = _write(state)
    assert len(info.crcs) <= 16 and info.chunk_size > 64
    assert _parse(data) == info


def test_unexpected_torch_output_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_save(obj: object, sink: Any) -> None:
        sink.write(b"x" * 100)

    monkeypatch.setattr(fmt.torch_zip, "save", fake_save)
    with pytest.raises(CheckpointError, match="not supported"):
        write_checkpoint({"a": 1}, BytesOutput(), META)


def test_output_errors_surface_unwrapped(state: dict[str, Any]) -> None:
    class FailingOutput:
        def write_all(self, data: memoryview) -> None:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(state, FailingOutput(), META)
