"""The public one-file API: save, load, inspect, verify, copy, link and remove one checkpoint file.

Arguments are validated here, where they enter the engine; the work is done by ``format`` (layout),
``storage``/``commit`` (durable I/O), ``inspection`` (trailers, checksums) and ``loading``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib import metadata as importlib_metadata
from typing import Any

from stepstone.checkpoint import commit, kinds
from stepstone.checkpoint.format import TrailerInfo, check_metadata_size, write_checkpoint
from stepstone.checkpoint.inspection import describe, read_trailer, record_from_trailer, verify
from stepstone.checkpoint.live import LiveGate, submit_staged
from stepstone.checkpoint.loading import MapLocation, load
from stepstone.checkpoint.outputs import RawOutput
from stepstone.checkpoint.progress import Progress, ProgressOutput
from stepstone.checkpoint.record import CheckpointRecord, encode_metrics, normalize_metadata
from stepstone.checkpoint.safety import check_weights_only_safe
from stepstone.checkpoint.staging import HostStaging
from stepstone.checkpoint.storage import LocalStorage, split_url
from stepstone.checkpoint.writer import AsyncWriter, SaveHandle
from stepstone.errors import MisconfigurationException

__all__ = [
    "copy_file",
    "is_local",
    "link_file",
    "load_file",
    "read_info",
    "remove_file",
    "save_file",
    "save_file_async",
    "sweep_stale_temps",
    "verify_file",
]

PathLike = str | os.PathLike[str]


@lru_cache(maxsize=1)
def _producer() -> str:
    try:
        return f"stepstone {importlib_metadata.version('stepstone')}"
    except importlib_metadata.PackageNotFoundError:
        return "stepstone (not installed)"


def _check_path(argument: str, path: object) -> str:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise MisconfigurationException(f"{argument} must be a non-empty path or URL string, got {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise MisconfigurationException(f"{argument} must be a str path, got bytes {text!r}")
    if text.endswith(("/", os.sep)):
        raise MisconfigurationException(f"{argument}={text!r} names a directory; pass a file path")
    return text


def _check_options(storage_options: object) -> dict[str, Any] | None:
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise MisconfigurationException(
            f"storage_options must be a dict of fsspec options or None, got {type(storage_options).__name__}"
        )
    return dict(storage_options) if storage_options is not None else None


def save_file(
    path: PathLike,
    state: dict[str, Any],
    *,
    metadata: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    expected_size: int | None = None,
    progress: Progress | bool = True,
    live_gate: LiveGate | None = None,
) -> CheckpointRecord:
    """Save ``state`` as one checkpoint file through the commit protocol (all or nothing).

    Args:
        path: the final file path or URL (``s3://``, ``memory://``, ...).
        state: the checkpoint dict; everything in it must be weights_only-safe.
        metadata: optional ``{"step": int, "epoch": int, "metrics": {name: float}}`` stored in the trailer
            (readable without loading the file).
        storage_options: fsspec options for remote paths.
        expected_size: expected file size in bytes; when given, a local save fails before writing if the
            disk has less free space.
        progress: report bytes and rate when the save takes more than 2 s (True: to standard error; a
            ``Progress``: to it; False: never).
        live_gate: for a snapshot whose over-budget storages are still the live tensors (``HostStaging``
            with ``max_staging_bytes``), the gate opened once they are written (the async paths pass it).

    Returns:
        The record of the committed file (``verified=False``: its bytes were not read back).

    Raises:
        TypeError: if ``state`` is not a dict or holds an object ``torch.load(weights_only=True)`` would
            refuse (the message names its key path); nothing is written.
        MisconfigurationException: for an invalid argument.
        OSError: if writing fails (ENOSPC included); no file appears under ``path`` and a previous file
            there is untouched.
    """
    text = _check_path("path", path)
    options = _check_options(storage_options)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict (the checkpoint), got {type(state).__name__}")
    if expected_size is not None and (not isinstance(expected_size, int) or expected_size < 0):
        raise MisconfigurationException(f"expected_size must be an int >= 0 or None, got {expected_size!r}")
    meta = normalize_metadata(metadata)
    stored = {
        "step": meta["step"],
        "epoch": meta["epoch"],
        "metrics": encode_metrics(meta["metrics"]),
        "created": time.time(),
        "producer": _producer(),
    }
    check_metadata_size(stored)
    check_weights_only_safe(state)
    storage, fs_path = split_url(text, options)
    if storage.is_local and os.path.isdir(fs_path):
        raise MisconfigurationException(f"path={text!r} is an existing directory; pass a file path")
    counter = Progress(f"saving {text!r}") if progress is True else progress or None

    def write(output: RawOutput) -> TrailerInfo:
        target = output if counter is None else ProgressOutput(output, counter)
        return write_checkpoint(state, target, stored, live_gate)

    info = storage.write(fs_path, write, expected_size)
    if counter is not None:
        counter.finish()
    return record_from_trailer(storage.url(fs_path), info.file_size, info, verified=False)


def save_file_async(
    path: PathLike,
    state: dict[str, Any],
    *,
    writer: AsyncWriter,
    staging: HostStaging,
    metadata: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Progress | bool = True,
    expected_size: int | None = None,
    after_commit: Callable[[CheckpointRecord], None] | None = None,
) -> SaveHandle:
    """Snapshot ``state`` into ``staging``'s host buffers, then save it on ``writer``'s thread.

    The caller is paused only while the previous save (if any) finishes (backpressure) and while the state is
    copied; afterwards it may change the state freely: the file holds the state as it was at this call.
    Under a memory budget (``HostStaging(max_staging_bytes=...)``) the storages that do not fit are not
    copied: the call also waits until the writer has written them to the file.

    Args:
        path: the final file path or URL.
        state: the checkpoint dict; everything in it must be weights_only-safe.
        writer: the background writer (one save in flight).
        staging: the reusable host buffers (one snapshot in use at a time; ``writer`` guarantees it).
        metadata: as for ``save_file``.
        storage_options: fsspec options for remote paths.
        progress: as for ``save_file``.
        expected_size: as for ``save_file``: the free-space preflight, checked on the writer thread just
            before writing (the previous save is committed by then).
        after_commit: run on the writer thread once the file is committed, before the handle completes (e.g.
            publish a ``last`` copy or link off the training thread); its failure is the save's failure.

    Returns:
        The save's handle: ``result()`` waits for the commit and returns the record, or raises the failure.

    Raises:
        TypeError: if ``state`` is not a dict or is not weights_only-safe; nothing is scheduled.
        MisconfigurationException: for an invalid argument.
        Exception: the previous save's failure, if nobody was told about it yet.
    """
    text = _check_path("path", path)
    options = _check_options(storage_options)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict (the checkpoint), got {type(state).__name__}")
    meta = normalize_metadata(metadata)
    check_weights_only_safe(state)  # here, so that the error reaches the caller, not the writer thread
    writer.reserve()
    staged = staging.snapshot(state)
    return submit_staged(
        writer,
        staging.live_gate(),
        lambda gate: _save_then(
            after_commit,
            text,
            staged,
            metadata=meta,
            storage_options=options,
            progress=progress,
            live_gate=gate,
            expected_size=expected_size,
        ),
    )


def _save_then(
    after_commit: Callable[[CheckpointRecord], None] | None, *args: Any, **kwargs: Any
) -> CheckpointRecord:
    record = save_file(*args, **kwargs)
    if after_commit is not None:
        after_commit(record)
    return record


def load_file(
    path: PathLike,
    *,
    map_location: MapLocation = None,
    verify: bool = True,
    mmap: bool = False,
    trusted: bool = False,
    storage_options: dict[str, Any] | None = None,
    progress: Progress | bool = True,
) -> dict[str, Any]:
    """Load a checkpoint file, verifying its checksums before any object is returned.

    Args:
        path: the file path or URL.
        map_location: where tensors go, as for ``torch.load``.
        verify: check every chunk CRC of a stepstone file (files without a trailer cannot be checked).
            ``verify=False`` checks nothing, not even the trailer: a way to salvage what torch can still read.
        mmap: memory-map tensor storages instead of reading them (local files only).
        trusted: allow objects that need pickle (``weights_only=False``); only for files you trust.
        storage_options: fsspec options for remote paths.
        progress: report bytes and rate when a verified local load takes more than 2 s (True: to standard
            error; a ``Progress``: to it; False: never). Unverified and ``mmap`` loads are read by torch
            itself and do not report.

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointNotFoundError: if there is no file at ``path``.
        CheckpointCorruptError: if the file is truncated or any bit is damaged (names the file).
        UnsafeCheckpointError: if the file needs pickle and ``trusted`` is False.
        CheckpointError: if torch cannot load the file for another reason.
        MisconfigurationException: for an invalid argument.
    """
    text = _check_path("path", path)
    options = _check_options(storage_options)
    for name, flag in (("verify", verify), ("mmap", mmap), ("trusted", trusted)):
        if not isinstance(flag, bool):
            raise MisconfigurationException(f"{name} must be True or False, got {flag!r}")
    storage, fs_path = split_url(text, options)
    if mmap and not storage.is_local:
        raise MisconfigurationException(f"mmap=True needs a local file, got {text!r}; pass mmap=False")
    state, _ = load(
        storage,
        fs_path,
        map_location=map_location,
        verify=verify,
        mmap=mmap,
        trusted=trusted,
        progress=progress,
    )
    return state


def read_info(path: PathLike, storage_options: dict[str, Any] | None = None) -> CheckpointRecord | None:
    """Read a checkpoint's trailer only (cheap: the last 64 KiB).

    Args:
        path: the file path or URL.
        storage_options: fsspec options for remote paths.

    Returns:
        Its record (``verified=False``), or None for a file without a stepstone trailer.

    Raises:
        CheckpointNotFoundError: if there is no file at ``path``.
        CheckpointCorruptError: if the file is truncated or its trailer is damaged.
    """
    storage, fs_path = split_url(_check_path("path", path), _check_options(storage_options))
    size, info = read_trailer(storage, fs_path)
    return None if info is None else record_from_trailer(storage.url(fs_path), size, info, verified=False)


def verify_file(path: PathLike, storage_options: dict[str, Any] | None = None) -> CheckpointRecord:
    """Check every checksum of a checkpoint file (reads it all, unpickles nothing).

    Args:
        path: the file path or URL.
        storage_options: fsspec options for remote paths.

    Returns:
        Its record, with ``verified=True``.

    Raises:
        CheckpointNotFoundError: if there is no file at ``path``.
        CheckpointCorruptError: if any byte is damaged or missing.
        CheckpointError: if the file has no stepstone trailer.
    """
    storage, fs_path = split_url(_check_path("path", path), _check_options(storage_options))
    return verify(storage, fs_path)


def copy_file(
    src: PathLike, dst: PathLike, *, storage_options: dict[str, Any] | None = None
) -> CheckpointRecord:
    """Copy a committed checkpoint to ``dst`` through the commit protocol (a real copy, e.g. ``last.ckpt``).

    The source's trailer is checked before copying; chunk checksums are not (call ``verify_file``).

    Args:
        src: the existing file.
        dst: the path of the copy (replaced atomically if it exists).
        storage_options: fsspec options for remote paths (both sides).

    Returns:
        The record of the copy.

    Raises:
        CheckpointNotFoundError: if ``src`` does not exist.
        CheckpointCorruptError: if ``src``'s trailer is damaged.
        OSError: if copying fails; ``dst`` is then unchanged.
    """
    options = _check_options(storage_options)
    source, source_path = split_url(_check_path("src", src), options)
    target, target_path = split_url(_check_path("dst", dst), options)
    size, _ = read_trailer(source, source_path)
    if isinstance(source, LocalStorage) and isinstance(target, LocalStorage):
        commit.copy_file(source_path, target_path)
    else:
        data = source.read_bytes(source_path)
        target.write(target_path, lambda output: output.write_all(memoryview(data)), size)
    return describe(target, target_path)


def link_file(target: PathLike, link: PathLike) -> None:
    """Atomically point the symlink ``link`` at ``target`` (stored relative to the link's directory).

    Args:
        target: the existing local file.
        link: the link path (replaced atomically if it exists).

    Raises:
        MisconfigurationException: for a remote path (object stores have no links; use ``copy_file``).
        FileNotFoundError: if ``target`` does not exist.
    """
    target_text, link_text = _check_path("target", target), _check_path("link", link)
    for name, text in (("target", target_text), ("link", link_text)):
        if not is_local(text):
            raise MisconfigurationException(
                f"{name}={text!r} is not local; symlinks need a local path, use copy_file"
            )
    commit.link_file(split_url(target_text)[1], split_url(link_text)[1])


def remove_file(path: PathLike, *, storage_options: dict[str, Any] | None = None) -> None:
    """Remove a checkpoint durably (a file, a ``last`` link, or a sharded directory); missing is not an error.

    Args:
        path: the checkpoint's path or URL.
        storage_options: fsspec options for remote paths.

    Raises:
        IsADirectoryError: ``path`` is a directory that is not a committed checkpoint (nothing is deleted).
        OSError: the deletion failed.
    """
    storage, fs_path = split_url(_check_path("path", path), _check_options(storage_options))
    kinds.remove_checkpoint(fs_path, storage)


def sweep_stale_temps(directory: PathLike) -> list[str]:
    """Remove the temporaries (files, and directories of sharded saves) left in a local directory by dead writers.

    Args:
        directory: the checkpoint directory (remote directories have no temporaries: returns []).

    Returns:
        The removed paths.
    """
    text = os.fspath(directory)
    if not is_local(text):
        return []
    return kinds.sweep_stale_temps(split_url(text)[1])


def is_local(path: PathLike, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``path`` is on the local filesystem (plain paths and ``file://`` URLs).

    Args:
        path: a path or URL.
        storage_options: fsspec options.

    Returns:
        True for local paths.
    """
    return split_url(os.fspath(path), storage_options)[0].is_local
