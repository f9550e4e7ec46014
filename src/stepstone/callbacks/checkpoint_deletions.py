"""Which of the files a committed ModelCheckpoint trigger dropped are deleted now, and which stay owed (pure).

A kill between a commit and its deletions would leave files no state tracks, forever. So every checkpoint
records the deletions its trigger still owes (``pending_deletions`` in its callback state), and a run resumed
from it finishes them in ``on_train_start``. The file a run resumed from is never deleted by that run; it stays
owed, and the next run deletes it. A file the callback still names is never deleted, nor one outside its folder.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable

from stepstone.callbacks.checkpoint_settings import is_local

__all__ = ["sort_deletions"]


def sort_deletions(
    paths: Iterable[str], tracked: Collection[str], resumed_from: str | None, dirpath: str | None
) -> tuple[list[str], list[str]]:
    """Split dropped files into those to delete now and those still owed.

    Args:
        paths: the files dropped (owed ones first), possibly repeated.
        tracked: the files the callback's state names (best, last, the top k): kept.
        resumed_from: the checkpoint this run resumed from (``trainer.ckpt_path``), or None.
        dirpath: the callback's folder: local files outside it are kept.

    Returns:
        ``(delete, owed)``: the files to delete now, and the resume source when nothing names it.
    """
    source = os.path.abspath(resumed_from) if resumed_from is not None else None
    delete, owed = [], []
    for path in dict.fromkeys(paths):
        if path in tracked:
            continue
        if source is not None and os.path.abspath(path) == source:
            owed.append(path)
        elif not (is_local(path) and dirpath is not None) or _inside(path, dirpath):
            delete.append(path)
    return delete, owed


def _inside(path: str, dirpath: str) -> bool:
    return os.path.dirname(os.path.abspath(path)).startswith(os.path.abspath(dirpath))
