"""Iterating a dataloader with batch indices, knowing which batch is the last one."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepstone.profilers import Profiler

__all__ = ["iterate_batches", "profiled"]


def iterate_batches(loader: Iterable[Any], start: int, total: int | float) -> Iterator[tuple[int, Any, bool]]:
    """Yield ``(batch_idx, batch, is_last)``; for loaders without a length, one batch is fetched ahead."""
    iterator = iter(loader)
    batch_idx = start
    if not math.isinf(total):
        while batch_idx < total:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            yield batch_idx, batch, batch_idx + 1 >= total
            batch_idx += 1
        return
    try:
        pending = next(iterator)
    except StopIteration:
        return
    while True:
        try:
            upcoming = next(iterator)
        except StopIteration:
            yield batch_idx, pending, True
            return
        yield batch_idx, pending, False
        pending = upcoming
        batch_idx += 1


def profiled(loader: Iterable[Any], profiler: Profiler, action: str) -> Iterator[Any]:
    """``loader``'s items, each fetch timed as one call of ``action``."""
    iterator = iter(loader)
    while True:
        with profiler.profile(action):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item
