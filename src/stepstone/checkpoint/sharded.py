"""Sharded (FSDP/DTensor) checkpoints: a directory in torch.distributed.checkpoint's layout, committed last.

:func:`save_sharded` is called on every rank: each rank writes its own shards (``dcp.save`` into a hidden
temporary directory next to the final path), rank 0 adds ``meta.pt`` (every entry that is not sharded: loop
state, callbacks, hyper-parameters, epoch/global_step...), checksums every file into the marker and commits
the directory (see ``sharded_commit``). So one directory holds everything a file checkpoint holds.

:func:`load_sharded` verifies the marker's checksums, then lets ``dcp.load`` fill the caller's template; the
template's tensors decide the layout, so a checkpoint written by N ranks loads on M ranks (or on one process,
without a process group). :func:`convert_sharded_to_file` turns a directory into one ordinary stepstone file.

Only local (or shared, POSIX) filesystems are supported: every rank must see the same directory. The ranks
synchronise through the default torch.distributed process group (this module does not import the trainer
side); without one (or with one rank) everything happens in this process.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem
from typing_extensions import override

from stepstone.checkpoint import commit, sharded_commit
from stepstone.checkpoint.files import save_file
from stepstone.checkpoint.record import CheckpointRecord, normalize_metadata
from stepstone.checkpoint.safety import check_weights_only_safe
from stepstone.checkpoint.sharded_commit import MARKER_NAME, remove_sharded
from stepstone.checkpoint.sharded_reading import (
    check_metadata_safe,
    is_sharded_checkpoint,
    read_sharded_info,
    template_from_metadata,
    verify_sharded,
)
from stepstone.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    MisconfigurationException,
)

__all__ = [
    "DEFAULT_SHARDED_KEYS",
    "MARKER_NAME",
    "META_NAME",
    "convert_sharded_to_file",
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
T = TypeVar("T")
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


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    # One process without a process group is a supported case here, not the mistake torch warns about.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled, unavailable or uninitialized"
        )
        yield


def _failure(error: BaseException) -> tuple[str, ...]:
    # Exceptions are sent as strings: CheckpointCorruptError(path, reason) cannot be rebuilt by unpickling.
    if isinstance(error, CheckpointCorruptError):
        return ("corrupt", error.path, error.reason)
    if isinstance(error, CheckpointNotFoundError):
        return ("missing", str(error))
    return ("other", f"{type(error).__name__}: {error}")


def _rebuild(failure: tuple[str, ...], what: str) -> CheckpointError:
    if failure[0] == "corrupt":
        return CheckpointCorruptError(failure[1], failure[2])
    if failure[0] == "missing":
        return CheckpointNotFoundError(failure[1])
    return CheckpointError(f"rank 0 failed to {what}: {failure[1]}")


def _gather(what: str, obj: Any) -> list[Any]:
    """Every rank's ``obj``; also a named barrier: ranks at different points fail instead of pairing up."""
    world = _world()[1]
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (what, obj))
    points = {index: point for index, (point, _) in enumerate(gathered)}
    if any(point != what for point in points.values()):
        raise CheckpointError(
            f"The ranks are at different checkpoint steps {points}; save_sharded/load_sharded must be called "
            "on every rank, in the same order."
        )
    return [value for _, value in gathered]


