"""Reading a sharded checkpoint in one pass: each shard file is read once, and that read is its verification.

:class:`VerifyingReader` is a torch.distributed.checkpoint ``StorageReader``. Each shard file is assigned to
one rank, its *verifier*: the rank that needs the most of its bytes (rank 0 for a file no rank needs). The
verifier reads the file sequentially from its first to its last byte, computing its size and CRC32 (the
marker's whole-file checksum, as ``sharded_commit`` wrote it), and serves the byte ranges the load asked for
from that same stream; the bytes between them are checksummed and dropped, so memory holds only the
requested items, which the load needs anyway. A rank that needs a few items of a file another rank verifies
reads just those ranges: ``dcp.load`` gathers every rank's outcome, so if any verifier fails, the load fails on
every rank and nothing read from the damaged file is kept by the caller.

A mismatch raises :class:`~stepstone.errors.CheckpointCorruptError` naming the file, once the whole file was
read; the template may then hold some items of the damaged checkpoint (a caller falling back to another
checkpoint loads that one over everything). :func:`read_whole` reads the small files outside the shards
(``.metadata``, ``meta.pt``) once, checked against the marker the same way.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future as TorchFuture
from typing_extensions import override

from stepstone.checkpoint.private_apis import StorageLocation
from stepstone.checkpoint.sharded_commit import check_checksum
from stepstone.errors import CheckpointCorruptError, CheckpointError

__all__ = ["VerifyingReader", "read_whole"]

_BLOCK = 16 * 1024 * 1024
#: The marker's ``{name: {"size", "crc32"}}`` table.
Checksums = Mapping[str, Mapping[str, Any]]


def _missing(path: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(path, "the file is missing from the checkpoint directory")


def read_whole(path: str, expected: Mapping[str, Any] | None) -> bytes:
    """Read a small file of a checkpoint directory once, checked against its marker entry.

    Args:
        path: the file.
        expected: its ``{"size", "crc32"}`` entry in the marker; None: not checked.

    Returns:
        The file's bytes.

    Raises:
        CheckpointCorruptError: the file is missing, or its size or CRC32 differs from the marker's.
    """
    try:
        with open(path, "rb", buffering=0) as stream:
            data = stream.readall()
    except FileNotFoundError:
        raise _missing(path) from None
    if expected is not None:
        check_checksum(path, len(data), zlib.crc32(data), expected)
    return data


class _FileStream:
    """One shard file, read forward once; with ``expected``, every byte is checksummed (gaps included).

    The CRC32 runs on ``pool``'s one thread (zlib releases the GIL), block after block in file order, while
    this thread deserializes the item just read and reads the next: at most one block waits for its checksum.
    """

    def __init__(
        self, path: str, stream: io.RawIOBase, expected: Mapping[str, Any] | None, pool: ThreadPoolExecutor
    ) -> None:
        self._path = path
        self._stream = stream
        self._expected = expected
        self._pool = pool
        self._pending: Future[None] | None = None  # the checksum of the last block read
        self._position = 0
        self._crc = 0

    def _update(self, block: bytes) -> None:
        self._crc = zlib.crc32(block, self._crc)

    def _checksum(self, block: bytes) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(self._update, block)

    def _read(self, length: int, keep: bool) -> bytes:
        parts: list[bytes] = []
        left = length
        while left > 0:
            block = self._stream.read(min(left, _BLOCK) if not keep else left)
            if not block:
                break
            if self._expected is not None:
                self._checksum(block)
            self._position += len(block)
            left -= len(block)
            if keep:
                parts.append(block)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def take(self, offset: int, length: int) -> bytes:
        """The ``length`` bytes at ``offset`` (at or after the bytes taken before, but for a repeated item).

        Raises:
            CheckpointCorruptError: the file ends before them.
        """
        if offset < self._position:  # an item overlapping one already read: fetched again, directly
            data = os.pread(self._stream.fileno(), length, offset)
        else:
            if self._expected is None:
                self._stream.seek(offset)
                self._position = offset
            else:
                self._read(offset - self._position, keep=False)
            data = self._read(length, keep=True)
        if len(data) != length:
            self.finish()  # a verified file shorter than the marker says is named as such
            raise CheckpointCorruptError(
                self._path, f"it ends before the stored item at bytes {offset}..{offset + length}"
            )
        return data

    def finish(self) -> None:
        """Read the rest of a verified file and compare its size and CRC32 with the marker's.

        Raises:
            CheckpointCorruptError: naming the file, on a mismatch.
        """
        if self._expected is None:
            return
        while self._read(_BLOCK, keep=False):
            pass
        if self._pending is not None:
            self._pending.result()
        check_checksum(self._path, self._position, self._crc, self._expected)


def _serve(item: ReadItem, data: bytes, planner: LoadPlanner) -> None:
    """Hand one requested item to the planner, as torch's ``FileSystemReader.read_data`` does."""
    if item.type == LoadItemType.BYTE_IO:
        planner.load_bytes(item, io.BytesIO(data))
        return
    tensor = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for dim, (offset, length) in enumerate(zip(item.storage_offsets, item.lengths, strict=True)):
        if length < tensor.size(dim):
            tensor = tensor.narrow(dim, offset, length)
    target = planner.resolve_tensor(item).detach()
    if target.size() != tensor.size():
        raise CheckpointError(
            f"The stored item {item.storage_index} has shape {tuple(tensor.size())}, the template's "
            f"{tuple(target.size())}"
        )
    target.copy_(tensor)
    planner.commit_tensor(item, target)


