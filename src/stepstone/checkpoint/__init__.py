"""stepstone's checkpoint engine: the format, the commit protocol, the index, retention and the manager.

It stands alone (it imports only torch, fsspec and the standard library, never the trainer side), so a
hand-written training loop can use it directly::

    from stepstone.checkpoint import CheckpointManager, KeepBest, KeepLatest, AnyOf

    with CheckpointManager("ckpts", retention=AnyOf(KeepLatest(2), KeepBest(3, "val_loss"))) as manager:
        manager.save(step, {"model": model.state_dict()}, metrics={"val_loss": loss})
        state = manager.restore("latest")

Every file is one zip that ``torch.load(path, weights_only=True)`` reads, plus a checksum trailer in the
zip comment (see ``format.py``); every save is committed atomically and durably (``commit.py``); every
load verifies the checksums before any object is returned (``loading.py``).
"""

from __future__ import annotations

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
from stepstone.checkpoint.manager import CheckpointManager
from stepstone.checkpoint.progress import Progress
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.retention import AnyOf, KeepAll, KeepBest, KeepEveryNSteps, KeepLatest
from stepstone.checkpoint.staging import HostStaging
from stepstone.checkpoint.writer import AsyncWriter, SaveHandle

__all__ = [
    "AnyOf",
    "AsyncWriter",
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
