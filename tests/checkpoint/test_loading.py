"""Loading: verified before any object is returned, never executing code from the file unless trusted."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepstone.checkpoint import format as fmt
from stepstone.checkpoint import load_file, save_file, verify_file
from stepstone.checkpoint.checksum import ChunkedCrc32
from stepstone.checkpoint.outputs import FdOutput
from stepstone.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
)

DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.bool,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.float8_e4m3fn,
]


def _rich_state() -> dict[str, Any]:
    base = torch.arange(4096, dtype=torch.float32)
    tensors = {str(dtype): torch.ones(5, 3).to(dtype) for dtype in DTYPES}
    return {
        "tensors": tensors,
        "big": torch.randn(600_000),  # > 1 MiB: written without a copy
        "base": base,
        "view": base[100:200],
        "strided": base.view(64, 64).t(),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 7),
        "param": torch.nn.Parameter(torch.ones(4)),
        "nested": {"list": [1, 2.5, "x", None, (True, b"b")], "inner": {"deep": {"x": torch.zeros(2)}}},
    }


def test_round_trip_keeps_values_dtypes_and_sharing(tmp_path: Path, same: Any) -> None:
    state = _rich_state()
    path = tmp_path / "rich.ckpt"
    save_file(path, state)
    for kwargs in ({}, {"mmap": True}, {"verify": False}):
        loaded = load_file(path, **kwargs)
        same(loaded, state)
        assert loaded["view"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()
        assert loaded["strided"].stride() == (1, 64)
        assert isinstance(loaded["param"], torch.nn.Parameter)


def test_plain_torch_load_reads_stepstone_files(tmp_path: Path, same: Any) -> None:
    state = _rich_state()
    path = tmp_path / "rich.ckpt"
    save_file(path, state)
    same(torch.load(path, weights_only=True), state)
    same(torch.load(path, weights_only=True, mmap=True), state)


def test_map_location_is_passed_to_torch(tmp_path: Path, state: dict[str, Any]) -> None:
    path = tmp_path / "a.ckpt"
    save_file(path, state)
    loaded = load_file(path, map_location=torch.device("meta"))
    assert loaded["state_dict"]["layer.weight"].device.type == "meta"
    loaded = load_file(path, map_location={"cpu": "meta"})
    assert loaded["state_dict"]["layer.bias"].is_meta


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """A small checkpoint (several chunks thanks to a small chunk size) and its zip size."""
    path = tmp_path_factory.mktemp("saved") / "good.ckpt"
    state = {"w": torch.randn(20_000), "meta": {"step": 3, "names": ["a", "b"]}, "b": torch.arange(50)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fmt, "ChunkedCrc32", lambda: ChunkedCrc32(chunk_size=8192))
        info = save_file(path, state)
    assert len(fmt.parse_tail(path.read_bytes()[-fmt.TAIL_SIZE :], b"PK", info.size, "x").crcs) > 8  # type: ignore[union-attr]
    return path.read_bytes(), info.size


def _expect_corrupt(directory: Path, data: bytes) -> None:
    path = directory / "damaged.ckpt"
    path.write_bytes(data)
    with pytest.raises(CheckpointCorruptError) as error:
        load_file(path)
    assert error.value.path == str(path) and str(path) in str(error.value)
    with pytest.raises(CheckpointCorruptError):
        verify_file(path)


def _data_start(data: bytes, info: zipfile.ZipInfo) -> int:
    header = info.header_offset
    name_length = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(data[header + 28 : header + 30], "little")
    return header + 30 + name_length + extra_length


def _regions(data: bytes) -> dict[str, int]:
    """An offset inside each region of a checkpoint file."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        pickle_member = next(i for i in infos if i.filename.endswith("data.pkl"))
        storage_member = next(i for i in infos if "/data/" in i.filename)
        central_directory = archive.start_dir
    eocd = data.rfind(b"PK\x05\x06")
    return {
        "local header": storage_member.header_offset + 2,
        "pickle": _data_start(data, pickle_member) + 5,
        "tensor data": _data_start(data, storage_member) + 200,
        "central directory": central_directory + 10,
        "end record": eocd + 10,
        "comment length": eocd + 21,
        "trailer json": eocd + 40,
        "trailer footer": len(data) - 12,
        "magic": len(data) - 3,
    }


@pytest.mark.parametrize(
    "region",
    [
        "local header",
        "pickle",
        "tensor data",
        "central directory",
        "end record",
        "comment length",
        "trailer json",
        "trailer footer",
        "magic",
    ],
)
def test_a_flipped_bit_in_every_region_is_detected(
    saved: tuple[bytes, int], tmp_path: Path, region: str
) -> None:
    data = saved[0]
    offset = _regions(data)[region]
    damaged = bytearray(data)
    damaged[offset] ^= 0x04
    _expect_corrupt(tmp_path, bytes(damaged))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(min_value=0, max_value=1, exclude_max=True), bit=st.integers(0, 7))
