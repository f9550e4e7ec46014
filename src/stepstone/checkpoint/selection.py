"""Choosing a checkpoint: the one "newest" order and the one loop that takes the first candidate that is valid.

Every "newest valid checkpoint" of stepstone goes through here: ``RunIndex.newest``, ``CheckpointManager.restore``
and a Trainer's ``fit(ckpt_path="last"/"auto")``. The loop opens each candidate once with what the caller
needs (a checksum pass, or the verified load itself), so a resume reads the chosen file once, not a verify pass
and then a load.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from stepstone.checkpoint.record import CheckpointRecord
from stepstone.errors import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError

__all__ = ["first_valid", "newest_first"]

T = TypeVar("T")
#: Told of a corrupt candidate: (the candidate, its error, the next candidate or None).
OnCorrupt = Callable[[CheckpointRecord, CheckpointCorruptError, CheckpointRecord | None], None]


def newest_first(
    records: Iterable[CheckpointRecord], preferred: Callable[[CheckpointRecord], bool] | None = None
) -> list[CheckpointRecord]:
    """Order checkpoints newest first: by step (unknown last), then ``preferred``, then save time, then name.

    Args:
        records: the candidates.
        preferred: at equal steps, which come first (e.g. a ``last`` file, which holds the newest state of its
            step); None: none.

    Returns:
        The records, newest first. The save time is the one recorded in the checkpoint, never the mtime.
    """

    def key(record: CheckpointRecord) -> tuple[bool, int, bool, float, str]:
        first = preferred(record) if preferred is not None else False
        return (record.step is not None, record.step or 0, first, record.created, record.name)

    return sorted(records, key=key, reverse=True)


def first_valid(
    candidates: Sequence[CheckpointRecord],
    open_one: Callable[[CheckpointRecord], T],
    on_corrupt: OnCorrupt | None = None,
    skip_unreadable: bool = True,
) -> tuple[CheckpointRecord, T] | None:
    """Open the candidates in order and return the first that opens (each is opened at most once).

    Args:
        candidates: in the order to try them (see :func:`newest_first`).
        open_one: verifies or loads one candidate; raises a ``CheckpointError`` when it is not valid.
        on_corrupt: told of each corrupt candidate (it may raise to stop); None: a ``UserWarning`` naming it.
        skip_unreadable: also skip, with a warning, a candidate failing with another ``CheckpointError`` (e.g.
            a file without a stepstone trailer, which cannot be verified); False: raise it.

    Returns:
        ``(candidate, what open_one returned)``, or None when none is valid. A candidate deleted since it was
        listed is skipped silently.

    Raises:
        CheckpointError: from ``open_one`` when ``skip_unreadable`` is False, or raised by ``on_corrupt``.
    """
    for position, candidate in enumerate(candidates):
        try:
            return candidate, open_one(candidate)
        except CheckpointNotFoundError:
            continue
        except CheckpointCorruptError as error:
            following = candidates[position + 1] if position + 1 < len(candidates) else None
            if on_corrupt is not None:
                on_corrupt(candidate, error, following)
            else:
                warnings.warn(
                    f"{error} Falling back to the next newest checkpoint.", UserWarning, stacklevel=3
                )
        except CheckpointError as error:
            if not skip_unreadable:
                raise
            warnings.warn(f"Skipping {candidate.path!r}: {error}", UserWarning, stacklevel=3)
    return None
