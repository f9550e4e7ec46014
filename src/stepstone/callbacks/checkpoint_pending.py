"""What an asynchronous ModelCheckpoint save leaves to do once its file is committed.

The top-k decision is taken when the save is triggered and written into the checkpoint itself (so a resume
continues the same top k), but it is published -- ``best_model_path``, ``best_k_models``, ``last_model_path``,
the loggers' ``after_save_checkpoint`` and the deletions of files that left the top k -- only after the commit,
on the training thread (the ``last`` copy or link itself is made by the writer thread right after the commit) (at the next hook that polls, the next trigger, or the end of ``fit``). Until then the
callback still names the earlier, committed files; if the write fails, they stay as they are.
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
