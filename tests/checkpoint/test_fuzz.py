"""Fuzzing the loader: any mutation of a checkpoint raises only stepstone's errors -- no crash, hang or leak.

Mutations: multi-byte overwrites, insertions, deletions, truncations, and zip-structure-aware edits (record
names, sizes, CRCs and offsets in local headers, the central directory and the end record). For every mutated
file that differs from the original, ``load_file`` and ``verify_file`` must raise a ``CheckpointError``
subclass (never ``RuntimeError``, ``zipfile`` or pickle errors, never a segfault), within a per-example
time limit. A loaded file would be a checksum escape: the test fails.
"""

from __future__ import annotations

import functools
import io
import os
import signal
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepstone.checkpoint import CheckpointManager, load_file, save_file, verify_file
from stepstone.checkpoint import format as fmt
from stepstone.checkpoint.outputs import FdOutput
from stepstone.errors import CheckpointCorruptError, CheckpointError, UnsafeCheckpointError

TIME_LIMIT_S = 10
#: Examples per run; ``STEPSTONE_FUZZ_EXAMPLES=20000`` for a long run.
EXAMPLES = int(os.environ.get("STEPSTONE_FUZZ_EXAMPLES", "300"))


@functools.lru_cache(maxsize=1)
def _original() -> bytes:
    """A small Lightning-like checkpoint (several zip records, tensors of a few sizes)."""
    buffer = io.BytesIO()
    state = {
        "epoch": 1,
        "global_step": 7,
        "state_dict": {"w": torch.randn(64, 48), "b": torch.arange(48.0), "n": torch.tensor(3)},
        "optimizer_states": [
            {"state": {0: {"momentum_buffer": torch.ones(8)}}, "param_groups": [{"lr": 0.1}]}
        ],
        "hyper_parameters": {"lr": 0.1, "name": "fuzz"},
    }
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "a.ckpt")
        save_file(path, state, metadata={"step": 7, "metrics": {"val_loss": 0.5}})
        buffer.write(Path(path).read_bytes())
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def _fields() -> list[tuple[int, int]]:
    """``(offset, width)`` of every structural field of the zip: headers, sizes, CRCs, offsets, names."""
    data = _original()
    fields: list[tuple[int, int]] = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            local = info.header_offset
            name_length = struct.unpack_from("<H", data, local + 26)[0]
            # signature, flags, method, CRC, sizes, name length, extra length, then the name itself
            fields += [(local, 4), (local + 6, 2), (local + 8, 2), (local + 14, 4), (local + 18, 4)]
            fields += [(local + 22, 4), (local + 26, 2), (local + 28, 2), (local + 30, name_length)]
    start = 0
    while (at := data.find(b"PK\x01\x02", start)) >= 0:  # central directory records
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        fields += [
            (at, 4),
            (at + 16, 4),
            (at + 20, 4),
            (at + 24, 4),
            (at + 28, 2),
            (at + 42, 4),
            (at + 46, name_length),
        ]
        start = at + 4
    eocd = data.rfind(b"PK\x05\x06")
    fields += [
        (eocd + offset, width) for offset, width in ((0, 4), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2))
    ]
    return fields


def _apply(data: bytes, mutation: tuple[Any, ...]) -> bytes:
    kind, position, payload = mutation
    at = int(position * len(data))
    if kind == "overwrite":
        return data[:at] + payload + data[at + len(payload) :]
    if kind == "insert":
        return data[:at] + payload + data[at:]
    if kind == "delete":
        return data[:at] + data[at + len(payload) :]
    if kind == "truncate":
        return data[:at]
    fields = _fields()
    offset, width = fields[int(position * len(fields))]
    if kind == "field_random":
        value = (payload * (width // len(payload) + 1))[:width]
        return data[:offset] + value + data[offset + width :]
    # field_plus: a plausible edit, e.g. a size or offset off by a small amount (little-endian add)
    number = int.from_bytes(data[offset : offset + width], "little") + payload[0] - 128
    value = (number % (1 << (8 * width))).to_bytes(width, "little")
    return data[:offset] + value + data[offset + width :]


MUTATION = st.tuples(
    st.sampled_from(["overwrite", "insert", "delete", "truncate", "field_random", "field_plus"]),
    st.floats(min_value=0, max_value=1, exclude_max=True),
    st.binary(min_size=1, max_size=24),
)


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"loading a mutated checkpoint took more than {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_checkpoints_raise_only_stepstone_errors(
    tmp_path: Path, mutations: list[tuple[Any, ...]]
) -> None:
    data = _original()
    for mutation in mutations:
        data = _apply(data, mutation)
    path = tmp_path / "mutated.ckpt"
    path.write_bytes(data)
    if data == _original():
        return  # e.g. a byte overwritten with itself: nothing to detect
    with _time_limit(TIME_LIMIT_S):
        with pytest.raises(CheckpointError) as error:
            load_file(path)
        assert not isinstance(error.value, UnsafeCheckpointError) or b"c__main__" in data  # no false alarm
        with pytest.raises(CheckpointError):
            verify_file(path)


def test_structure_fields_cover_every_zip_record() -> None:
    with zipfile.ZipFile(io.BytesIO(_original())) as archive:
        records = len(archive.infolist())
    assert records >= 5 and len(_fields()) == 9 * records + 7 * records + 6


@pytest.mark.parametrize("damage", ["magic", "magic and head"])
def test_a_destroyed_trailer_never_passes_for_an_unverified_torch_file(tmp_path: Path, damage: str) -> None:
    data = bytearray(_original())
    data[-8:] = b"XXXXXXXX"  # the trailer's magic is gone: the file no longer ends like a stepstone file
    if damage == "magic and head":
        data[:4] = b"\x80\x02\x8a\x0a"  # and its start looks like torch's legacy (pickle) format
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError):
        load_file(path)
    with pytest.raises(CheckpointCorruptError):
        verify_file(path)


class Payload:
    """Unpickling this creates the sentinel (a directory): proof that code from the file ran."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.sentinel, 0o777, True))


def test_manager_restore_refuses_a_hostile_checkpoint(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    directory = tmp_path / "run"
    with CheckpointManager(directory) as manager:
        manager.save(1, {"w": torch.ones(2)})
        fd = os.open(directory / "step=5.ckpt", os.O_WRONLY | os.O_CREAT, 0o644)
        try:  # a crafted file with a valid trailer and checksums, newer than the real one
            fmt.write_checkpoint({"w": Payload(str(sentinel))}, FdOutput(fd), {"step": 5})
        finally:
            os.close(fd)
        with pytest.raises(UnsafeCheckpointError, match=r"step=5\.ckpt"):
            manager.restore("latest")
    assert not sentinel.exists()


def test_garbage_read_as_a_legacy_pickle_is_corrupt_not_unsafe(tmp_path: Path) -> None:
    # Found by the fuzzer: the zip signature and the end are gone, so torch tries its legacy (pickle) format
    # and refuses an opcode. That is damage, not a file asking to run code.
    data = _original()
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"\x00" + data[1 : len(data) // 2])
    with pytest.raises(CheckpointCorruptError, match="could not be unpickled"):
        load_file(path)
