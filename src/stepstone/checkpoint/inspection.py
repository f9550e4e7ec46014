"""Reads what a checkpoint file says about itself: its trailer (cheap) or all its checksums (full read).

Local files are read with positional reads on one file descriptor; remote files through fsspec (the
trailer with a range request, a full check by reading the whole object).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from stepstone.checkpoint.format import FORMAT_VERSION, TAIL_SIZE, TrailerInfo, parse_tail
from stepstone.checkpoint.record import CheckpointRecord, basename, decode_metrics
from stepstone.checkpoint.storage import LocalStorage, RemoteStorage, Storage
from stepstone.checkpoint.verification import ChunkVerifier, verify_buffer
from stepstone.errors import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError

__all__ = ["describe", "open_local", "read_local_trailer", "read_trailer", "record_from_trailer", "verify"]


def open_local(path: str) -> int:
    """Open a local checkpoint for reading.

    Args:
        path: the file.

    Returns:
        A file descriptor (the caller closes it).

    Raises:
        CheckpointNotFoundError: if there is no file at ``path``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"No checkpoint file at {path!r}") from None
    except IsADirectoryError:
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd >= 0:
            os.close(fd)
        raise CheckpointNotFoundError(f"{path!r} is not a checkpoint file (it is a directory or a device)")
    return fd


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0:
        data = os.pread(fd, size, offset)
        if not data:
            break
        chunks.append(data)
        size -= len(data)
        offset += len(data)
    return b"".join(chunks)


def read_local_trailer(fd: int, path: str) -> tuple[int, TrailerInfo | None]:
    """Read and check the trailer of an open local file.

    Args:
        fd: the open file.
        path: its name, for error messages.

    Returns:
        ``(file size, trailer or None for a file without one)``.

    Raises:
        CheckpointCorruptError: if the file is truncated or its trailer is damaged.
    """
    size = os.fstat(fd).st_size
    tail_size = min(size, TAIL_SIZE)
    tail = _pread_exact(fd, tail_size, size - tail_size)
    return size, parse_tail(tail, _pread_exact(fd, 4, 0), size, path)


def read_trailer(storage: Storage, path: str) -> tuple[int, TrailerInfo | None]:
    """Read and check the trailer of a file on any storage.

    Args:
        storage: where the file is.
        path: the storage path.

    Returns:
        ``(file size, trailer or None for a file without one)``.

    Raises:
        CheckpointNotFoundError: if the file does not exist.
        CheckpointCorruptError: if the file is truncated or its trailer is damaged.
    """
    url = storage.url(path)
    if isinstance(storage, RemoteStorage):
        size = storage.size(path)
        tail = storage.read_range(path, max(0, size - TAIL_SIZE), size)
        return size, parse_tail(tail, storage.read_range(path, 0, 4), size, url)
    fd = open_local(path)
    try:
        return read_local_trailer(fd, url)
    finally:
        os.close(fd)


def record_from_trailer(url: str, size: int, info: TrailerInfo, verified: bool) -> CheckpointRecord:
    """The record of a stepstone file from its trailer.

    Args:
        url: the file's user-facing path.
        size: its size.
        info: its trailer.
        verified: whether all chunks were just verified.

    Returns:
        The record.

    Raises:
        CheckpointCorruptError: if the metadata in the trailer is malformed.
    """
    meta: dict[str, Any] = info.metadata
    try:
        step, epoch, created = meta.get("step"), meta.get("epoch"), meta.get("created", 0.0)
        for value in (step, epoch):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"step/epoch must be int or null, got {value!r}")
        if not isinstance(created, (int, float)):
            raise ValueError(f"created must be a number, got {created!r}")
        metrics = decode_metrics(meta.get("metrics", {}))
    except ValueError as error:
        raise CheckpointCorruptError(url, f"the trailer's metadata is malformed ({error})") from None
    return CheckpointRecord(
        path=url,
        name=basename(url),
        size=size,
        step=step,
        epoch=epoch,
        metrics=metrics,
        created=float(created),
        verified=verified,
        format_version=FORMAT_VERSION,
        digest=info.digest,
    )


def _mtime(storage: Storage, path: str) -> float:
    if isinstance(storage, LocalStorage):
        return os.stat(path).st_mtime
    assert isinstance(storage, RemoteStorage)
    details = storage.fs.info(path)
    modified = details.get("mtime") or details.get("created") or details.get("LastModified")
    # Backends disagree on the key and on the type (float or datetime).
    return float(modified.timestamp()) if hasattr(modified, "timestamp") else float(modified or 0.0)


def describe(storage: Storage, path: str) -> CheckpointRecord:
    """The record of any checkpoint file, with or without a trailer (trailer checked, chunks not).

    Args:
        storage: where the file is.
        path: the storage path.

    Returns:
        The record; for a file without a trailer, ``format_version=0``, no step/epoch/metrics and its
        modification time as ``created``.

    Raises:
        CheckpointNotFoundError: if the file does not exist.
        CheckpointCorruptError: if the file is truncated or its trailer is damaged.
    """
    url = storage.url(path)
    size, info = read_trailer(storage, path)
    if info is not None:
        return record_from_trailer(url, size, info, verified=False)
    return CheckpointRecord(
        path=url, name=basename(url), size=size, step=None, epoch=None, created=_mtime(storage, path)
    )


def verify(storage: Storage, path: str, threads: int = 2) -> CheckpointRecord:
    """Check every chunk CRC of a file (no unpickling).

    Args:
        storage: where the file is.
        path: the storage path.
        threads: threads for the CRC pass.

    Returns:
        The record, with ``verified=True``.

    Raises:
        CheckpointNotFoundError: if the file does not exist.
        CheckpointCorruptError: if any byte does not match.
        CheckpointError: if the file has no stepstone trailer (nothing to verify against).
    """
    url = storage.url(path)
    if isinstance(storage, RemoteStorage):
        data = storage.read_bytes(path)
        info = parse_tail(data[-TAIL_SIZE:], data[:4], len(data), url)
        if info is not None:
            verify_buffer(memoryview(data), info, url, threads)
        size = len(data)
    else:
        fd = open_local(path)
        try:
            size, info = read_local_trailer(fd, url)
            if info is not None:
                ChunkVerifier(fd, info, url).verify_all(threads)
        finally:
            os.close(fd)
    if info is None:
        raise CheckpointError(
            f"{url!r} has no stepstone trailer (written by plain torch.save or Lightning), so it carries no "
            "checksums to verify against; load_file can still read it, unverified"
        )
    return record_from_trailer(url, size, info, verified=True)