def test_a_flipped_bit_anywhere_is_detected(
    saved: tuple[bytes, int], tmp_path: Path, position: float, bit: int
) -> None:
    data = saved[0]
    damaged = bytearray(data)
    damaged[int(position * len(data))] ^= 1 << bit
    _expect_corrupt(tmp_path, bytes(damaged))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keep=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_truncation_anywhere_is_detected(saved: tuple[bytes, int], tmp_path: Path, keep: float) -> None:
    data = saved[0]
    _expect_corrupt(tmp_path, data[: int(keep * len(data))])


def test_corrupt_pickle_is_reported_as_corruption_not_as_unsafe(
    saved: tuple[bytes, int], tmp_path: Path
) -> None:
    data = saved[0]
    damaged = bytearray(data)
    offset = _regions(data)["pickle"]
    damaged[offset : offset + 8] = b"\x80\x02c__main__\n"[:8]  # looks like a pickle GLOBAL: must not matter
    _expect_corrupt(tmp_path, bytes(damaged))


class Payload:
    """Unpickling this creates the sentinel file: proof that code from the file ran."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.sentinel, "w"))


def test_pickle_payload_never_runs_unless_trusted(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"x": Payload(str(sentinel))}, path)  # a plain torch/Lightning file, no trailer
    with pytest.raises(UnsafeCheckpointError) as error:
        load_file(path)
    assert str(path) in str(error.value) and "trusted=True" in str(error.value)
    reason = str(error.value)  # carries torch's own reason
    assert "GLOBAL io.open" in reason or "GLOBAL builtins.open" in reason
    assert not sentinel.exists()
    loaded = load_file(path, trusted=True)
    assert sentinel.exists()
    loaded["x"].close()


def test_payload_inside_a_verified_stepstone_file_still_never_runs(tmp_path: Path) -> None:
    # A crafted file: valid trailer and checksums, but a pickle that needs code execution.
    sentinel = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fmt.write_checkpoint({"x": Payload(str(sentinel))}, FdOutput(fd), {"step": 1})
    finally:
        os.close(fd)
    assert verify_file(path).verified
    with pytest.raises(UnsafeCheckpointError, match="trusted=True"):
        load_file(path)
    assert not sentinel.exists()


def test_files_without_trailer_load_unverified(tmp_path: Path, same: Any, state: dict[str, Any]) -> None:
    plain, legacy = tmp_path / "plain.ckpt", tmp_path / "legacy.pt"
    torch.save(state, plain)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    same(load_file(plain), state)
    same(load_file(plain, mmap=True), state)
    same(load_file(legacy), state)


def test_damaged_plain_zip_is_reported_as_corrupt(tmp_path: Path, state: dict[str, Any]) -> None:
    path = tmp_path / "plain.ckpt"
    torch.save(state, path)
    data = bytearray(path.read_bytes())
    start = data.rfind(b"PK\x01\x02")  # damage a central directory entry; the end record stays intact
    data[start : start + 4] = b"XXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="zip archive"):
        load_file(path)


def test_missing_and_directory_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="No checkpoint file"):
        load_file(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointNotFoundError, match="not a checkpoint file"):
        load_file(tmp_path)


def test_non_dict_content_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(2), path)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a checkpoint dict"):
        load_file(path)


def test_torch_errors_are_wrapped_with_the_file_name(tmp_path: Path, state: dict[str, Any]) -> None:
    path = tmp_path / "a.ckpt"
    save_file(path, state)
    with pytest.raises(CheckpointError) as error:
        load_file(path, map_location="no-such-device")
    assert str(path) in str(error.value) and "checksums verified" in str(error.value)
    assert not isinstance(error.value, CheckpointCorruptError)


def test_unpickling_errors_never_escape_raw(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2)[:-3])  # not a zip, broken legacy pickle
    with pytest.raises(CheckpointError):
        load_file(path)


def test_verify_false_checks_nothing_and_salvages_what_torch_can_read(
    tmp_path: Path, memory_dir: str, state: dict[str, Any], same: Any
) -> None:
    for url in (str(tmp_path / "a.ckpt"), f"{memory_dir}/a.ckpt"):
        save_file(url, state)
        with fsspec.open(url, "rb") as stream:
            data = bytearray(stream.read())
        data[-20] ^= 0xFF  # damage the trailer only: the zip part is intact
        with fsspec.open(url, "wb") as stream:
            stream.write(bytes(data))
        with pytest.raises(CheckpointCorruptError):
            load_file(url)
        same(load_file(url, verify=False), state)
