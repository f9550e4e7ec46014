"""Sharded (FSDP/DTensor) checkpoints: a directory in torch.distributed.checkpoint's layout, committed last.

:func:`save_sharded` is called on every rank: each rank writes its own shards (``dcp.save`` into a hidden
temporary directory next to the final path), rank 0 adds ``meta.pt`` (every entry that is not sharded: loop
state, callbacks, hyper-parameters, epoch/global_step...), checksums every file into the marker and commits
the directory (see ``sharded_commit``). So one directory holds everything a file checkpoint holds.

:func:`load_sharded` lets ``dcp.load`` fill the caller's template, reading each file once and checking it
against the marker's checksums as it is read (``sharded_reader``); the template's tensors decide the layout,
so a checkpoint written by N ranks loads on M ranks (or on one process, without a process group). :func:`convert_sharded_to_file` turns a directory into one ordinary stepstone file.

Only local (or shared, POSIX) filesystems are supported: every rank must see the same directory. The ranks
synchronise through the default torch.distributed process group (see ``sharded_ranks``); without one (or with
one rank) everything happens in this process.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
from collections.abc import Collection, Mapping
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.storage import StorageReader
from typing_extensions import override

from stepstone.checkpoint import commit, sharded_commit
from stepstone.checkpoint.files import save_file
from stepstone.checkpoint.private_apis import storage_locations
from stepstone.checkpoint.record import CheckpointRecord, normalize_metadata
from stepstone.checkpoint.safety import check_weights_only_safe
from stepstone.checkpoint.sharded_commit import MARKER_NAME, remove_sharded
from stepstone.checkpoint.sharded_ranks import (
    gather,
    on_every_rank,
    on_rank0,
    quiet_single_process,
    rank_and_world,
)
from stepstone.checkpoint.sharded_reader import VerifyingReader, read_whole
from stepstone.checkpoint.sharded_reading import (
    METADATA_NAME,
    is_sharded_checkpoint,
    metadata_from_bytes,
    read_sharded_info,
    restore_optimizer_states,
    template_from_metadata,
    verify_sharded,
)
from stepstone.errors import (
    CheckpointCorruptError,
    CheckpointError,
    MisconfigurationException,
)

__all__ = [
    "DEFAULT_SHARDED_KEYS",
    "MARKER_NAME",
    "META_NAME",
    "convert_sharded_to_file",
    "gather_sharded",
    "is_sharded_checkpoint",
    "load_sharded",
    "read_sharded_info",
    "remove_sharded",
    "save_sharded",
    "verify_sharded",
]

#: Top-level entries stored through torch.distributed.checkpoint (sharded, resharded on load).
DEFAULT_SHARDED_KEYS = ("state_dict", "optimizer_states")
#: The file holding every other entry (written by rank 0, loadable with ``weights_only=True``).
META_NAME = "meta.pt"
PathLike = str | os.PathLike[str]


def _check_dir_path(argument: str, path: object) -> str:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise MisconfigurationException(f"{argument} must be a non-empty local directory path, got {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str) or "://" in text:
        raise MisconfigurationException(
            f"{argument}={text!r} is not a local path; sharded checkpoints need a local or shared POSIX "
            "directory (save a 'full' checkpoint for object stores)"
        )
    return os.path.abspath(text)


def _own_checksums(temp: str, text: str) -> dict[str, dict[str, Any]]:
    """Every rank checksums the shards it wrote; gathered for rank 0's marker (and a barrier after writing)."""
    rank, world = rank_and_world()
    try:
        # torch.distributed.checkpoint names rank r's files "__r_<n>.distcp"; rank 0 reads whatever is left.
        outcome: tuple[str, Any] = (
            "ok",
            sharded_commit.checksum_files(temp, f"__{rank}_") if world > 1 else {},
        )
    except OSError as error:
        outcome = ("failed", f"rank {rank}: {error}")
    known: dict[str, dict[str, Any]] = {}
    for status, value in gather(f"shards written save_sharded {text}", outcome):
        if status != "ok":
            raise CheckpointError(f"Saving {text!r} failed: {value}")
        known.update(value)
    return known


