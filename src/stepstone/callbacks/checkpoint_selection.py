"""Which checkpoint of a run folder a resume picks: ``fit(ckpt_path="last")`` and ``"auto"``.

Newest means the highest step; at equal steps a ``last*`` checkpoint (it holds the newest state of that step,
e.g. a preemption save written after the step's top-k file), then the save time recorded inside the checkpoint
(never the file's mtime). Files and sharded (FSDP) directories compete alike. A candidate that fails
verification is skipped with a warning naming it, and the next newest is tried.
"""

from __future__ import annotations

import warnings

from stepstone.checkpoint import RunIndex
from stepstone.errors import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError

__all__ = ["newest_checkpoint"]


def newest_checkpoint(dirpath: str, last_name: str) -> tuple[str, int, float] | None:
    """The newest committed checkpoint in ``dirpath`` that verifies.

    Args:
        dirpath: a run folder, local or a URL (a ModelCheckpoint's ``dirpath``).
        last_name: the ``last`` checkpoint's name stem (``ModelCheckpoint.CHECKPOINT_NAME_LAST``).

    Returns:
        ``(path, step, created)``, or None when no checkpoint verifies.
    """
    index = RunIndex(dirpath)
    records = sorted(
        index.entries(),
        key=lambda r: (r.step is not None, r.step or 0, r.name.startswith(last_name), r.created, r.name),
        reverse=True,
    )
    for candidate in records:
        try:
            record = index.verify(candidate.name)  # a file or a sharded directory
        except CheckpointNotFoundError:
            continue
        except CheckpointCorruptError as error:
            warnings.warn(f"{error} Falling back to the next newest checkpoint.", UserWarning, stacklevel=3)
            continue
        except CheckpointError as error:
            warnings.warn(f"Skipping {candidate.path!r}: {error}", UserWarning, stacklevel=3)
            continue
        return record.path, record.step or 0, record.created
    return None
