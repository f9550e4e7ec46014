"""The on-disk layout of one checkpoint file (format version 1): reads and writes it, decides nothing.

A checkpoint file is exactly what ``torch.save(obj, f)`` writes -- a zip archive (written by
``torch_zip.py``, the same layout) -- plus a stepstone
trailer stored as the zip's end-of-central-directory (EOCD) comment::

    [ zip bytes written by torch.save ........................ EOCD (22 bytes, comment length = T) ]
    [ trailer (T bytes): JSON | uint32 len(JSON) | uint32 crc32(JSON) | MAGIC (8 bytes) ]

Because the trailer is the zip comment, the file stays a valid zip and ``torch.load(path,
weights_only=True)`` (with or without ``mmap=True``) reads it unchanged. Apart from the comment length
(and half of the ``.data/serialization_id`` record, see ``torch_zip.py``), the zip part is byte for byte
what ``torch.save`` writes, zip member CRCs included, so zip tools and pickle scanners work on it too. The JSON holds the size of the zip part, the chunk size, one CRC32 per
chunk of the zip part (hex, 8 digits each) and the caller's metadata.
The chunk CRCs cover the zip bytes exactly as written, i.e. with the EOCD comment length still
0x0000 (the trailer length is only known after the CRCs are).

Size limit: a zip comment holds at most 65535 bytes. The CRC list is at most ``MAX_CHUNKS`` (4096)
entries = 32 KiB, because the chunk size doubles as needed (see ``checksum.py``), and the metadata is
limited to ``MAX_METADATA_BYTES`` (~32 KiB) at save time. So any checkpoint size is supported.

Every byte of the file is covered: zip bytes by the chunk CRCs, the EOCD comment length by its equality
with the trailer length, the JSON by its own CRC, the length fields by the layout arithmetic and the
magic by comparison.
"""

from __future__ import annotations

import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from stepstone.checkpoint import torch_zip
from stepstone.checkpoint.checksum import ChunkedCrc32, chunk_ranges
from stepstone.checkpoint.live import GatedSink, LiveGate
from stepstone.checkpoint.outputs import RawOutput
from stepstone.checkpoint.sink import HOLD, ChecksummingSink
from stepstone.checkpoint.stable_memory import StableMemory
from stepstone.errors import CheckpointCorruptError, CheckpointError, MisconfigurationException

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_METADATA_BYTES",
    "TAIL_SIZE",
    "TrailerInfo",
    "encode_trailer",
    "estimate_size",
    "parse_tail",
    "write_checkpoint",
]

MAGIC = b"STPSTN01"
FORMAT_NAME = "stepstone"
FORMAT_VERSION = 1
#: Most bytes the metadata may take in the trailer JSON: what the 64 KiB comment leaves beside the 32 KiB
#: CRC list and the fixed fields (about 1000 metrics with typical names).
MAX_METADATA_BYTES = 32 * 1024 - 256
_MAX_COMMENT = 0xFFFF
_FOOTER = struct.Struct("<II")  # len(JSON), crc32(JSON); followed by MAGIC
_FOOTER_SIZE = _FOOTER.size + len(MAGIC)
_EOCD_SIG = b"PK\x05\x06"
_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_ZIP_HEAD_SIG = b"PK\x03\x04"
#: The start of every trailer's JSON (``encode_trailer`` writes these keys first, without spaces).
_TRAILER_MARK = b'{"format":"stepstone","format_version":'
#: Bytes to read from the end of a file to find the trailer and the EOCD record.
TAIL_SIZE = _MAX_COMMENT + HOLD
#: Threads hashing the pieces of large records: zlib's CRC32 (~1 GB/s per core on small VMs) is slower than
#: a fast disk, so two cores hash while the writing thread mostly waits in ``os.write``.
_PIECE_THREADS = 2


