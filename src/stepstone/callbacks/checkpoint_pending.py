"""What an asynchronous ModelCheckpoint save leaves to do once its file is committed.

The top-k decision is taken when the save is triggered and written into the checkpoint itself (so a resume
continues the same top k), but it is published -- ``best_model_path``, ``best_k_models``, ``last_model_path``,
the loggers' ``after_save_checkpoint`` and the deletions of files that left the top k -- only after the commit,
on the training thread (the ``last`` copy or link itself is made by the writer thread right after the commit) (at the next hook that polls, the next trigger, or the end of ``fit``). Until then the
callback still names the earlier, committed files; if the write fails, they stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepstone.checkpoint import SaveHandle

__all__ = ["PendingSave"]


@dataclass
class PendingSave:
    """An async save in flight and its deferred bookkeeping.

    Args:
        handle: the save's handle.
        filepath: the file being written.
        state: the callback's fields to publish after the commit (``best_model_path``, ``best_k_models``, ...).
        to_delete: files to delete after the commit (those that left the top k, the previous ``last``).
        last: ``(top-k file, last path)`` when the writer publishes the file as ``last`` after the commit, or None.
    """

    handle: SaveHandle
    filepath: str
    state: dict[str, Any]
    to_delete: list[str]
    last: tuple[str, str] | None
