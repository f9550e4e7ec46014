"""stepstone's zip writer: torch.save's bytes for every kind of state, CRCs hashed once, loadable by torch."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from stepstone.checkpoint import torch_zip
from stepstone.checkpoint.checksum import ChunkedCrc32
from stepstone.checkpoint.format import write_checkpoint
from stepstone.checkpoint.outputs import FdOutput
from stepstone.checkpoint.sink import ChecksummingSink

META = {"step": 1, "epoch": 0, "metrics": {}, "created": 1.0, "producer": "test"}
_FLOAT8 = [getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)]
_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
    torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128, *_FLOAT8,
]  # fmt: skip


def _dtype_tensor(dtype: torch.dtype) -> torch.Tensor:
    values = torch.arange(-3, 9, dtype=torch.float32).view(3, 4)
    if dtype.is_complex:
        return torch.complex(values, -values).to(dtype)
    return values.to(dtype)


def _states() -> dict[str, Any]:
    base = torch.arange(24, dtype=torch.float32).view(4, 6)
    shared = torch.randn(10)
    weight = torch.nn.Parameter(torch.randn(3, 2))
    return {
        "shared_storage": {"a": shared, "b": shared[2:7], "c": shared.view(2, 5)},
        "views_and_offsets": {"row": base[1], "col": base[:, 2], "tail": base.flatten()[5:]},
        "non_contiguous": {"t": base.t(), "strided": base[::2, ::3]},
        "dtypes": {str(dtype): _dtype_tensor(dtype) for dtype in _DTYPES},
        "empty": {"e": torch.zeros(0), "e2": torch.empty(0, 3, dtype=torch.int64), "s": torch.tensor(3.5)},
        "requires_grad": {"p": weight, "t": torch.ones(2, requires_grad=True)},
        "nested": {"x": [1, 2.5, "s", None, (True, False, (3, [4]))], "y": {"z": {"w": torch.ones(2)}}},
        "ordered": OrderedDict([("b", torch.ones(1)), ("a", torch.zeros(2))]),
        "size": {"shape": torch.Size([2, 3]), "dtype": torch.float16},
        "lightning": _lightning_checkpoint(),
        "large": {"big": torch.randn(600_000), "small": torch.ones(3), "big2": torch.arange(400_000)},
        "plain_list": [torch.ones(2), 3, "x"],
    }


def _lightning_checkpoint() -> dict[str, Any]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": model.state_dict(),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 2}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "best_k_models": {}}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.001, "layers": [4, 3, 1]},
    }


class _Sink:
    """A ``MemberSink`` collecting the bytes, hashing members with a real ``ChecksummingSink``."""

    def __init__(self, chunk_size: int = 1 << 20) -> None:
        self.buffer = bytearray()
        self.crc = ChunkedCrc32(chunk_size, 4)
        self._pool = ThreadPoolExecutor(2)
        self._sink = ChecksummingSink(self, self.crc, None, None, self._pool)

    def write_all(self, data: memoryview) -> None:
        self.buffer += data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._sink.write(data)

    def write_member(self, data: bytes | bytearray | memoryview) -> int:
        return self._sink.write_member(data)

    def finish(self) -> bytes:
        tail = self._sink.finish()
        self._pool.shutdown()
        return bytes(self.buffer) + tail


def _torch_bytes(state: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_the_layout_of_this_torch_is_reproduced() -> None:
    assert torch_zip.supported()


@pytest.mark.parametrize("name", sorted(_states()))
def test_bytes_equal_torch_save_but_the_id_name_hash(name: str) -> None:
    state = _states()[name]
    expected = _torch_bytes(state)
    identity = zipfile.ZipFile(io.BytesIO(expected)).read("archive/.data/serialization_id")
    sink = _Sink(chunk_size=64 * 1024)  # small chunks: members cross chunk boundaries and merges happen
    writer = torch_zip.TorchZipWriter(sink, 64, torch_zip._calibration()[0])
    torch.serialization._save(state, writer, pickle, 2, False)
    computed = writer.write_end_of_file(identity)
    data = sink.finish()
    assert data == expected
    assert computed[20:] == identity[20:]  # torch's hash of the record CRCs
    # The trailer's chunk CRCs cover the same bytes, each hashed once.
    chunk_size, crcs = sink.crc.finish()
    assert crcs == [zlib.crc32(data[i : i + chunk_size]) for i in range(0, len(data), chunk_size)]


def _assert_same(loaded: Any, expected: Any) -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(loaded, torch.Tensor) and type(loaded) is type(expected)
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
        assert loaded.stride() == expected.stride() and loaded.storage_offset() == expected.storage_offset()
        assert loaded.requires_grad == expected.requires_grad
        if expected.dtype in _FLOAT8:  # no equality kernel for float8: compare the bits
            loaded, expected = loaded.view(torch.uint8), expected.view(torch.uint8)
        assert torch.equal(loaded, expected)
    elif isinstance(expected, dict):
        assert type(loaded) is type(expected) and list(loaded) == list(expected)
        for key in expected:
            _assert_same(loaded[key], expected[key])
    elif isinstance(expected, (list, tuple)) and not isinstance(expected, torch.Size):
        assert type(loaded) is type(expected) and len(loaded) == len(expected)
        for item, want in zip(loaded, expected, strict=True):
            _assert_same(item, want)
    else:
        assert loaded == expected and type(loaded) is type(expected)


@pytest.mark.parametrize("name", sorted(_states()))
def test_checkpoint_files_load_with_torch(tmp_path: Path, name: str) -> None:
    state = _states()[name]
    path = tmp_path / "c.ckpt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        write_checkpoint(state, FdOutput(fd), META)
    finally:
        os.close(fd)
    assert zipfile.ZipFile(path).testzip() is None  # every member CRC is valid
    for mmap in (False, True):
        _assert_same(torch.load(path, weights_only=True, mmap=mmap), state)


def test_shared_storages_stay_shared_after_loading(tmp_path: Path) -> None:
    shared = torch.randn(10)
    path = tmp_path / "c.ckpt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        write_checkpoint({"a": shared, "b": shared[3:]}, FdOutput(fd), META)
    finally:
        os.close(fd)
    loaded = torch.load(path, weights_only=True)
    assert loaded["a"].untyped_storage().data_ptr() == loaded["b"].untyped_storage().data_ptr()
    assert len(zipfile.ZipFile(path).namelist()) == 7  # pickle, 3 small records, one storage, 2 end records


def test_skip_data_falls_back_to_torch_save() -> None:
    with torch.serialization.skip_data():
        assert not torch_zip.supported()
    assert torch_zip.supported()


def test_zip64_fields_follow_miniz() -> None:
    assert torch_zip._zip64_extra(10, 10, 100) == b""
    big = 1 << 32
    assert torch_zip._zip64_extra(big, 0, 100) == b"\x01\x00\x10\x00" + big.to_bytes(8, "little") + bytes(8)
    assert torch_zip._zip64_extra(5, 5, big) == b"\x01\x00\x08\x00" + big.to_bytes(8, "little")
    # torch's getPadding: the data starts aligned, counting the zip64 field when there is one.
    for offset, size in ((0, 5), (big, 5), (7, big), (big + 3, big)):
        name = 14
        extra = len(torch_zip._zip64_extra(size, 0, offset))
        padding = torch_zip._padding(offset, name, size, 64)
        assert (offset + 30 + name + extra + 4 + padding) % 64 == 0 and padding < 64


class _FileSink(_Sink):
    """A ``_Sink`` that streams to a file (a > 4 GiB archive does not fit comfortably in memory twice)."""

    def __init__(self, handle: Any) -> None:
        super().__init__(chunk_size=64 << 20)
        self._handle = handle

    def write_all(self, data: memoryview) -> None:
        self._handle.write(data)

    def finish(self) -> bytes:
        self._handle.write(self._sink.finish())
        self._pool.shutdown()
        return b""


def _first_difference(left: Path, right: Path) -> int | None:
    block = 64 << 20
    with open(left, "rb") as a, open(right, "rb") as b:
        offset = 0
        while True:
            x, y = a.read(block), b.read(block)
            if x != y:
                return offset + next(
                    (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y))
                )
            if not x:
                return None
            offset += len(x)


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_a_zip64_archive_over_4_gib_equals_torch_save_byte_for_byte(tmp_path: Path) -> None:
    """Run with ``pytest -m long``; needs about 2x the size in free disk (9 GiB) and the size in memory.

    ``STEPSTONE_LONG_TEST_GIB`` overrides the size of the big tensor (default 4.25 GiB, past the 4 GiB zip64
    limit, so its record needs zip64 sizes and the record after it a zip64 offset).
    """
    size = int(float(os.environ.get("STEPSTONE_LONG_TEST_GIB", "4.25")) * 2**30)
    big = torch.arange(256, dtype=torch.uint8).repeat(size // 256 + 1)[:size]
    state = {"big": big, "after": torch.arange(10, dtype=torch.int64), "meta": {"step": 1}}
    reference = tmp_path / "torch.pt"
    with open(reference, "wb") as handle:  # a file object: the records are named archive/..., as ours
        torch.save(state, handle)
    with zipfile.ZipFile(reference) as archive:
        identity = archive.read("archive/.data/serialization_id")
    ours = tmp_path / "stepstone.pt"
    with open(ours, "wb") as handle:
        sink = _FileSink(handle)
        writer = torch_zip.TorchZipWriter(sink, 64, torch_zip._calibration()[0])
        torch.serialization._save(state, writer, pickle, 2, False)
        writer.write_end_of_file(identity)
        sink.finish()
    assert _first_difference(ours, reference) is None
    assert os.path.getsize(reference) > size
