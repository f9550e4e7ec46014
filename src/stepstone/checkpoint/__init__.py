"""stepstone's checkpoint engine: the format, the commit protocol, the index, retention and the manager.

It stands alone (it imports only torch, fsspec, typing_extensions and the standard library, never the trainer
side), so a hand-written training loop can use it directly::

    from stepstone.checkpoint import CheckpointManager, KeepBest, KeepLatest, AnyOf

    with CheckpointManager("ckpts", retention=AnyOf(KeepLatest(2), KeepBest(3, "val_loss"))) as manager:
        manager.save(step, {"model": model.state_dict()}, metrics={"val_loss": loss})
        state = manager.restore("latest")

Every file is one zip that ``torch.load(path, weights_only=True)`` reads, plus a checksum trailer in the
zip comment (see ``format.py``); every save is committed atomically and durably (``commit.py``); every
load verifies the checksums before any object is returned (``loading.py``).

``CheckpointManager`` is the run-directory object: it saves (``save`` with retention, or ``save_as`` under an
explicit name; synchronous or in the background; a file or a sharded directory), publishes a ``last`` copy or
link after the commit, deletes (``remove``), and restores the newest or best valid checkpoint in one read.
Managers may share one ``SaveQueue`` (one background save in flight, one host copy of the state); the
Trainer's checkpoint port saves through one manager per folder.

A checkpoint is one file or a sharded (FSDP) directory; ``kind_of(path)`` says which and returns its
``CheckpointKind`` (describe, verify, remove, sweep...); ``remove_checkpoint(path)`` is the one deletion. The sharded API (``save_sharded``, ``load_sharded``,
``convert_sharded_to_file``, ``is_sharded_checkpoint``, ``read_sharded_info``, ``verify_sharded``,
``remove_sharded``) is exported here too; it is imported on first use, because
``torch.distributed.checkpoint`` takes about a second to import.
"""

from __future__ import annotations

from typing import Any

from stepstone.checkpoint.files import (
    copy_file,
    is_local,
    link_file,
    load_file,
    read_info,
    remove_file,
    save_file,
    save_file_async,
    sweep_stale_temps,
    verify_file,
)
from stepstone.checkpoint.index import RunIndex
from stepstone.checkpoint.kinds import FILE, SHARDED_DIRECTORY, CheckpointKind, kind_of, remove_checkpoint
from stepstone.checkpoint.manager import CheckpointManager
from stepstone.checkpoint.progress import Progress
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.retention import AnyOf, KeepAll, KeepBest, KeepEveryNSteps, KeepLatest
from stepstone.checkpoint.save_queue import SaveQueue
from stepstone.checkpoint.staging import HostStaging
from stepstone.checkpoint.writer import AsyncWriter, SaveHandle

_SHARDED_NAMES = (
    "convert_sharded_to_file",
    "is_sharded_checkpoint",
    "load_sharded",
    "read_sharded_info",
    "remove_sharded",
    "save_sharded",
    "verify_sharded",
)

__all__ = [
    "FILE",
    "SHARDED_DIRECTORY",
    "AnyOf",
    "AsyncWriter",
    "CheckpointKind",
    "CheckpointManager",
    "CheckpointRecord",
    "HostStaging",
    "KeepAll",
    "KeepBest",
    "KeepEveryNSteps",
    "KeepLatest",
    "Progress",
    "RunIndex",
    "SaveHandle",
    "SaveQueue",
    "convert_sharded_to_file",
    "copy_file",
    "is_local",
    "is_sharded_checkpoint",
    "kind_of",
    "link_file",
    "load_file",
    "load_sharded",
    "read_info",
    "read_sharded_info",
    "remove_checkpoint",
    "remove_file",
    "remove_sharded",
    "save_file",
    "save_file_async",
    "save_sharded",
    "sweep_stale_temps",
    "verify_file",
    "verify_sharded",
]


def __getattr__(name: str) -> Any:
    """The sharded API, imported on first use (``torch.distributed.checkpoint`` is slow to import).

    Args:
        name: the attribute asked for.

    Returns:
        The function from ``stepstone.checkpoint.sharded``.

    Raises:
        AttributeError: for any other name.
    """
    if name in _SHARDED_NAMES:
        from stepstone.checkpoint import sharded

        return getattr(sharded, name)
    raise AttributeError(f"module 'stepstone.checkpoint' has no attribute {name!r}")
