"""``ddp_spawn``: run a function on N fresh processes (torch.multiprocessing, "spawn") and get rank 0's result.

Each process gets the torchrun variables (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR,
MASTER_PORT) in its own environment, so code inside finds its rank with
:func:`~stepstone.strategies.environment.detect_environment` exactly as under torchrun. Results and errors
travel as plain pickles (tensors are copied, not shared: the sending rank may exit before the parent reads).
A rank's exception is re-raised in the parent as the same exception type, with the rank and the child's
traceback attached as a note; the other ranks get ``grace_period`` seconds to fail on their own (their
collectives error out once the failed rank is gone) and are then stopped. The root cause wins: an exception
other than :class:`~stepstone.strategies.collectives.CollectiveError` (which merely echoes another rank's
failure) is preferred, even if it arrived later.
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessContext, ProcessExitedException, ProcessRaisedException

from stepstone.errors import MisconfigurationException
from stepstone.strategies.collectives import CollectiveError
from stepstone.strategies.environment import LAUNCHED_BY_VAR
from stepstone.strategies.launcher import find_free_port

__all__ = ["SpawnedRankFailed", "ddp_spawn"]


class SpawnedRankFailed(RuntimeError):
    """A spawned rank failed and its exception could not be carried over (or it died without one)."""


def _worker(
    local_rank: int,
    fn: Callable[..., Any],
    args: Sequence[Any],
    nprocs: int,
    address: str,
    port: int,
    launcher_pid: int,
    queue: Any,
) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
        GROUP_RANK="0",
        MASTER_ADDR=address,
        MASTER_PORT=str(port),
    )
    os.environ[LAUNCHED_BY_VAR] = str(launcher_pid)
    try:
        result = fn(*args)
    except BaseException as exc:
        text = traceback.format_exc()
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt: send the text only then
        except Exception:
            blob = b""
        # A CollectiveError is usually the echo of another rank's failure: the parent prefers the other kind.
        kind = "echo" if isinstance(exc, CollectiveError) else "error"
        queue.put(pickle.dumps((kind, local_rank, blob, text)))
        raise
    if local_rank == 0:
        queue.put(pickle.dumps(("ok", 0, result, "")))


def _raise_failure(error: tuple[str, int, Any, str] | None, cause: Exception) -> None:
    if error is None:
        raise SpawnedRankFailed(
            f"ddp_spawn: a rank died without reporting an exception ({cause}); it was probably killed (out of "
            "memory?) or called os._exit."
        ) from cause
    _, rank, blob, text = error
    note = f"Raised on spawned rank {rank}; its traceback:\n{text}"
    if blob:
        exc = pickle.loads(blob)
        if isinstance(exc, BaseException):
            # Python >= 3.11 prints the note; on 3.10 the chained cause still carries the child's traceback.
            getattr(exc, "add_note", lambda _: None)(note)
            raise exc.with_traceback(None) from cause
    raise SpawnedRankFailed(f"ddp_spawn: rank {rank} failed. {note}") from cause


def _drain(queue: Any, messages: list[tuple[str, int, Any, str]]) -> None:
    while not queue.empty():
        messages.append(pickle.loads(queue.get()))


def _stop(context: ProcessContext) -> None:
    for process in context.processes:
        if process.is_alive():
            process.kill()
        process.join()


def ddp_spawn(
    fn: Callable[..., Any],
    nprocs: int,
    args: Sequence[Any] = (),
    *,
    main_address: str = "127.0.0.1",
    main_port: int | None = None,
    grace_period: float = 5.0,
) -> Any:
    """Run ``fn(*args)`` on ``nprocs`` spawned processes (ranks 0..nprocs-1) and return rank 0's result.

    ``fn`` and ``args`` must be picklable (``fn`` defined at module level of an importable module); the
    calling script must guard its entry point with ``if __name__ == "__main__":``.

    Args:
        fn: the function each rank runs.
        nprocs: number of processes.
        args: positional arguments of ``fn``.
        main_address: MASTER_ADDR given to the ranks.
        main_port: MASTER_PORT given to the ranks (default: a free port).
        grace_period: seconds the other ranks get to exit by themselves after one fails, before being killed.

    Returns:
        What ``fn`` returned on rank 0.

    Raises:
        MisconfigurationException: ``nprocs`` < 1.
        SpawnedRankFailed: a rank died without an exception (killed), or its exception could not be rebuilt.
        BaseException: the first exception a rank raised, re-raised here with that rank's traceback as a note.
    """
    if not isinstance(nprocs, int) or nprocs < 1:
        raise MisconfigurationException(f"ddp_spawn(nprocs={nprocs!r}) is invalid; pass an int >= 1.")
    port = main_port if main_port is not None else find_free_port(main_address)
    spawn = mp.get_context("spawn")
    queue = spawn.SimpleQueue()
    messages: list[tuple[str, int, Any, str]] = []
    worker_args = (fn, tuple(args), nprocs, main_address, port, os.getpid(), queue)
    context = mp.start_processes(_worker, args=worker_args, nprocs=nprocs, join=False, start_method="spawn")
    assert context is not None
    try:
        while not context.join(timeout=0.1, grace_period=grace_period):
            _drain(queue, messages)  # read while waiting: a large result must not block its sender
        _drain(queue, messages)
    except (ProcessRaisedException, ProcessExitedException) as exc:
        _drain(queue, messages)
        errors = [m for m in messages if m[0] == "error"] + [m for m in messages if m[0] == "echo"]
        _raise_failure(errors[0] if errors else None, exc)
    finally:
        _stop(context)
        queue.close()
    result = next((m for m in messages if m[0] == "ok"), None)
    if result is None:
        raise SpawnedRankFailed("ddp_spawn: rank 0 finished without a result; this is a bug in stepstone.")
    return result[2]
