"""Retention policies: pure functions from checkpoint records to the names to keep.

A policy never touches files. ``CheckpointManager`` applies it only after a new checkpoint is committed,
and deletes what the policy did not keep (the one place that deletes).

Ordering conventions shared by all policies: "newer" means a larger step, then a later ``created`` time
(records without a step are older than any record with one). For ``KeepBest``, NaN and missing values are
the worst, and among equal values the older checkpoint wins: a newer one only displaces it by being
strictly better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from typing_extensions import override

from stepstone.checkpoint.record import CheckpointRecord, age_key
from stepstone.errors import MisconfigurationException

__all__ = [
    "AnyOf",
    "KeepAll",
    "KeepBest",
    "KeepEveryNSteps",
    "KeepLatest",
    "RetentionPolicy",
    "best_of",
    "metric_key",
    "worst_of",
]

RetentionPolicy = Callable[[Sequence[CheckpointRecord]], set[str]]


def metric_key(value: float | None, mode: str) -> tuple[int, float]:
    """The one ordering of metric values: a smaller key is better; NaN and missing values are the worst.

    Every ranking of stepstone (``KeepBest``, ``best_of``/``worst_of``, hence ModelCheckpoint's top k) sorts
    by this key.

    Args:
        value: the metric value (None: missing).
        mode: ``"min"`` (lower is better) or ``"max"``.

    Returns:
        A sortable key.
    """
    if value is None or math.isnan(value):
        return (1, 0.0)
    return (0, value if mode == "min" else -value)


def best_of(scores: Mapping[str, float], mode: str) -> str:
    """The best entry; among equal values the first (an incremental top k inserts in age order: the oldest).

    Args:
        scores: name -> value, in insertion order (not empty).
        mode: ``"min"`` or ``"max"``.

    Returns:
        The name.
    """
    return min(scores, key=lambda name: metric_key(scores[name], mode))


def worst_of(scores: Mapping[str, float], mode: str) -> str:
    """The entry an incremental top k replaces: the worst; among equal values the first (the oldest leaves).

    This is the tie rule of Lightning's ``ModelCheckpoint``. A stateless ``KeepBest`` over records instead
    drops the newest of equal values; the two cannot be one rule, because an incremental top k also never
    admits a newcomer that only ties the k-th (so what it keeps depends on the order values arrived in).

    Args:
        scores: name -> value, in insertion order (not empty).
        mode: ``"min"`` or ``"max"``.

    Returns:
        The name.
    """
    return max(scores, key=lambda name: metric_key(scores[name], mode))


def _positive_int(argument: str, value: object, owner: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MisconfigurationException(f"{owner}({argument}={value!r}): {argument} must be an int >= 1")
    return value


class KeepAll:
    """Keep every checkpoint."""

    def __call__(self, records: Sequence[CheckpointRecord]) -> set[str]:
        """Names to keep.

        Args:
            records: the committed checkpoints.

        Returns:
            All their names.
        """
        return {record.name for record in records}

    @override
    def __repr__(self) -> str:
        return "KeepAll()"


class KeepLatest:
    """Keep the ``k`` newest checkpoints.

    Args:
        k: how many to keep (>= 1).

    Raises:
        MisconfigurationException: if ``k`` is not an int >= 1.
    """

    def __init__(self, k: int) -> None:
        self.k = _positive_int("k", k, "KeepLatest")

    def __call__(self, records: Sequence[CheckpointRecord]) -> set[str]:
        """Names to keep.

        Args:
            records: the committed checkpoints.

        Returns:
            The names of the ``k`` newest.
        """
        newest = sorted(records, key=age_key, reverse=True)[: self.k]
        return {record.name for record in newest}

    @override
    def __repr__(self) -> str:
        return f"KeepLatest(k={self.k})"


class KeepBest:
    """Keep the ``k`` checkpoints with the best value of ``metric``.

    Args:
        k: how many to keep (>= 1).
        metric: the metric name, as stored in the records.
        mode: ``"min"`` (lower is better) or ``"max"``.

    Raises:
        MisconfigurationException: for an invalid argument.
    """

    def __init__(self, k: int, metric: str, mode: str = "min") -> None:
        self.k = _positive_int("k", k, "KeepBest")
        if not isinstance(metric, str) or not metric:
            raise MisconfigurationException(f"KeepBest(metric={metric!r}): metric must be a non-empty str")
        if mode not in ("min", "max"):
            raise MisconfigurationException(f"KeepBest(mode={mode!r}): mode must be 'min' or 'max'")
        self.metric = metric
        self.mode = mode

    def rank(self, records: Sequence[CheckpointRecord]) -> list[CheckpointRecord]:
        """Records from best to worst (NaN/missing last; equal values: older first).

        Args:
            records: the committed checkpoints.

        Returns:
            The sorted records.
        """

        def key(record: CheckpointRecord) -> tuple[tuple[int, float], tuple[int, int, float, str]]:
            return (metric_key(record.metrics.get(self.metric), self.mode), age_key(record))

        return sorted(records, key=key)

    def __call__(self, records: Sequence[CheckpointRecord]) -> set[str]:
        """Names to keep.

        Args:
            records: the committed checkpoints.

        Returns:
            The names of the ``k`` best.
        """
        return {record.name for record in self.rank(records)[: self.k]}

    @override
    def __repr__(self) -> str:
        return f"KeepBest(k={self.k}, metric={self.metric!r}, mode={self.mode!r})"


class KeepEveryNSteps:
    """Keep checkpoints whose step is a multiple of ``n`` (records without a step are not kept).

    Args:
        n: the step interval (>= 1).

    Raises:
        MisconfigurationException: if ``n`` is not an int >= 1.
    """

    def __init__(self, n: int) -> None:
        self.n = _positive_int("n", n, "KeepEveryNSteps")

    def __call__(self, records: Sequence[CheckpointRecord]) -> set[str]:
        """Names to keep.

        Args:
            records: the committed checkpoints.

        Returns:
            The names of those at a multiple of ``n`` steps.
        """
        return {r.name for r in records if r.step is not None and r.step % self.n == 0}

    @override
    def __repr__(self) -> str:
        return f"KeepEveryNSteps(n={self.n})"


class AnyOf:
    """Keep a checkpoint if any of the given policies keeps it.

    Args:
        *policies: one or more policies.

    Raises:
        MisconfigurationException: if no policy is given or one is not callable.
    """

    def __init__(self, *policies: RetentionPolicy) -> None:
        if not policies:
            raise MisconfigurationException(
                "AnyOf() needs at least one policy, e.g. AnyOf(KeepLatest(1), KeepBest(3, 'loss'))"
            )
        for index, policy in enumerate(policies):
            if not callable(policy):
                raise MisconfigurationException(
                    f"AnyOf: policy #{index} ({policy!r}) is not a retention policy"
                )
        self.policies = tuple(policies)

    def __call__(self, records: Sequence[CheckpointRecord]) -> set[str]:
        """Names to keep.

        Args:
            records: the committed checkpoints.

        Returns:
            The union of what each policy keeps.
        """
        kept: set[str] = set()
        for policy in self.policies:
            kept |= policy(records)
        return kept

    @override
    def __repr__(self) -> str:
        return f"AnyOf({', '.join(map(repr, self.policies))})"
