"""Running one step of a sharded save or load on rank 0 or on every rank, all ranks agreeing on the outcome.

Sharded checkpoints synchronise through the default torch.distributed process group (the engine does not
import the trainer side); without one, or with one rank, each step simply runs in this process. A failure is
sent to the other ranks as a description and rebuilt there, so that every rank raises, never one rank alone
while the others wait in a collective.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch.distributed as dist

from stepstone.errors import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError

__all__ = ["gather", "on_every_rank", "on_rank0", "quiet_single_process", "rank_and_world"]

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (``(0, 1)`` without a process group of several ranks).

    Returns:
        ``(rank, world_size)``.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def quiet_single_process() -> Iterator[None]:
    """Silence torch.distributed.checkpoint's warning about running without a process group.

    One process without a process group is a supported case here, not the mistake torch warns about.

    Yields:
        Nothing; the warning is filtered inside the block.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled, unavailable or uninitialized"
        )
        yield


def _failure(error: BaseException) -> tuple[str, ...]:
    # Sent as strings: any exception can be described, not every one survives pickling.
    if isinstance(error, CheckpointCorruptError):
        return ("corrupt", error.path, error.reason)
    if isinstance(error, CheckpointNotFoundError):
        return ("missing", str(error))
    return ("other", f"{type(error).__name__}: {error}")


def _rebuild(failure: tuple[str, ...], what: str, who: str = "rank 0") -> CheckpointError:
    if failure[0] == "corrupt":
        return CheckpointCorruptError(failure[1], failure[2])
    if failure[0] == "missing":
        return CheckpointNotFoundError(failure[1])
    return CheckpointError(f"{who} failed to {what}: {failure[1]}")


def gather(what: str, obj: Any) -> list[Any]:
    """Every rank's ``obj``; also a named barrier: ranks at different points fail instead of pairing up.

    Args:
        what: the step's name (every rank must be at the same one).
        obj: this rank's picklable value.

    Returns:
        The values by rank.

    Raises:
        CheckpointError: the ranks are at different steps.
    """
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (what, obj))
    points = {index: point for index, (point, _) in enumerate(gathered)}
    if any(point != what for point in points.values()):
        raise CheckpointError(
            f"The ranks are at different checkpoint steps {points}; save_sharded/load_sharded must be called "
            "on every rank, in the same order."
        )
    return [value for _, value in gathered]


def on_rank0(what: str, work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 only and give its result (or its failure) to every rank.

    Args:
        what: the step's name.
        work: what rank 0 does; its result must be picklable.

    Returns:
        Rank 0's result, on every rank.

    Raises:
        CheckpointError: rank 0's failure (the original exception on rank 0).
    """
    if rank_and_world()[1] == 1:
        return work()
    outcome: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if rank_and_world()[0] == 0:
        try:
            outcome = ("ok", work())
        except Exception as caught:  # re-raised below, after the other ranks were told
            error = caught
            outcome = ("failed", _failure(caught))
    status, value = gather(what, outcome)[0]
    if error is not None:
        raise error
    if status != "ok":
        raise _rebuild(value, what)
    result: T = value
    return result


def on_every_rank(what: str, work: Callable[[], T], no_dist: bool) -> T:
    """Run ``work`` on every rank; if it fails on any, every rank raises (the lowest failing rank's error).

    Args:
        what: the step's name.
        work: what each rank does.
        no_dist: run it here only, without telling other ranks (a one-process load inside a process group).

    Returns:
        This rank's result.

    Raises:
        CheckpointError: another rank's failure (a failing rank raises its own exception).
    """
    if no_dist or rank_and_world()[1] == 1:
        return work()
    try:
        result = work()
    except Exception as error:  # re-raised after the other ranks were told
        gather(what, _failure(error))
        raise
    failed = [outcome for outcome in gather(what, ("ok",)) if outcome != ("ok",)]
    if failed:
        raise _rebuild(failed[0], what, "another rank")
    return result
