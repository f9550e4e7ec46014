"""torch.save's zip archive, written by stepstone: the same bytes, with each byte hashed once and the GIL free.

``torch.save`` pickles the object (``torch.serialization._save``) and hands every record to a C++ zip
writer (miniz), which computes each member's CRC32 with miniz's slow CRC while holding the GIL, and then
stepstone hashes the same bytes again for its trailer. Here torch's own ``_save`` still does the pickling
(same pickler, same persistent ids, same record names and order, the same copy of GPU storages to the
host), but it writes into ``TorchZipWriter``, which lays the records out exactly as torch's writer does:

- per record: a local header (version 0, flags 0x0808 -- data descriptor, UTF-8 names --, stored, DOS
  time 0, CRC and sizes 0), the name ``archive/<record>``, a zip64 extra field when the size or the
  header's offset is >= 0xFFFFFFFF, then an ``FB`` extra field padded with ``Z`` so that the data starts
  at a multiple of the storage alignment (64), the data, and a data descriptor (``PK\\x07\\x08``, 32- or
  64-bit sizes). Empty records have flags 0x0800 and no descriptor;
- at the end: the ``version`` record, ``.data/serialization_id``, the central directory, a zip64 end
  record and locator (always, as torch's writer runs miniz in zip64 mode) and the end record.

Storage data goes to the sink straight from the tensor's memory (no copy) with ``write_member``: large
``os.write`` calls with the GIL released, while other threads compute the CRC32 of the chunk-aligned
pieces; the member CRC in the zip headers is combined from those piece CRCs, which are also the trailer's
chunk CRCs (``ChecksummingSink.write_member``).

The only difference from torch.save's bytes: the first 20 digits of ``.data/serialization_id`` (torch
hashes the record names with the C++ standard library's string hash; stepstone uses its own hash). The
last 20 digits (a hash of the records' CRCs) are computed as torch does. Nothing reads that id back but
TorchScript's and ``torch.package``'s de-duplication, which only need it to be deterministic.

Before first use, the layout is checked against ``torch.save`` of a small sample state (records, offsets,
headers, end records); if this torch version writes anything else, or ``torch.serialization.skip_data``
is active, or torch lost one of the private names ``private_apis`` probes, ``save`` falls back to
``torch.save`` (correct, slower: see ``format.py``). ``STEPSTONE_SERIALIZER=reference`` selects that
reference path on purpose.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zipfile
import zlib
from functools import lru_cache
from typing import Any, Protocol

import torch
import torch.serialization

from stepstone.checkpoint import private_apis
from stepstone.checkpoint.stable_memory import memory_view
from stepstone.errors import MisconfigurationException

__all__ = ["SERIALIZER_ENV", "MemberSink", "TorchZipWriter", "save", "serializer", "supported"]

#: The environment variable choosing the serializer: ``fast`` (default) or ``reference`` (plain torch.save).
SERIALIZER_ENV = "STEPSTONE_SERIALIZER"

_U32 = 0xFFFFFFFF  # miniz's MZ_UINT32_MAX: sizes and offsets from this value on go to zip64 fields
_MASK64 = (1 << 64) - 1
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_DESCRIPTOR32 = struct.Struct("<4sIII")
_DESCRIPTOR64 = struct.Struct("<4sIQQ")
_ZIP64_END = struct.Struct("<4sQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_END = struct.Struct("<4sHHHHIIH")
_ID_RECORD = ".data/serialization_id"


class MemberSink(Protocol):
    """Where ``TorchZipWriter`` writes: zip headers with ``write``, record data with ``write_member``."""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; returns its length."""

    def write_member(self, data: bytes | bytearray | memoryview) -> int:
        """Append a record's data; returns its CRC32 once written and hashed."""