def _on_rank0(what: str, work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 only and give its result (or its failure) to every rank."""
    if _world()[1] == 1:
        return work()
    outcome: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if _world()[0] == 0:
        try:
            outcome = ("ok", work())
        except Exception as caught:  # re-raised below, after the other ranks were told
            error = caught
            outcome = ("failed", _failure(caught))
    status, value = _gather(what, outcome)[0]
    if error is not None:
        raise error
    if status != "ok":
        raise _rebuild(value, what)
    result: T = value
    return result


def _own_checksums(temp: str, text: str) -> dict[str, dict[str, Any]]:
    """Every rank checksums the shards it wrote; gathered for rank 0's marker (and a barrier after writing)."""
    rank, world = _world()
    try:
        # torch.distributed.checkpoint names rank r's files "__r_<n>.distcp"; rank 0 reads whatever is left.
        outcome: tuple[str, Any] = (
            "ok",
            sharded_commit.checksum_files(temp, f"__{rank}_") if world > 1 else {},
        )
    except OSError as error:
        outcome = ("failed", f"rank {rank}: {error}")
    known: dict[str, dict[str, Any]] = {}
    for status, value in _gather(f"shards written save_sharded {text}", outcome):
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
    rank, world = _world()
    temp = _on_rank0(f"start save_sharded {text}", lambda: _start_save(text))
    try:
        writer = dcp.FileSystemWriter(temp, sync_files=True)
        with _quiet_single_process():
            dcp.save(sharded, storage_writer=writer, no_dist=world == 1)
        meta["world_size"] = world
        known = _own_checksums(temp, text)
        return _on_rank0(f"commit save_sharded {text}", lambda: _finish_save(temp, text, rest, meta, known))
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


def _read_meta(path: str) -> dict[str, Any]:
    meta_path = os.path.join(path, META_NAME)
    try:
        loaded = torch.load(meta_path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        return {}
    except Exception as error:  # the checksums matched, so this is not damage: a file torch cannot read
        raise CheckpointError(f"Cannot read {meta_path!r}: {error}") from error
    if not isinstance(loaded, dict):
        raise CheckpointCorruptError(meta_path, f"it holds a {type(loaded).__name__}, not a dict")
    return loaded


def load_sharded(path: PathLike, state_template: dict[str, Any], *, verify: bool = True) -> dict[str, Any]:
    """Load a sharded checkpoint into ``state_template``; call it on every rank (or on one process).

    Args:
        path: the checkpoint directory.
        state_template: the sharded entries to fill, e.g. ``{"state_dict": get_model_state_dict(model),
            "optimizer_states": [get_optimizer_state_dict(model, optimizer)]}``; its tensors (DTensors on
            N ranks, plain tensors on one process) are filled in place, whatever the world size that saved.
        verify: check every file's size and CRC32 first (rank 0 reads them all).

    Returns:
        The whole checkpoint: the non-sharded entries of ``meta.pt`` plus the filled template entries.

    Raises:
        CheckpointNotFoundError: no directory at ``path``, or a directory without the commit marker.
        CheckpointCorruptError: a file is missing, truncated or damaged (the error names it).
        CheckpointError: the template asks for an entry the checkpoint does not hold, or torch failed.
        UnsafeCheckpointError: the checkpoint's metadata would run code when unpickled (never loaded).
        MisconfigurationException: an invalid argument.
    """
    text = _check_dir_path("path", path)
    if not isinstance(state_template, dict):
        raise MisconfigurationException(
            f"state_template must be a dict of the sharded entries to fill, got {type(state_template).__name__}"
        )
    check = sharded_commit.verify_dir if verify else sharded_commit.read_marker
    _on_rank0(f"verify load_sharded {text}", lambda: check(text))
    check_metadata_safe(text)
    try:
        with _quiet_single_process():
            dcp.load(
                state_template,
                storage_reader=dcp.FileSystemReader(text),
                planner=_SafeLoadPlanner(),
                no_dist=_world()[1] == 1,
            )
    # dcp.CheckpointException (one rank's failure, raised on every rank) is a BaseException.
    except (dcp.CheckpointException, RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"Cannot load the sharded checkpoint {text!r} into the template: {error}. The template's keys "
            "must be entries the checkpoint holds (see `stepstone ckpt convert` to look inside)."
        ) from error
    return {**_read_meta(text), **state_template}


def convert_sharded_to_file(src_dir: PathLike, dst_file: PathLike) -> CheckpointRecord:
    """Gather a sharded checkpoint into one stepstone file (on one process; it holds the whole model).

    The file is an ordinary stepstone checkpoint (checksummed, committed atomically): ``torch.load(path,
    weights_only=True)``, ``load_file`` and ``LightningModule.load_from_checkpoint`` read it.

    Args:
        src_dir: the sharded checkpoint directory (verified first).
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
    marker = sharded_commit.verify_dir(text)
    state = template_from_metadata(text)
    with _quiet_single_process():
        dcp.load(state, storage_reader=dcp.FileSystemReader(text), planner=_SafeLoadPlanner(), no_dist=True)
    whole = {**_read_meta(text), **state}
    metadata = {key: marker.get(key) for key in ("step", "epoch")}
    record = sharded_commit.record_from_marker(text, marker, verified=True)
    return save_file(dst_file, whole, metadata={**metadata, "metrics": record.metrics}, progress=False)