@dataclass(frozen=True)
class TrailerInfo:
    """The parsed trailer of a checkpoint file.

    Args:
        zip_size: bytes of the zip part (the file minus the trailer).
        chunk_size: bytes per checksum chunk (the last chunk may be shorter).
        crcs: CRC32 of each chunk, in file order.
        metadata: the stored metadata (step, epoch, metrics, created, producer).
        trailer_size: bytes of the trailer.
    """

    zip_size: int
    chunk_size: int
    crcs: tuple[int, ...]
    metadata: dict[str, Any]
    trailer_size: int

    @property
    def file_size(self) -> int:
        """Total file size implied by the trailer."""
        return self.zip_size + self.trailer_size

    @property
    def digest(self) -> str:
        """A short content fingerprint: CRC32 of the size and the chunk CRC list, as 8 hex digits."""
        summary = f"{self.zip_size}:{self.chunk_size}:" + "".join(f"{c:08x}" for c in self.crcs)
        return f"{zlib.crc32(summary.encode()):08x}"

    def ranges(self) -> list[tuple[int, int]]:
        """The ``(start, end)`` byte range of every chunk."""
        return chunk_ranges(self.zip_size, self.chunk_size)


def encode_trailer(zip_size: int, chunk_size: int, crcs: list[int], metadata: dict[str, Any]) -> bytes:
    """Build the trailer bytes.

    Args:
        zip_size: bytes of the zip part.
        chunk_size: bytes per chunk.
        crcs: one CRC32 per chunk.
        metadata: JSON-compatible metadata (at most ``MAX_METADATA_BYTES`` once encoded).

    Returns:
        ``JSON + len + crc + MAGIC``.
    """
    body = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "zip_size": zip_size,
        "chunk_size": chunk_size,
        "crc32": "".join(f"{crc:08x}" for crc in crcs),
        "metadata": metadata,
    }
    data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    trailer = data + _FOOTER.pack(len(data), zlib.crc32(data)) + MAGIC
    assert len(trailer) <= _MAX_COMMENT, len(trailer)  # guaranteed by MAX_CHUNKS and MAX_METADATA_BYTES
    return trailer


def check_metadata_size(metadata: dict[str, Any]) -> None:
    """Refuse metadata too large for the trailer, before anything is written.

    Args:
        metadata: the metadata about to be stored.

    Raises:
        MisconfigurationException: if it takes more than ``MAX_METADATA_BYTES`` as JSON.
    """
    size = len(json.dumps(metadata, separators=(",", ":"), allow_nan=False).encode())
    if size > MAX_METADATA_BYTES:
        raise MisconfigurationException(
            f"metadata takes {size} bytes as JSON, more than the {MAX_METADATA_BYTES} bytes the trailer "
            "allows; pass fewer metrics (store the rest in the checkpoint state)"
        )