def _hash_combine(seed: int, value: int) -> int:
    """c10::hash_combine on 64-bit values (what torch folds the record CRCs with)."""
    return seed ^ ((value + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & _MASK64)


def _padding(offset: int, name_size: int, size: int, alignment: int) -> int:
    """Bytes of ``Z`` padding so that a record's data starts aligned (torch's ``getPadding``)."""
    start = offset + _LOCAL.size + name_size + 4  # + the FB field's own header
    if size >= _U32 or offset >= _U32:
        start += 4 + (16 if size >= _U32 else 0) + (8 if offset >= _U32 else 0)
    return -start % alignment


def _zip64_extra(size: int, compressed: int, offset: int) -> bytes:
    """miniz's zip64 extra field: the sizes when the size is large, the offset when it is large."""
    if size < _U32 and offset < _U32:
        return b""
    fields = (struct.pack("<QQ", size, compressed) if size >= _U32 else b"") + (
        struct.pack("<Q", offset) if offset >= _U32 else b""
    )
    return struct.pack("<HH", 1, len(fields)) + fields


def _record_bytes(data: object, nbytes: int) -> tuple[memoryview, object]:
    """A byte view of what ``_save`` passes ``write_record`` (and the object that owns the memory)."""
    if isinstance(data, str):
        data = data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
        assert view.nbytes == nbytes, (view.nbytes, nbytes)
        return view, data
    if isinstance(data, torch.UntypedStorage):
        if data.device.type != "cpu":
            raise TypeError(f"torch handed a storage on {data.device} to the zip writer")
        assert data.nbytes() == nbytes, (data.nbytes(), nbytes)
        return (memory_view(data.data_ptr(), nbytes) if nbytes else memoryview(b"")), data
    raise TypeError(f"unexpected record data of type {type(data).__name__}")


class TorchZipWriter:
    """Stands in for ``torch._C.PyTorchFileWriter`` in ``torch.serialization._save``.

    Args:
        sink: where the bytes go.
        alignment: the storage alignment (torch's ``_get_storage_alignment()``, 64 by default).
        end_records: the records torch's writer adds at the end before the id, as ``(name, data)``.
    """

    def __init__(self, sink: MemberSink, alignment: int, end_records: tuple[tuple[str, bytes], ...]) -> None:
        self._sink = sink
        self._alignment = alignment
        self._end_records = end_records
        self._offset = 0
        self._central: list[bytes] = []
        self._crc_hash = 0
        self._name_hash = 0

    def write_record(self, name: str, data: object, nbytes: int) -> None:
        """Write one record (what ``_save`` calls for the pickle, the small records and every storage).

        Args:
            name: the record's name inside the archive folder.
            data: its bytes (``bytes``/``str``) or a CPU ``UntypedStorage``.
            nbytes: its size.

        Raises:
            OSError: if the sink fails.
            TypeError: for data the writer does not know.
        """
        view, owner = _record_bytes(data, nbytes)
        full = f"archive/{name}".encode()
        offset = self._offset
        flags = 0x0808 if nbytes else 0x0800
        zip64 = _zip64_extra(nbytes, 0, offset)
        padding = _padding(offset, len(full), nbytes, self._alignment)
        extra = zip64 + b"FB" + struct.pack("<H", padding) + b"Z" * padding
        header = _LOCAL.pack(b"PK\x03\x04", 0, flags, 0, 0, 0, 0, 0, 0, len(full), len(extra)) + full + extra
        self._emit(header)
        crc = self._sink.write_member(view) if nbytes else 0
        del owner  # the data was written and hashed: the memory may go
        self._offset += nbytes
        if nbytes:
            descriptor = _DESCRIPTOR64 if zip64 else _DESCRIPTOR32
            self._emit(descriptor.pack(b"PK\x07\x08", crc, nbytes, nbytes))
        central_extra = _zip64_extra(nbytes, nbytes, offset)
        small_size, small_offset = min(nbytes, _U32), min(offset, _U32)
        entry = _CENTRAL.pack(
            b"PK\x01\x02", 0, 0, flags, 0, 0, 0, crc, small_size, small_size, len(full), len(central_extra),
            0, 0, 0, 0, small_offset,
        )  # fmt: skip
        self._central.append(entry + full + central_extra)
        if nbytes:  # torch folds the CRCs of non-empty records only
            self._crc_hash = _hash_combine(self._crc_hash, crc)
        self._name_hash = _hash_combine(self._name_hash, zlib.crc32(full))

    def write_record_metadata(self, name: str, nbytes: int) -> None:
        """What ``_save`` calls under ``skip_data``: not supported here (``save`` uses torch.save then).

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("skip_data is handled by torch.save")

    @property
    def identity(self) -> bytes:
        """The serialization id of the records written so far (names hash, then CRCs hash, 20 digits each)."""
        return f"{self._name_hash:020d}{self._crc_hash:020d}".encode()

    def write_end_of_file(self, identity: bytes | None = None) -> bytes:
        """Write the end records, the serialization id, the central directory and the zip end records.

        Args:
            identity: the serialization id to store (default: the one computed, see ``identity``).

        Returns:
            The serialization id computed from the records (stored unless ``identity`` was given).

        Raises:
            OSError: if the sink fails.
        """
        for name, data in self._end_records:
            self.write_record(name, data, len(data))
        computed = self.identity
        self.write_record(_ID_RECORD, computed if identity is None else identity, len(computed))
        directory = b"".join(self._central)
        start, count = self._offset, len(self._central)
        self._emit(directory)
        zip64_at = self._offset
        tail = _ZIP64_END.pack(b"PK\x06\x06", 44, 0x031E, 0x002D, 0, 0, count, count, len(directory), start)
        tail += _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, zip64_at, 1)
        tail += _END.pack(
            b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), min(len(directory), _U32),
            min(start, _U32), 0,
        )  # fmt: skip
        self._emit(tail)
        return computed

    def _emit(self, data: bytes) -> None:
        self._sink.write(data)
        self._offset += len(data)


def _write(
    state: object, sink: MemberSink, end_records: tuple[tuple[str, bytes], ...], identity: bytes | None = None
) -> bytes:
    writer = TorchZipWriter(sink, private_apis.storage_alignment(), end_records)
    # torch's own pickling: the same pickle bytes, storage keys and record order as torch.save.
    private_apis.save_into(state, writer)
    return writer.write_end_of_file(identity)


class _BytesSink:
    """A ``MemberSink`` collecting bytes in memory (for the layout check)."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.buffer.write(data)

    def write_member(self, data: bytes | bytearray | memoryview) -> int:
        self.buffer.write(data)
        return zlib.crc32(data)


@lru_cache(maxsize=1)
def _calibration() -> tuple[tuple[tuple[str, bytes], ...], bool]:
    """The end records torch's writer adds, and whether this module reproduces torch.save exactly."""
    sample = {
        "w": torch.arange(6, dtype=torch.float32).view(2, 3),
        "empty": torch.zeros(0),
        "view": torch.arange(10, dtype=torch.int64)[2:5],
        "meta": [1, 2.5, "x", None, (True,)],
    }
    expected = io.BytesIO()
    torch.save(sample, expected)
    reference = expected.getvalue()
    names = zipfile.ZipFile(io.BytesIO(reference)).namelist()
    with zipfile.ZipFile(io.BytesIO(reference)) as archive:
        end = tuple(
            (name.split("/", 1)[1], archive.read(name))
            for name in names[names.index("archive/byteorder") + 1 :]
            if not name.startswith("archive/data/") and not name.endswith(_ID_RECORD)
        )
        identity = archive.read(f"archive/{_ID_RECORD}")
    ours = _BytesSink()
    try:
        # With torch's id forced, every byte must match; the CRC half of our own id must match too.
        computed = _write(sample, ours, end, identity)
    except Exception:  # a torch whose _save calls something else: use torch.save
        return end, False
    return end, ours.buffer.getvalue() == reference and computed[20:] == identity[20:]


def serializer() -> str:
    """The serializer chosen with the ``STEPSTONE_SERIALIZER`` environment variable.

    Returns:
        ``"fast"`` (the default: this module's writer where ``supported()``) or ``"reference"`` (always the
        public ``torch.save`` into the checksumming sink: slower, relies on no private torch name).

    Raises:
        MisconfigurationException: any other value (the message names the variable, the value and the fix).
    """
    value = os.environ.get(SERIALIZER_ENV, "fast").strip().lower() or "fast"
    if value not in ("fast", "reference"):
        raise MisconfigurationException(
            f"{SERIALIZER_ENV}={os.environ[SERIALIZER_ENV]!r} is not a serializer; set it to 'fast' (the default) "
            "or 'reference' (plain torch.save), or unset it"
        )
    return value


def supported() -> bool:
    """Whether ``save`` writes the archive itself (else it calls ``torch.save``); never raises for torch's sake.

    Returns:
        True when the fast serializer is selected, torch still has the private names it calls, this torch
        version's layout was reproduced exactly and ``skip_data`` is not active.

    Raises:
        MisconfigurationException: ``STEPSTONE_SERIALIZER`` has an unknown value.
    """
    if serializer() == "reference" or sys.byteorder != "little" or not private_apis.serialization_supported():
        return False
    if private_apis.skip_data_active():
        return False
    return _calibration()[1]


def save(state: Any, sink: MemberSink) -> None:
    """Write ``state`` as ``torch.save(state, sink)`` would, through ``sink.write``/``sink.write_member``.

    Args:
        state: the object to save.
        sink: where the bytes go.

    Raises:
        OSError: if the sink fails.
        Exception: whatever pickling the state raises (as torch.save would).
    """
    if not supported():
        torch.save(state, sink)  # type: ignore[arg-type]  # torch only needs write() and flush()
        return
    _write(state, sink, _calibration()[0])
