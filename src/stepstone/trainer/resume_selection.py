"""Which checkpoint ``fit(ckpt_path="last")`` and ``"auto"`` resume from, chosen and read in one pass.

The candidates are the committed checkpoints of every ModelCheckpoint's local folder, newest first (the
engine's one order, :func:`stepstone.checkpoint.selection.newest_first`): the highest step; at equal steps a
``last*`` checkpoint (it holds the newest state of that step, e.g. a preemption save written after the step's
top-k file); then the save time recorded inside the checkpoint (never the file's mtime). Files and sharded
(FSDP) directories compete alike. Each candidate file is read once, verified while it is read: the first that
loads is the one resumed from, and its dict is handed on (no second read of a large file after a preemption).
A candidate that fails verification is skipped with a warning naming it, and the next newest is tried.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stepstone.checkpoint import CheckpointRecord, RunIndex, is_local, load_file
from stepstone.checkpoint.selection import first_valid, newest_first

if TYPE_CHECKING:
    from stepstone.callbacks.model_checkpoint import ModelCheckpoint

__all__ = ["Chosen", "newest_checkpoint"]

#: The chosen checkpoint's record and its dict (None where it was only verified: a sharded directory).
Chosen = tuple[CheckpointRecord, dict[str, Any] | None]


def newest_checkpoint(callbacks: Sequence[ModelCheckpoint], read: bool = True) -> Chosen | None:
    """The newest committed checkpoint of the callbacks' folders that verifies.

    Args:
        callbacks: the Trainer's ModelCheckpoints (local or remote folders; missing local ones are passed over).
        read: load the chosen file (verified as it is read); False: only verify it.

    Returns:
        ``(record, checkpoint dict or None)``, or None when no checkpoint verifies.
    """
    owners: dict[str, tuple[RunIndex, str]] = {}  # candidate path -> (its folder's index, the `last` stem)
    records: list[CheckpointRecord] = []
    for callback in callbacks:
        folder = callback.dirpath
        if folder is None or (is_local(folder) and not os.path.isdir(folder)):
            continue  # a remote folder is listed by its run index (empty when missing)
        index = RunIndex(folder)
        for record in index.entries():
            owners[record.path] = (index, callback.CHECKPOINT_NAME_LAST)
            records.append(record)

    def is_last(record: CheckpointRecord) -> bool:
        return record.name.startswith(owners[record.path][1])

    def open_one(record: CheckpointRecord) -> dict[str, Any] | None:
        index = owners[record.path][0]
        if not read or index.is_sharded(record.name) or record.format_version == 0:
            # A directory is read later, into the strategy's shards; a file without a trailer fails here.
            index.verify(record.name)
            return None
        return load_file(record.path, map_location="cpu")

    unique = list({record.path: record for record in records}.values())
    return first_valid(newest_first(unique, is_last), open_one)