def estimate_size(state: object) -> int:
    """About how many bytes ``write_checkpoint`` will write for ``state`` (for a free-space check).

    torch.save writes every storage a tensor uses once, whole (a view saves its full base storage), so
    the estimate is the sum of the distinct storages' sizes plus a margin for the pickle, the zip records
    and the trailer. Containers are walked iteratively (no recursion limit); shared containers once.

    Args:
        state: the checkpoint dict.

    Returns:
        The estimate in bytes.
    """
    storages: dict[tuple[int, int], int] = {}
    seen: set[int] = set()
    stack: list[object] = [state]
    items = 0
    while stack:
        item = stack.pop()
        items += 1
        if isinstance(item, torch.Tensor):
            if item.layout == torch.strided and item.device.type != "meta":
                storage = item.untyped_storage()
                storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        elif isinstance(item, (dict, list, tuple, set)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
    # ~64 bytes per pickled object and 128 per zip record (local header, central directory entry).
    return sum(storages.values()) + 64 * items + 128 * len(storages) + _MAX_COMMENT + 4096


def write_checkpoint(
    state: object, output: RawOutput, metadata: dict[str, Any], gate: LiveGate | None = None
) -> TrailerInfo:
    """Serialize ``state`` as ``torch.save`` does into ``output``, then append the trailer.

    The archive is written by ``torch_zip.save`` (torch's pickling, stepstone's zip writer: each byte
    hashed once, on ``_PIECE_THREADS`` threads, while this thread writes), or by ``torch.save`` itself on a
    torch version whose layout ``torch_zip`` does not reproduce (or under ``skip_data``).

    Args:
        state: the (already validated) object to save.
        output: where the bytes go, from the first byte on.
        metadata: JSON-compatible metadata for the trailer (size checked by ``check_metadata_size``).
        gate: for a snapshot with live (unstaged) storages, opened once they are written (see ``live.py``).

    Returns:
        The trailer that was written.

    Raises:
        OSError: if the output fails (the original error, even when torch wrapped it).
        CheckpointError: if torch produced a stream stepstone cannot add a trailer to.
    """
    crc = ChunkedCrc32()
    pieces = ThreadPoolExecutor(max_workers=_PIECE_THREADS, thread_name_prefix="stepstone-crc-piece")
    with pieces, ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepstone-crc") as pool:
        # The executors' exit joins the workers, so no CRC job outlives the state's memory.
        sink = ChecksummingSink(output, crc, pool, StableMemory(state), pieces)
        try:
            target = sink if gate is None or gate.is_open else GatedSink(sink, gate)
            torch_zip.save(state, target)
            tail = sink.finish()
        except BaseException as error:
            if sink.error is not None and sink.error is not error:
                raise sink.error from None
            raise
    zip_size = crc.total
    assert zip_size == sink.total, (zip_size, sink.total)
    signature, *_, comment_length = _EOCD.unpack(tail)
    if signature != _EOCD_SIG or comment_length != 0:
        raise CheckpointError(
            "torch.save produced a zip without a plain end-of-central-directory record at its end; this "
            f"torch version ({torch.__version__}) is not supported by the stepstone format"
        )
    chunk_size, crcs = crc.finish()
    trailer = encode_trailer(zip_size, chunk_size, crcs, metadata)
    output.write_all(memoryview(tail[:-2] + struct.pack("<H", len(trailer)) + trailer))
    return TrailerInfo(zip_size, chunk_size, tuple(crcs), metadata, len(trailer))


def _plain_zip_end_is_intact(tail: bytes, file_size: int) -> bool:
    """Whether ``tail`` ends with an EOCD record (no comment) consistent with the file's size.

    This is what a file written by plain ``torch.save`` (or Lightning) ends with; a stepstone file that
    was truncated or whose trailer was damaged does not.
    """
    if len(tail) < HOLD:
        return False
    signature, _, _, _, _, cd_size, cd_offset, comment_length = _EOCD.unpack(tail[-HOLD:])
    if signature != _EOCD_SIG or comment_length != 0:
        return False
    cd_end = file_size - HOLD
    locator_at = len(tail) - HOLD - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == _ZIP64_LOCATOR_SIG:
        _, _, zip64_offset, _ = _ZIP64_LOCATOR.unpack(tail[locator_at : locator_at + _ZIP64_LOCATOR.size])
        record_at = len(tail) - (file_size - zip64_offset)
        if record_at < 0 or tail[record_at : record_at + 4] != _ZIP64_EOCD_SIG:
            return False
        fields = _ZIP64_EOCD.unpack(tail[record_at : record_at + _ZIP64_EOCD.size])
        cd_size, cd_offset, cd_end = fields[8], fields[9], zip64_offset
    return bool(cd_offset + cd_size == cd_end)


def parse_tail(tail: bytes, head: bytes, file_size: int, path: str) -> TrailerInfo | None:
    """Find and check the trailer at the end of a file.

    Args:
        tail: the last ``min(file_size, TAIL_SIZE)`` bytes of the file.
        head: the first 4 bytes of the file.
        file_size: the file's size.
        path: the file's name, for error messages.

    Returns:
        The trailer, or None for a file without one (written by plain ``torch.save``/Lightning, or torch's
        legacy non-zip format).

    Raises:
        CheckpointCorruptError: if the file is truncated or its trailer or zip end is damaged.
        CheckpointError: if the file was written by a newer, unsupported format version.
    """
    if file_size < HOLD:
        raise CheckpointCorruptError(path, f"the file is only {file_size} bytes long")
    if tail.endswith(MAGIC):
        return _parse_trailer(tail, file_size, path)
    if _plain_zip_end_is_intact(tail, file_size):
        return None
    if head[:4] != _ZIP_HEAD_SIG:
        if _TRAILER_MARK in tail:
            # A stepstone file whose start and end are both damaged must not pass for a legacy torch file
            # (loaded unverified): its trailer's JSON gives it away.
            raise CheckpointCorruptError(
                path, "it holds a stepstone trailer, but its start and end are damaged"
            )
        return None  # torch's legacy (pre-1.6, non-zip) format: nothing to check it against
    raise CheckpointCorruptError(
        path,
        "it has neither a stepstone trailer nor an intact zip end record (the file is truncated, or its end "
        "is damaged)",
    )


def _parse_trailer(tail: bytes, file_size: int, path: str) -> TrailerInfo:
    if len(tail) < _FOOTER_SIZE + HOLD:
        raise CheckpointCorruptError(path, "the trailer is cut short")
    json_size, json_crc = _FOOTER.unpack(tail[-_FOOTER_SIZE : -len(MAGIC)])
    trailer_size = json_size + _FOOTER_SIZE
    if trailer_size > _MAX_COMMENT or trailer_size + HOLD > len(tail):
        raise CheckpointCorruptError(path, f"the trailer length field ({json_size}) is impossible")
    data = tail[-trailer_size:-_FOOTER_SIZE]
    if zlib.crc32(data) != json_crc:
        raise CheckpointCorruptError(path, "the trailer's checksum does not match its content")
    eocd = tail[-trailer_size - HOLD : -trailer_size]
    if eocd[:4] != _EOCD_SIG or _EOCD.unpack(eocd)[-1] != trailer_size:
        raise CheckpointCorruptError(path, "the zip end record does not announce the trailer")
    try:
        body = json.loads(data)
    except ValueError as error:
        raise CheckpointCorruptError(path, f"the trailer is not valid JSON ({error})") from None
    return _trailer_from_json(body, trailer_size, file_size, path)


def _trailer_from_json(body: object, trailer_size: int, file_size: int, path: str) -> TrailerInfo:
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise CheckpointCorruptError(path, "the trailer is not a stepstone trailer")
    version = body.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path!r} uses stepstone format version {version}; this stepstone reads version "
            f"{FORMAT_VERSION}. Upgrade stepstone to load it."
        )
    zip_size, chunk_size = body.get("zip_size"), body.get("chunk_size")
    hex_crcs, metadata = body.get("crc32"), body.get("metadata")
    valid = (
        version == FORMAT_VERSION
        and isinstance(zip_size, int)
        and isinstance(chunk_size, int)
        and chunk_size > 0
        and isinstance(hex_crcs, str)
        and isinstance(metadata, dict)
    )
    if not valid:
        raise CheckpointCorruptError(path, "the trailer's fields are missing or of the wrong type")
    assert isinstance(zip_size, int) and isinstance(chunk_size, int) and isinstance(hex_crcs, str)
    if zip_size + trailer_size != file_size:
        raise CheckpointCorruptError(
            path, f"the file is {file_size} bytes but its trailer describes {zip_size + trailer_size} bytes"
        )
    expected_chunks = -(-zip_size // chunk_size)
    if len(hex_crcs) != 8 * expected_chunks:
        raise CheckpointCorruptError(path, "the trailer's checksum list does not match the file size")
    try:
        crcs = tuple(int(hex_crcs[i : i + 8], 16) for i in range(0, len(hex_crcs), 8))
    except ValueError:
        raise CheckpointCorruptError(path, "the trailer's checksum list is not hexadecimal") from None
    assert isinstance(metadata, dict)
    return TrailerInfo(zip_size, chunk_size, crcs, metadata, trailer_size)
