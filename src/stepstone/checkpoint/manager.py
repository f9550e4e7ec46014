"""CheckpointManager: save / restore / list the checkpoints of one run directory.

It composes the engine: ``files.save_file`` writes and commits one file, ``RunIndex`` lists the directory
(from the files' trailers: nothing but checkpoints is written there), the retention policy decides what to
keep, and the manager deletes the rest -- the only place that deletes, and only after the new checkpoint is
committed. Files stepstone did not write (no trailer) are never deleted. Restoring "latest" or "best"
verifies the candidate while loading it and falls back to the next candidate, with a warning, when it is
corrupt.

``restore("best")`` ranks by ``best_metric``/``best_mode`` if given, else by the metric of the
``KeepBest`` policy in ``retention`` (alone or inside ``AnyOf``).
"""

from __future__ import annotations

import os
import string
import warnings
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from stepstone.checkpoint.files import save_file, sweep_stale_temps
from stepstone.checkpoint.format import estimate_size
from stepstone.checkpoint.index import CHECKPOINT_SUFFIX, RunIndex
from stepstone.checkpoint.kinds import remove_checkpoint
from stepstone.checkpoint.live import LiveGate, submit_staged
from stepstone.checkpoint.loading import MapLocation, load
from stepstone.checkpoint.record import CheckpointRecord, normalize_metadata
from stepstone.checkpoint.retention import AnyOf, KeepAll, KeepBest, RetentionPolicy
from stepstone.checkpoint.safety import check_weights_only_safe
from stepstone.checkpoint.selection import first_valid, newest_first
from stepstone.checkpoint.staging import HostStaging
from stepstone.checkpoint.storage import split_url
from stepstone.checkpoint.writer import AsyncWriter, SaveHandle, SyncWriter
from stepstone.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    MisconfigurationException,
)

__all__ = ["CheckpointManager"]


def _template_parts(filename: str) -> tuple[str, set[str]]:
    """The literal text of a filename template and its field names."""
    try:
        parsed = list(string.Formatter().parse(filename))
    except ValueError as error:
        raise MisconfigurationException(
            f"filename={filename!r} is not a valid format string: {error}"
        ) from None
    return "".join(text for text, _, _, _ in parsed), {
        field for _, field, _, _ in parsed if field is not None
    }


def _template_fields(filename: str) -> set[str]:
    return _template_parts(filename)[1]


def _check_filename(filename: object) -> str:
    if not isinstance(filename, str):
        raise MisconfigurationException(f"filename must be a str template, got {filename!r}")
    literal, fields = _template_parts(filename)
    problems = []
    if "step" not in fields:
        problems.append("it must contain '{step}' so that every step gets its own file")
    if not filename.endswith(CHECKPOINT_SUFFIX):
        problems.append(f"it must end with {CHECKPOINT_SUFFIX!r}")
    if "/" in literal or os.sep in literal or filename.startswith("."):
        problems.append("it must be a plain, non-hidden file name (no '/')")
    if problems:
        raise MisconfigurationException(
            f"filename={filename!r} is invalid: {'; '.join(problems)}, e.g. 'step={{step}}.ckpt'"
        )
    return filename


def _find_keep_best(policy: object) -> list[KeepBest]:
    if isinstance(policy, KeepBest):
        return [policy]
    if isinstance(policy, AnyOf):
        return [found for inner in policy.policies for found in _find_keep_best(inner)]
    return []