def _start_save(path: str) -> str:
    parent = os.path.dirname(path)
    commit.ensure_dir(parent)
    sharded_commit.sweep_stale_dirs(parent)
    temp = sharded_commit.temp_dir_for(path)
    os.mkdir(temp)
    return temp


def _write_meta(directory: str, rest: dict[str, Any]) -> None:
    def write(fd: int) -> None:
        with os.fdopen(os.dup(fd), "wb") as stream:
            torch.save(rest, stream)

    commit.atomic_write(os.path.join(directory, META_NAME), write)


def _finish_save(
    temp: str, path: str, rest: dict[str, Any], meta: dict[str, Any], known: dict[str, dict[str, Any]]
) -> CheckpointRecord:
    _write_meta(temp, rest)
    marker = sharded_commit.write_marker(temp, meta, known)
    sharded_commit.commit_dir(temp, path)
    return sharded_commit.record_from_marker(path, marker, verified=False)


def save_sharded(
    path: PathLike,
    state: dict[str, Any],
    *,
    metadata: Mapping[str, Any] | None = None,
    sharded_keys: Collection[str] = DEFAULT_SHARDED_KEYS,
) -> CheckpointRecord:
    """Save a checkpoint as a directory, every rank writing its shards; call it on every rank.

    Args:
        path: the final local directory. A checkpoint already there is renamed aside once the new one is
            complete, and deleted after the new one is in place.
        state: the checkpoint dict. The entries named by ``sharded_keys`` (DTensor/FSDP state dicts, or plain
            tensors) go through torch.distributed.checkpoint; the others must be weights_only-safe and are
            taken from rank 0.
        metadata: optional ``{"step", "epoch", "metrics"}`` stored in the marker (as for ``save_file``).
        sharded_keys: the top-level keys stored as shards.

    Returns:
        The committed checkpoint's record (on every rank).

    Raises:
        TypeError: ``state`` is not a dict, or a non-sharded entry is not weights_only-safe (nothing written).
        MisconfigurationException: an invalid argument.
        CheckpointError: the ranks are not all saving, or rank 0 failed (the error is re-raised on rank 0).
        OSError: writing failed; no directory appears at ``path`` and a previous checkpoint there is kept.
    """
    text = _check_dir_path("path", path)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict (the checkpoint), got {type(state).__name__}")
    meta = normalize_metadata(metadata)
    sharded = {key: state[key] for key in sharded_keys if key in state}
    rest = {key: value for key, value in state.items() if key not in sharded}
    check_weights_only_safe(rest)  # on every rank, so that all of them refuse together
    rank, world = rank_and_world()
    temp = on_rank0(f"start save_sharded {text}", lambda: _start_save(text))
    try:
        writer = dcp.FileSystemWriter(temp, sync_files=True)
        with quiet_single_process():
            dcp.save(sharded, storage_writer=writer, no_dist=world == 1)
        meta["world_size"] = world
        known = _own_checksums(temp, text)
        return on_rank0(f"commit save_sharded {text}", lambda: _finish_save(temp, text, rest, meta, known))
    except BaseException:
        if rank == 0:  # the writer's pid is alive, so the sweep would keep this directory for hours
            shutil.rmtree(temp, ignore_errors=True)
        raise


class _SafeLoadPlanner(DefaultLoadPlanner):
    """Reads non-tensor entries with ``weights_only=True`` (torch's planner unpickles them unrestricted)."""

    @override
    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        """Load one non-tensor entry safely, then hand it to the default planner.

        Args:
            read_item: the entry being read.
            value: its serialized bytes.
        """
        safe = torch.load(value, weights_only=True)
        # Re-serialized here, so that the default planner only ever unpickles what weights_only accepted.
        buffer = io.BytesIO()
        torch.save(safe, buffer)
        buffer.seek(0)
        super().load_bytes(read_item, buffer)


