"""What ``CheckpointManager.restore`` loads: the candidates for "latest", "best" or a step, first valid one wins."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from stepstone.checkpoint.loading import MapLocation, load
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.retention import AnyOf, KeepBest, RetentionPolicy
from stepstone.checkpoint.selection import first_valid, newest_first
from stepstone.checkpoint.storage import Storage
from stepstone.errors import CheckpointCorruptError, CheckpointNotFoundError, MisconfigurationException

__all__ = ["load_first_valid", "restore_candidates"]


def _find_keep_best(policy: object) -> list[KeepBest]:
    if isinstance(policy, KeepBest):
        return [policy]
    if isinstance(policy, AnyOf):
        return [found for inner in policy.policies for found in _find_keep_best(inner)]
    return []


def _best_policy(best: KeepBest | None, retention: RetentionPolicy) -> KeepBest:
    if best is not None:
        return best
    found = _find_keep_best(retention)
    if len(found) != 1:
        raise MisconfigurationException(
            "restore('best') needs one metric to rank by: pass best_metric='...' (and best_mode) to "
            f"CheckpointManager, or use a single KeepBest retention (retention={retention!r})"
        )
    return found[0]


def restore_candidates(
    records: list[CheckpointRecord], which: object, best: KeepBest | None, retention: RetentionPolicy
) -> list[CheckpointRecord]:
    """The checkpoints to try for ``restore(which)``, first choice first.

    Args:
        records: the directory's checkpoint files.
        which: ``"latest"``, ``"best"`` or a step (int).
        best: the ranking given as ``best_metric``/``best_mode`` (None: the ``KeepBest`` of ``retention``).
        retention: the manager's retention policy.

    Returns:
        The candidates: newest first; best first (those with the metric); or those of the step.

    Raises:
        MisconfigurationException: for an invalid ``which``, or "best" without one metric to rank by.
    """
    if which == "latest":
        return newest_first(records)
    if which == "best":
        policy = _best_policy(best, retention)
        return [r for r in policy.rank(records) if policy.metric in r.metrics]
    if isinstance(which, int) and not isinstance(which, bool):
        return [r for r in records if r.step == which]
    raise MisconfigurationException(f"restore(which={which!r}): pass 'latest', 'best' or a step number (int)")


def load_first_valid(
    storage: Storage,
    directory: str,
    candidates: list[CheckpointRecord],
    which: object,
    map_location: MapLocation,
    shown_directory: str,
) -> tuple[dict[str, Any], CheckpointRecord]:
    """Load the first candidate that is valid, verified in one pass; warn about each corrupt one skipped.

    Args:
        storage: the storage of ``directory``.
        directory: the checkpoint directory, as ``storage`` names it.
        candidates: from ``restore_candidates``.
        which: what ``restore`` was asked for (an explicit step gets no fallback).
        map_location: where tensors go, as for ``torch.load``.
        shown_directory: the directory as the user named it (for messages).

    Returns:
        The checkpoint dict and its record.

    Raises:
        CheckpointNotFoundError: no candidate is valid.
        CheckpointCorruptError: the candidate of an explicit step is corrupt.
    """
    corrupt: list[str] = []

    def on_corrupt(
        record: CheckpointRecord, error: CheckpointCorruptError, following: CheckpointRecord | None
    ) -> None:
        if isinstance(which, int):
            raise error
        corrupt.append(record.name)
        name = following.name if following is not None else "none left"
        warnings.warn(f"{error} Falling back to the next candidate ({name}).", stacklevel=5)

    def open_one(record: CheckpointRecord) -> tuple[dict[str, Any], CheckpointRecord]:
        # One pass: the verified load is the check (no separate verify that would read the file twice).
        path = storage.join(directory, record.name)
        return load(storage, path, map_location=map_location, verify=True, mmap=False, trusted=False)

    found = first_valid(candidates, open_one, on_corrupt, skip_unreadable=False)
    if found is not None:
        return found[1]
    raise CheckpointNotFoundError(_nothing_to_restore(which, shown_directory, corrupt))


def _nothing_to_restore(which: object, directory: str, corrupt: Iterable[str]) -> str:
    damaged = sorted(corrupt)
    detail = f"; these were corrupt: {damaged}" if damaged else ""
    return f"No valid checkpoint matches restore({which!r}) in {directory!r}{detail}"