class CheckpointManager:
    """Saves, lists and restores the checkpoints of one run directory.

    Args:
        directory: the checkpoint directory (local path or URL); created on first save.
        retention: a policy (``KeepLatest(3)``, ``KeepBest(2, "val_loss")``, ``AnyOf(...)``); None keeps all.
        filename: file name template with ``{step}`` and optionally ``{epoch}`` and metric names,
            ending in ``.ckpt``.
        storage_options: fsspec options for a remote directory.
        best_metric: metric ranking ``restore("best")`` (default: the ``KeepBest`` metric of ``retention``).
        best_mode: ``"min"`` or ``"max"`` for ``best_metric``.
        async_save: save in the background: ``save`` returns once the state is copied into reusable host
            buffers (one copy of the state, kept between saves); the write, commit and
            retention run on a writer thread, one save at a time. ``wait``/``close`` wait for it.
        max_staging_bytes: with ``async_save``, the most bytes of host buffers (None: one full copy of the
            state). Storages over the budget are not copied: ``save`` returns once they are written to the
            file (the loop stalls for that part; the rest is written in the background). 0: no buffers.

    Raises:
        MisconfigurationException: for an invalid argument.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        retention: RetentionPolicy | None = None,
        filename: str = "step={step}.ckpt",
        storage_options: dict[str, Any] | None = None,
        best_metric: str | None = None,
        best_mode: str = "min",
        async_save: bool = False,
        max_staging_bytes: int | None = None,
    ) -> None:
        if retention is not None and not callable(retention):
            raise MisconfigurationException(
                f"retention={retention!r} is not a policy; pass e.g. KeepLatest(3) or None"
            )
        self._retention: RetentionPolicy = retention if retention is not None else KeepAll()
        self._filename = _check_filename(filename)
        self._best = KeepBest(1, best_metric, best_mode) if best_metric is not None else None
        if best_metric is None and best_mode != "min":
            raise MisconfigurationException(
                f"best_mode={best_mode!r} needs best_metric; pass best_metric='...'"
            )
        self._options = storage_options
        self._index = RunIndex(directory, storage_options=storage_options)
        self._storage, self._directory = split_url(os.fspath(directory), storage_options)
        if not isinstance(async_save, bool):
            raise MisconfigurationException(f"async_save must be True or False, got {async_save!r}")
        self._writer: SyncWriter | AsyncWriter = AsyncWriter() if async_save else SyncWriter()
        if max_staging_bytes is not None and not async_save:
            raise MisconfigurationException(
                f"max_staging_bytes={max_staging_bytes!r} only applies to async_save=True (a synchronous save "
                "stages nothing); pass async_save=True or drop it"
            )
        self._staging = HostStaging(max_staging_bytes=max_staging_bytes) if async_save else None
        self._closed = False
        self.last_restored: CheckpointRecord | None = None
        sweep_stale_temps(self._index.directory)

    @property
    def directory(self) -> str:
        """The checkpoint directory, as a path or URL."""
        return self._index.directory

    def _name_for(self, step: int, epoch: int | None, metrics: Mapping[str, float]) -> str:
        values: dict[str, Any] = {**metrics, "step": step, "epoch": epoch}
        missing = sorted(
            f for f in _template_fields(self._filename) if values.get(f.split(".")[0].split("[")[0]) is None
        )
        if missing:
            raise MisconfigurationException(
                f"filename={self._filename!r} uses {missing} but save() got no value for them; pass "
                "them as epoch=... or in metrics=..."
            )
        name = self._filename.format_map(values)
        if "/" in name or os.sep in name:
            raise MisconfigurationException(f"filename={self._filename!r} gives {name!r}, which contains '/'")
        return name

    def save(
        self,
        step: int,
        state: dict[str, Any],
        metrics: Mapping[str, Any] | None = None,
        *,
        epoch: int | None = None,
    ) -> SaveHandle:
        """Save a checkpoint for ``step``, then apply retention.

        Args:
            step: the training step (int >= 0), unique within the directory.
            state: the checkpoint dict (weights_only-safe content).
            metrics: metric values stored in the trailer (used by ``KeepBest``).
            epoch: the epoch, stored with the checkpoint.

        Returns:
            The save's handle: finished for a synchronous manager; for ``async_save=True``, returned once
            the state is snapshotted (``handle.result()`` waits for the commit).

        Raises:
            CheckpointError: if the manager is closed or ``step`` already has a checkpoint.
            MisconfigurationException: for an invalid argument.
            TypeError: if ``state`` holds an object that is not weights_only-safe.
            OSError: if writing fails (nothing is committed and nothing is deleted); with ``async_save``,
                raised by the next ``save``/``wait``/``close`` unless ``handle.result()`` raised it first.
        """
        if self._closed:
            raise CheckpointError("CheckpointManager is closed; create a new one to save")
        if isinstance(self._writer, AsyncWriter):
            self._writer.reserve()  # the previous save is committed before this one's name is checked
        meta = normalize_metadata({"step": step, "epoch": epoch, "metrics": metrics})
        if meta["step"] is None:
            raise MisconfigurationException("step must be an int >= 0, got None")
        name = self._name_for(meta["step"], meta["epoch"], meta["metrics"])
        for record in self._index.entries():
            if record.step == step or record.name == name:
                raise CheckpointError(
                    f"A checkpoint for step {step} already exists in {self.directory!r} ({record.name!r}); each "
                    "step is saved once. Remove it first, or save into a new directory."
                )
        path = self._storage.url(self._storage.join(self._directory, name))
        gate = LiveGate()  # open: a synchronous save holds the caller anyway
        if self._staging is not None:
            check_weights_only_safe(state)  # in the caller's thread, before anything is scheduled
            state = self._staging.snapshot(state)
            gate = self._staging.live_gate()

        size = estimate_size(state)  # the free-space preflight, for synchronous and asynchronous saves alike

        def job(gate: LiveGate) -> CheckpointRecord:
            record = save_file(
                path, state, metadata=meta, storage_options=self._options, live_gate=gate, expected_size=size
            )
            self._apply_retention()
            return record

        return submit_staged(self._writer, gate, job)

    def _apply_retention(self) -> None:
        # Only stepstone's own files are subject to retention; foreign *.ckpt files and sharded directories
        # (written by an FSDP Trainer, not by this manager) are never deleted.
        records = [
            r for r in self._index.entries() if r.format_version > 0 and not self._index.is_sharded(r.name)
        ]
        keep = self._retention(records)
        for record in records:
            if record.name not in keep:
                remove_checkpoint(self._storage.join(self._directory, record.name), self._storage)

    def _best_policy(self) -> KeepBest:
        if self._best is not None:
            return self._best
        found = _find_keep_best(self._retention)
        if len(found) != 1:
            raise MisconfigurationException(
                "restore('best') needs one metric to rank by: pass best_metric='...' (and best_mode) to "
                f"CheckpointManager, or use a single KeepBest retention (retention={self._retention!r})"
            )
        return found[0]

    def _candidates(self, which: str | int) -> list[CheckpointRecord]:
        records = [r for r in self._index.entries() if not self._index.is_sharded(r.name)]  # files only
        if which == "latest":
            return newest_first(records)
        if which == "best":
            policy = self._best_policy()
            return [r for r in policy.rank(records) if policy.metric in r.metrics]
        if isinstance(which, int) and not isinstance(which, bool):
            return [r for r in records if r.step == which]
        raise MisconfigurationException(
            f"restore(which={which!r}): pass 'latest', 'best' or a step number (int)"
        )

    def restore(self, which: str | int = "latest", map_location: MapLocation = None) -> dict[str, Any]:
        """Load a checkpoint, verified; ``self.last_restored`` then holds its record.

        Args:
            which: ``"latest"`` (newest valid by step), ``"best"`` (best valid by the best metric) or a step.
            map_location: where tensors go, as for ``torch.load``.

        Returns:
            The checkpoint dict.

        Raises:
            CheckpointNotFoundError: if no (valid) checkpoint matches.
            CheckpointCorruptError: if the checkpoint of an explicit step is corrupt (no fallback then).
            MisconfigurationException: for an invalid ``which`` or when "best" has no metric to rank by.
        """
        candidates = self._candidates(which)
        corrupt: list[str] = []

        def on_corrupt(
            record: CheckpointRecord, error: CheckpointCorruptError, following: CheckpointRecord | None
        ) -> None:
            if isinstance(which, int):
                raise error
            corrupt.append(record.name)
            name = following.name if following is not None else "none left"
            warnings.warn(f"{error} Falling back to the next candidate ({name}).", stacklevel=4)

        def open_one(record: CheckpointRecord) -> tuple[dict[str, Any], CheckpointRecord]:
            path = self._storage.join(self._directory, record.name)
            # One pass: the verified load is the check (no separate verify that would read the file twice).
            return load(
                self._storage, path, map_location=map_location, verify=True, mmap=False, trusted=False
            )

        found = first_valid(candidates, open_one, on_corrupt, skip_unreadable=False)
        if found is not None:
            state, self.last_restored = found[1]
            return state
        raise CheckpointNotFoundError(self._nothing_to_restore(which, corrupt))

    def _nothing_to_restore(self, which: str | int, corrupt: Iterable[str]) -> str:
        damaged = sorted(corrupt)
        detail = f"; these were corrupt: {damaged}" if damaged else ""
        return f"No valid checkpoint matches restore({which!r}) in {self.directory!r}{detail}"

    def all_checkpoints(self) -> list[CheckpointRecord]:
        """The committed checkpoints of the directory, oldest first.

        Returns:
            Their records (trailers read, not verified).
        """
        return self._index.entries()

    def latest_step(self) -> int | None:
        """The largest step with a checkpoint (not verified), or None.

        Returns:
            The step or None.
        """
        steps = [r.step for r in self._index.entries() if r.step is not None]
        return max(steps) if steps else None

    def wait(self) -> None:
        """Wait for the save in flight and re-raise its failure (if ``handle.result()`` did not already)."""
        self._writer.wait()

    def close(self) -> None:
        """Wait for pending saves, then refuse new ones. Idempotent."""
        if not self._closed:
            self._closed = True
            self._writer.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
