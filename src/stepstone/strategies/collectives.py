"""The process group and the few collectives the trainer needs, each a no-op on a single process.

Every collective is bounded in time: the process group carries a timeout, so a rank that never arrives
(mismatched collectives, a rank stuck elsewhere) gives an error on the others instead of a hang. A rank that
raises should leave through :func:`abort_on_error`, which tears its process group down at once: the peers'
pending collectives then fail within milliseconds (their connections close) rather than after the timeout.
Errors are re-raised as :class:`CollectiveError`, naming the collective, the rank and the timeout.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from stepstone.checkpoint.private_apis import tensor_use_count
from stepstone.errors import MisconfigurationException
from stepstone.strategies.environment import ClusterEnvironment

__all__ = [
    "DEFAULT_TIMEOUT",
    "CollectiveError",
    "abort_on_error",
    "agree",
    "all_gather_object",
    "backend_for",
    "barrier",
    "broadcast_object",
    "destroy_process_group",
    "exchange",
    "exchange_all",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_distributed",
    "reduce",
]

# Lightning and torch default to 30 minutes; a checkpoint save of a large model fits, a hang is still bounded.
DEFAULT_TIMEOUT = timedelta(minutes=30)
_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "mean": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
}
_ALIASES = {"avg": "mean", "mean": "mean", "sum": "sum", "max": "max", "min": "min"}
_timeout: timedelta = DEFAULT_TIMEOUT
T = TypeVar("T")
# How long a collective's tensors may stay held by the backend after it returned (see ``_released``).
_RELEASE_WAIT_S = 5.0
_PARKED: list[torch.Tensor] = []


class CollectiveError(RuntimeError):
    """A collective failed on this rank: another rank failed, left, or did not arrive within the timeout."""


def backend_for(device_type: str) -> str:
    """The torch.distributed backend for a device type: ``nccl`` for ``cuda``, ``gloo`` otherwise.

    Args:
        device_type: ``"cpu"`` or ``"cuda"``.

    Returns:
        The backend name.
    """
    return "nccl" if device_type == "cuda" else "gloo"


def init_process_group(
    environment: ClusterEnvironment, backend: str = "gloo", timeout: timedelta = DEFAULT_TIMEOUT
) -> bool:
    """Join the default process group described by ``environment`` (rank 0 hosts the rendezvous store).

    Args:
        environment: ranks, world size and main address/port.
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (CUDA); see :func:`backend_for`.
        timeout: how long any collective (and the rendezvous itself) may wait for the other ranks.

    Returns:
        True if this call created the group; False on a single process or when a group already exists (it is
        then the caller's: this module never destroys a group it did not create).

    Raises:
        MisconfigurationException: an unknown backend or a non-positive timeout.
        CollectiveError: the other ranks did not join within ``timeout``.
    """
    global _timeout
    if backend not in ("gloo", "nccl"):
        raise MisconfigurationException(f"backend={backend!r} is invalid; use 'gloo' (CPU) or 'nccl' (CUDA).")
    if not isinstance(timeout, timedelta) or timeout.total_seconds() <= 0:
        raise MisconfigurationException(
            f"timeout={timeout!r} is invalid; pass a positive datetime.timedelta."
        )
    if environment.world_size == 1 or dist.is_initialized():
        return False
    _timeout = timeout
    try:
        dist.init_process_group(
            backend,
            init_method=environment.init_method,
            rank=environment.global_rank,
            world_size=environment.world_size,
            timeout=timeout,
        )
    except (RuntimeError, TimeoutError) as exc:
        raise CollectiveError(
            f"Rank {environment.global_rank} of {environment.world_size} could not join the process group at "
            f"{environment.init_method} within {timeout}: {exc}. Check that every rank started and that "
            "MASTER_ADDR/MASTER_PORT name rank 0's host and a free port."
        ) from exc
    return True


def destroy_process_group() -> None:
    """Leave the default process group (nothing happens when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 on a single process)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of ranks (1 on a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def _device() -> torch.device:
    # nccl only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def _named(what: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    except CollectiveError:
        raise
    except (RuntimeError, TimeoutError) as exc:  # gloo/nccl failures and timeouts are RuntimeErrors
        waited = time.monotonic() - start
        raise CollectiveError(
            f"{what} failed on rank {dist.get_rank()} of {dist.get_world_size()} after {waited:.1f}s "
            f"(timeout {_timeout}): {exc}. Another rank probably raised, died, or is waiting in a different "
            "collective; look for the first error in the other ranks' output."
        ) from exc


def barrier(name: str = "barrier") -> None:
    """Wait until every rank reaches a barrier with the same ``name``.

    The names are exchanged, so two ranks waiting in *different* barriers fail with both names instead of
    silently pairing up.

    Args:
        name: what this barrier guards, e.g. ``"save epoch=3.ckpt"`` (used in errors).

    Raises:
        CollectiveError: a rank failed or did not arrive within the timeout, or the ranks' names differ.
    """
    exchange(name, None)


def exchange(name: str, obj: T, src: int = 0) -> T:
    """``src``'s ``obj`` on every rank, checking that every rank is at the same named point.

    Slower than :func:`broadcast_object` (every rank sends), but two ranks at *different* points (a
    ``trainer.save_checkpoint`` under ``if trainer.is_global_zero`` while the others save a ModelCheckpoint)
    fail at once on every rank, naming both points, instead of waiting for the timeout.

    Args:
        name: what this point is, e.g. ``"save_checkpoint epoch=3.ckpt"`` (used in errors).
        obj: this rank's value (only ``src``'s is returned; picklable).
        src: the rank whose value wins.

    Returns:
        ``src``'s object (``obj`` itself on a single process).

    Raises:
        CollectiveError: a rank failed or did not arrive within the timeout, or the ranks' names differ.
    """
    result: T = exchange_all(name, obj)[src]
    return result


def exchange_all(name: str, obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, checking that every rank is at the same named point.

    Args:
        name: what this point is (used in errors); it must not depend on the rank.
        obj: this rank's value (picklable).

    Returns:
        One object per rank (``[obj]`` on a single process).

    Raises:
        CollectiveError: a rank failed or did not arrive within the timeout, or the ranks' names differ.
    """
    if not is_distributed():
        return [obj]
    gathered = all_gather_object((name, obj), what=f"barrier {name!r}")
    names = [other for other, _ in gathered]
    if any(other != name for other in names):
        raise CollectiveError(
            f"barrier {name!r}: the ranks are at different barriers ({dict(enumerate(names))}); every rank must "
            "run the same collectives in the same order. trainer.save_checkpoint must be called on every rank "
            "(not under `if trainer.is_global_zero`); only rank 0 writes."
        )
    return [value for _, value in gathered]


def broadcast_object(obj: T, src: int = 0) -> T:
    """Return ``src``'s ``obj`` on every rank (any picklable object).

    Args:
        obj: the value (only ``src``'s is used).
        src: the rank whose value wins.

    Returns:
        ``src``'s object (``obj`` itself on a single process).

    Raises:
        CollectiveError: a rank failed or did not arrive within the timeout.
    """
    if not is_distributed():
        return obj
    device = _device()
    with _named(f"broadcast_object(src={src})"):
        payload = _encode(obj, device) if dist.get_rank() == src else None
        size = torch.tensor([0 if payload is None else payload.numel()], dtype=torch.long, device=device)
        dist.broadcast(size, src=src)
        _released(size)
        if payload is None:
            payload = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
        dist.broadcast(payload, src=src)
        _released(payload)
    result: T = _decode(payload, payload.numel())
    return result


def all_gather_object(obj: T, what: str = "all_gather_object") -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank.

    Args:
        obj: this rank's value (picklable).
        what: a name for errors.

    Returns:
        One object per rank (``[obj]`` on a single process).

    Raises:
        CollectiveError: a rank failed or did not arrive within the timeout.
    """
    if not is_distributed():
        return [obj]
    device, world = _device(), dist.get_world_size()
    payload = _encode(obj, device)
    with _named(what):
        size = torch.tensor([payload.numel()], dtype=torch.long, device=device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        _released(size, *sizes)
        lengths = [int(s.item()) for s in sizes]
        padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
        padded[: payload.numel()] = payload
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        _released(padded, *gathered)
    return [_decode(data, length) for data, length in zip(gathered, lengths, strict=True)]


def _encode(obj: Any, device: torch.device) -> torch.Tensor:
    # Between the ranks of one job, like torch's own *_object collectives (never used for files).
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)


def _decode(data: torch.Tensor, length: int) -> Any:
    # Copied into a bytearray through a tensor view of it: ``.numpy()`` would make numpy (not a dependency of
    # stepstone, nor of torch) required by every DDP run.
    buffer = bytearray(length)
    if length:
        torch.frombuffer(buffer, dtype=torch.uint8).copy_(data[:length])
    return pickle.loads(buffer)


def _released(*tensors: torch.Tensor) -> None:
    """Wait until the backend's worker threads have dropped their references to ``tensors``.

    A collective returns as soon as its result is ready, but a gloo worker thread may hold the operation (and
    so the tensors) a little longer. If Python has let go of a tensor by then, the worker frees its Python
    object and needs the GIL for it. Should that happen while the interpreter is shutting down (the process
    group is still alive: DDP keeps it), the thread cannot take the GIL and the process aborts with
    "terminate called without an active exception". Waiting here (microseconds in practice) means no
    collective's tensor is ever freed by a worker thread.
    """
    deadline = time.monotonic() + _RELEASE_WAIT_S
    while any(tensor_use_count(tensor) > 1 for tensor in tensors):
        if time.monotonic() > deadline:
            _PARKED.extend(tensors)  # kept to the end of the process rather than freed by a worker thread
            return
        time.sleep(0.0001)


def reduce(tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Reduce ``tensor`` across ranks (the ``sync`` callable of ``self.log(..., sync_dist=True)``).

    Args:
        tensor: this rank's value; not modified.
        reduction: ``"mean"`` (or ``"avg"``), ``"sum"``, ``"max"`` or ``"min"``.

    Returns:
        A new tensor holding the reduction, on ``tensor``'s device (``tensor`` itself on a single process). A
        mean of an integer tensor is a float tensor.

    Raises:
        MisconfigurationException: an unknown reduction.
        CollectiveError: a rank failed or did not arrive within the timeout.
    """
    name = _ALIASES.get(reduction.lower()) if isinstance(reduction, str) else None
    if name is None:
        raise MisconfigurationException(
            f"reduce(reduction={reduction!r}) is invalid; use 'mean', 'sum', 'max' or 'min'."
        )
    if not is_distributed():
        return tensor
    work = tensor.detach().to(_device(), copy=True)
    if name == "mean" and not work.is_floating_point():
        work = work.double()
    with _named(f"reduce({name})"):
        dist.all_reduce(work, op=_REDUCE_OPS[name])
        _released(work)
    if name == "mean":
        work = work / dist.get_world_size()
    return work.to(tensor.device)


def agree(flag: bool, require: str = "all") -> bool:
    """A decision every rank shares: True if ``flag`` holds on all ranks (``"all"``) or on one (``"any"``).

    Used for "is this a better checkpoint" and "does this file exist" decisions, which must not differ
    between ranks.

    Args:
        flag: this rank's opinion.
        require: ``"all"`` (AND) or ``"any"`` (OR).

    Returns:
        The shared decision (``flag`` on a single process).

    Raises:
        MisconfigurationException: ``require`` is neither ``"all"`` nor ``"any"``.
        CollectiveError: a rank failed or did not arrive within the timeout.
    """
    if require not in ("all", "any"):
        raise MisconfigurationException(f"agree(require={require!r}) is invalid; use 'all' or 'any'.")
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([int(bool(flag))], device=_device())
    with _named(f"agree({require})"):
        dist.all_reduce(value, op=dist.ReduceOp.MIN if require == "all" else dist.ReduceOp.MAX)
        _released(value)
    return bool(value.item())


@contextlib.contextmanager
def abort_on_error() -> Iterator[None]:
    """On an exception, tear the process group down before re-raising it.

    The other ranks are then told at once (their collectives fail with a closed connection) instead of
    waiting for the timeout; this rank can take its time to clean up without holding them hostage.

    Raises:
        BaseException: whatever the body raised, unchanged.
    """
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            destroy_process_group()
        raise
