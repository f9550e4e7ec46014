"""Which checkpoint ``fit(ckpt_path="last")`` and ``"auto"`` resume from, chosen and read in one pass.

The candidates are the committed checkpoints of every ModelCheckpoint's local folder, newest first (the
engine's one order, :func:`stepstone.checkpoint.selection.newest_first`): the highest step; at equal steps a
``last*`` checkpoint (it holds the newest state of that step, e.g. a preemption save written after the step's
top-k file); then the save time recorded inside the checkpoint (never the file's mtime). Files and sharded
(FSDP) directories compete alike. Each candidate file is read once, verified while it is read: the first that
loads is the one resumed from, and its dict is handed on (no second read of a large file after a preemption).
A candidate that fails verification is skipped with a warning naming it, and the next newest is tried.

A sharded directory is chosen on its commit marker alone: its shards are read once, verified as they are
read, when the strategy loads them (``load_sharded``); if that finds damage, the resume calls
:func:`newest_checkpoint` again with ``after=`` the damaged directory, which continues in the same order.
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


def newest_checkpoint(
    callbacks: Sequence[ModelCheckpoint], read: bool = True, after: str | None = None
) -> Chosen | None:
    """The newest committed checkpoint of the callbacks' folders that verifies.

    Args:
        callbacks: the Trainer's ModelCheckpoints (local or remote folders; missing local ones are passed over).
        read: load the chosen file (verified as it is read; a sharded directory is chosen on its marker and
            verified when loaded); False: verify the chosen checkpoint without loading it, whatever its kind.
        after: only candidates older than this path in the order (the next choice after ``after`` turned out
            damaged when it was loaded); None: all.

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
        if index.is_sharded(record.name):
            if not read:
                index.verify(record.name)
            return None  # chosen on its marker (read by the listing); verified when loaded into the shards
        if not read or record.format_version == 0:
            index.verify(record.name)  # a file without a trailer fails here
            return None
        return load_file(record.path, map_location="cpu")

    candidates = newest_first(list({record.path: record for record in records}.values()), is_last)
    paths = [record.path for record in candidates]
    if after is not None and after in paths:
        candidates = candidates[paths.index(after) + 1 :]
    return first_valid(candidates, open_one)