class VerifyingReader(StorageReader):
    """A ``StorageReader`` for ``dcp.load`` that verifies each shard file while reading it (see the module).

    Args:
        path: the checkpoint directory.
        metadata: its ``.metadata``, already read (and checked) by the caller.
        locations: where each stored item lies (``private_apis.storage_locations`` of ``metadata``).
        checksums: the marker's entries of the shard files (the files ``dcp.load`` reads).
        verify: check the files against ``checksums``; False: read only the requested items
            (``load_sharded(verify=False)``).
    """

    def __init__(
        self,
        path: str,
        metadata: Metadata,
        locations: Mapping[Any, StorageLocation],
        checksums: Checksums,
        verify: bool = True,
    ) -> None:
        super().__init__()
        self._verify = verify
        self._path = path
        self._metadata = metadata
        self._locations = locations
        self._checksums = checksums

    @override
    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """Nothing to reset: one reader serves one load of one directory.

        Args:
            checkpoint_id: must be this reader's directory, or None.

        Raises:
            CheckpointError: another directory was given.
        """
        if checkpoint_id is not None and os.path.abspath(os.fspath(checkpoint_id)) != self._path:
            raise CheckpointError(f"This reader reads {self._path!r}, not {checkpoint_id!r}")

    @override
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The metadata the caller read (never unpickled again, so never without the allow-list).

        Args:
            *args: unused.
            **kwargs: ``rank`` asks for a rank-local metadata file, which stepstone never writes.

        Returns:
            The metadata.

        Raises:
            FileNotFoundError: for a rank-local metadata file.
        """
        if kwargs.get("rank") is not None:
            raise FileNotFoundError(f"{self._path!r} has no rank-local metadata")
        if getattr(self._metadata, "storage_meta", None) is None:
            self._metadata.storage_meta = StorageMeta()
        return self._metadata

    @override
    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        """Nothing to set up (the locations were given).

        Args:
            metadata: the metadata.
            is_coordinator: whether this rank plans for all.
            *args: unused.
            **kwargs: unused.
        """

    @override
    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """This rank's plan, unchanged.

        Args:
            plan: the planner's local plan.

        Returns:
            The same plan.
        """
        return plan

    @override
    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """Give each shard file one verifier: the rank reading most of it, else rank 0 (in ``storage_data``).

        Args:
            plans: every rank's plan, by rank.

        Returns:
            The plans, each with the tuple of file names its rank verifies as ``storage_data``.
        """
        wanted: list[dict[str, int]] = []
        for plan in plans:
            sizes: dict[str, int] = {}
            for item in plan.items:
                location = self._locations[item.storage_index]
                sizes[location.relative_path] = sizes.get(location.relative_path, 0) + location.length
            wanted.append(sizes)
        verifies: list[list[str]] = [[] for _ in plans]
        for name in sorted(self._checksums) if self._verify else ():
            rank = max(range(len(plans)), key=lambda r: (wanted[r].get(name, 0), -r))
            verifies[rank].append(name)
        return [
            dataclasses.replace(plan, storage_data=tuple(names))
            for plan, names in zip(plans, verifies, strict=True)
        ]

    @override
    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> TorchFuture[None]:
        """Read this rank's items, verifying the files assigned to this rank from their first byte to their last.

        Args:
            plan: this rank's final plan (``storage_data``: the files it verifies).
            planner: receives the items.

        Returns:
            A completed future.

        Raises:
            CheckpointCorruptError: a verified file is missing, damaged, or not listed in the marker.
        """
        by_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            by_file.setdefault(self._locations[item.storage_index].relative_path, []).append(item)
        verified = set(plan.storage_data) if isinstance(plan.storage_data, tuple) else set()
        if self._verify and not isinstance(plan.storage_data, tuple):
            verified = set(by_file)  # a planner that dropped the assignment: verify everything read here
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepstone-crc") as pool:
            for name in sorted(set(by_file) | verified):
                self._read_file(name, by_file.get(name, []), planner, name in verified, pool)
        done: TorchFuture[None] = TorchFuture()
        done.set_result(None)
        return done

    def _read_file(
        self,
        name: str,
        items: Sequence[ReadItem],
        planner: LoadPlanner,
        verify: bool,
        pool: ThreadPoolExecutor,
    ) -> None:
        path = os.path.join(self._path, name)
        if self._verify and name not in self._checksums:  # whichever rank reads it: never unchecked
            raise CheckpointCorruptError(
                path, "the checkpoint's metadata names it, its commit marker does not"
            )
        expected = self._checksums[name] if verify else None
        ranges: dict[tuple[int, int], list[ReadItem]] = {}
        for item in items:
            location = self._locations[item.storage_index]
            ranges.setdefault((location.offset, location.length), []).append(item)
        try:
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 -- closed below, after the last range
        except FileNotFoundError:
            raise _missing(path) from None
        with raw:
            stream = _FileStream(path, raw, expected, pool)
            for (offset, length), requests in sorted(ranges.items()):
                data = stream.take(offset, length)
                try:
                    for request in requests:
                        _serve(request, data, planner)
                except Exception:
                    stream.finish()  # damage that broke the item is reported as damage
                    raise
            stream.finish()

    @property
    def checkpoint_id(self) -> str:
        """The checkpoint directory."""
        return self._path

    @classmethod
    @override
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """Whether ``checkpoint_id`` is a local directory.

        Args:
            checkpoint_id: a path.

        Returns:
            True for an existing local directory.
        """
        return os.path.isdir(checkpoint_id)
