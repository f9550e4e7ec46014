"""An asynchronous ModelCheckpoint save in flight, and the trigger plan it carries out.

The plan (top k, ``last``, deletions) is made when the save is triggered and its state is written into the
checkpoint itself (so a resume continues the same top k); the callback adopts it -- ``best_model_path``,
``best_k_models``, ``last_model_path``, the loggers' ``after_save_checkpoint``, the deletions -- only after the
commit, on the training thread (the ``last`` copy or link is made by the writer thread right after the commit).
Until then the callback names the earlier, committed files; if the write fails, they stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepstone.callbacks.checkpoint_plan import TriggerPlan
    from stepstone.checkpoint import SaveHandle

__all__ = ["PendingSave"]


@dataclass(frozen=True)
class PendingSave:
    """An async save in flight and the plan it carries out.

    Args:
        handle: the save's handle.
        filepath: the file being written.
        plan: the trigger's plan, adopted once the file is committed.
    """

    handle: SaveHandle
    filepath: str
    plan: TriggerPlan