@dataclasses.dataclass(frozen=True)
class _Opened:
    """What every rank reads before ``dcp.load``: the marker, the metadata and the non-sharded entries."""

    marker: dict[str, Any]
    metadata: Metadata
    rest: dict[str, Any]


def _read_meta(path: str, expected: Mapping[str, Any] | None, verify: bool) -> dict[str, Any]:
    meta_path = os.path.join(path, META_NAME)
    if (expected is None or not verify) and not os.path.lexists(meta_path):
        return {}  # a directory of shards only (not written by save_sharded)
    if verify and expected is None:
        raise CheckpointCorruptError(meta_path, "the commit marker does not list it (added after the save?)")
    data = read_whole(meta_path, expected if verify else None)
    try:
        loaded = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as error:  # the checksums matched, so this is not damage: a file torch cannot read
        raise CheckpointError(f"Cannot read {meta_path!r}: {error}") from error
    if not isinstance(loaded, dict):
        raise CheckpointCorruptError(meta_path, f"it holds a {type(loaded).__name__}, not a dict")
    return loaded


def _open(path: str, verify: bool) -> _Opened:
    """Read the marker, then ``.metadata`` and ``meta.pt`` once each (checked against the marker if ``verify``)."""
    marker = sharded_commit.read_marker(path)
    files: dict[str, Any] = marker["files"]
    metadata_path = os.path.join(path, METADATA_NAME)
    if verify and METADATA_NAME not in files:
        raise CheckpointCorruptError(metadata_path, "the commit marker does not list it")
    data = read_whole(metadata_path, files[METADATA_NAME] if verify else None)
    metadata = metadata_from_bytes(data, metadata_path)
    return _Opened(marker, metadata, _read_meta(path, files.get(META_NAME), verify))


def _reader(path: str, opened: _Opened, verify: bool, no_dist: bool) -> StorageReader:
    """The one-pass verifying reader; torch's own reader after a separate check where the fence says so."""
    locations = storage_locations(opened.metadata.storage_data)
    skipped = (METADATA_NAME, META_NAME)  # read (and checked) by _open
    shards = {name: entry for name, entry in opened.marker["files"].items() if name not in skipped}
    if locations is not None:
        return VerifyingReader(path, opened.metadata, locations, shards, verify)
    if verify and no_dist:
        sharded_commit.verify_dir(path)
    elif verify:  # two passes: every file checked first (by rank 0), then read by torch
        on_rank0(f"verify load_sharded {path}", lambda: sharded_commit.verify_dir(path))
    return FileSystemReader(path)


def _load_failure(path: str, error: BaseException) -> CheckpointError:
    """One error for every rank: the damage a rank found (lowest rank first), else the load failure."""
    failures = error.failures if isinstance(error, CheckpointException) else {0: (error, None)}
    for _, (failure, _) in sorted(failures.items()):
        if isinstance(failure, CheckpointCorruptError):
            return CheckpointCorruptError(failure.path, failure.reason)
    return CheckpointError(
        f"Cannot load the sharded checkpoint {path!r} into the template: {error}. The template's keys "
        "must be entries the checkpoint holds (see `stepstone ckpt convert` to look inside)."
    )


def _load(path: str, template: dict[str, Any], verify: bool, no_dist: bool) -> dict[str, Any]:
    """Fill ``template`` from ``path`` (every byte read once, verified as read when ``verify``)."""
    opened = on_every_rank(f"open load_sharded {path}", lambda: _open(path, verify), no_dist)
    reader = _reader(path, opened, verify, no_dist)
    try:
        with quiet_single_process():
            dcp_load(template, storage_reader=reader, planner=_SafeLoadPlanner(), no_dist=no_dist)
    # CheckpointException (one rank's failure, raised on every rank) is a BaseException.
    except (CheckpointException, RuntimeError, ValueError, KeyError) as error:
        raise _load_failure(path, error) from error
    return {**opened.rest, **template}


def load_sharded(path: PathLike, state_template: dict[str, Any], *, verify: bool = True) -> dict[str, Any]:
    """Load a sharded checkpoint into ``state_template``; call it on every rank (or on one process).

    Every file is read once: each shard file by one rank from its first byte to its last, its size and CRC32
    checked against the commit marker as it is read (see ``sharded_reader``); a rank needing a few items of
    another rank's file reads only those.

    Args:
        path: the checkpoint directory.
        state_template: the sharded entries to fill, e.g. ``{"state_dict": get_model_state_dict(model),
            "optimizer_states": [get_optimizer_state_dict(model, optimizer)]}``; its tensors (DTensors on
            N ranks, plain tensors on one process) are filled in place, whatever the world size that saved.
        verify: check every file's size and CRC32 while reading it (no separate pass).

    Returns:
        The whole checkpoint: the non-sharded entries of ``meta.pt`` plus the filled template entries.

    Raises:
        CheckpointNotFoundError: no directory at ``path``, or a directory without the commit marker.
        CheckpointCorruptError: a file is missing, truncated or damaged (the error names it), on every rank.
            The template may then hold part of the damaged checkpoint: load another one over it.
        CheckpointError: the template asks for an entry the checkpoint does not hold, or torch failed.
        UnsafeCheckpointError: the checkpoint's metadata would run code when unpickled (never loaded).
        MisconfigurationException: an invalid argument.
    """
    text = _check_dir_path("path", path)
    if not isinstance(state_template, dict):
        raise MisconfigurationException(
            f"state_template must be a dict of the sharded entries to fill, got {type(state_template).__name__}"
        )
    return _load(text, state_template, verify, no_dist=rank_and_world()[1] == 1)


def gather_sharded(path: PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Load a whole sharded checkpoint into memory on one process, as an ordinary checkpoint dict.

    Args:
        path: the checkpoint directory.
        verify: check every file's size and CRC32 while reading it.

    Returns:
        The checkpoint: full tensors (whatever the world size that saved), optimizer states that
        ``Optimizer.load_state_dict`` accepts (see ``restore_optimizer_states``).

    Raises:
        CheckpointNotFoundError: ``path`` is not a committed sharded checkpoint.
        CheckpointCorruptError: a file of ``path`` is damaged.
        UnsafeCheckpointError: its metadata would run code when unpickled.
        MisconfigurationException: ``path`` is not a local directory path.
    """
    text = _check_dir_path("path", path)
    whole = _load(text, template_from_metadata(text), verify, no_dist=True)
    restore_optimizer_states(whole)
    return whole


def convert_sharded_to_file(src_dir: PathLike, dst_file: PathLike) -> CheckpointRecord:
    """Gather a sharded checkpoint into one stepstone file (on one process; it holds the whole model).

    The file is an ordinary stepstone checkpoint (checksummed, committed atomically): ``torch.load(path,
    weights_only=True)``, ``load_file`` and ``LightningModule.load_from_checkpoint`` read it.

    Args:
        src_dir: the sharded checkpoint directory (each file verified as it is read).
        dst_file: the file to write (local path or URL).

    Returns:
        The record of the written file.

    Raises:
        CheckpointNotFoundError: ``src_dir`` is not a committed sharded checkpoint.
        CheckpointCorruptError: a file of ``src_dir`` is damaged.
        UnsafeCheckpointError: its metadata would run code when unpickled.
        OSError: writing ``dst_file`` failed (nothing appears there).
    """
    text = _check_dir_path("src_dir", src_dir)
    marker = sharded_commit.read_marker(text)
    whole = gather_sharded(text)
    metadata = {key: marker.get(key) for key in ("step", "epoch")}
    record = sharded_commit.record_from_marker(text, marker, verified=True)
    return save_file(dst_file, whole, metadata={**metadata, "metrics": record.metrics}, progress=False)
