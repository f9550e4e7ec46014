"""Choosing the DDP strategy from the Trainer's arguments, and the few places the Trainer talks to it.

``Trainer(strategy="ddp", devices=N, num_nodes=M)`` (or ``devices=N > 1`` with ``strategy="auto"``, or a
:class:`~stepstone.strategies.DDPStrategy` instance) runs one process per device on torch.distributed. The
processes are started by ``torchrun`` (or ``srun``): their environment says where each one sits, and it must
match ``devices`` x ``num_nodes``. ``strategy="ddp"`` on one process (``devices=1``) takes the same code path
with every collective a no-op.
"""

from __future__ import annotations

import atexit
import warnings
from typing import TYPE_CHECKING, Any

import torch

from stepstone.errors import MisconfigurationException
from stepstone.strategies import collectives
from stepstone.strategies.ddp import DDPStrategy
from stepstone.strategies.environment import (
    ClusterEnvironment,
    check_matches,
    detect_environment,
    launcher_environment,
    single_process,
)
from stepstone.strategies.launcher import ScriptLauncher
from stepstone.trainer.device import Placement, resolve_placement

if TYPE_CHECKING:
    from stepstone.checkpoint import CheckpointRecord
    from stepstone.trainer.trainer import Trainer

__all__ = [
    "finish_strategy",
    "resolve_distributed",
    "save_on_all_ranks",
    "start_ranks",
    "wants_ddp",
]

_DDP_NAMES = ("ddp", "ddp_spawn", "fsdp")
_exit_registered = False
_NOT_YET = ("ddp_notebook", "ddp_fork")


def _device_count(devices: Any) -> int | None:
    """``devices`` as a number of processes per node (None: not a count, left to resolve_placement)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    return None


def wants_ddp(strategy: Any, devices: Any, num_nodes: Any) -> bool:
    """Whether the Trainer's arguments ask for DDP (several processes or the ``ddp`` strategy).

    Raises:
        MisconfigurationException: a strategy that is not available (``ddp_notebook``, ``ddp_fork``).
    """
    if isinstance(strategy, DDPStrategy):
        return True
    name = strategy.lower() if isinstance(strategy, str) else strategy
    if name in _NOT_YET:
        raise MisconfigurationException(
            f"Trainer(strategy={strategy!r}) is not available (forked processes break torch's threads); use "
            "strategy='ddp_spawn' in notebooks, or 'ddp' from a script (see the README's 'Multi-process and "
            "multi-node' section)."
        )
    count = _device_count(devices)
    many = (count is not None and count > 1) or (isinstance(num_nodes, int) and num_nodes > 1)
    return name in _DDP_NAMES or (name == "auto" and many)


def resolve_distributed(
    strategy: Any, accelerator: Any, devices: Any, num_nodes: int, precision: Any
) -> tuple[DDPStrategy, Placement, ScriptLauncher | None, int | None]:
    """The DDP strategy of this process and where it computes.

    Several processes asked for in a process no launcher started (a plain ``python train.py``): this process
    becomes local rank 0 and, at the first ``fit``/``validate``/..., re-runs the script for local ranks
    1..N-1 (:func:`start_ranks`; Lightning's behaviour), which find their rank in the environment.

    Args:
        strategy: ``"ddp"``, ``"ddp_spawn"``, ``"fsdp"``, ``"auto"`` (with several devices or nodes), or a
            :class:`DDPStrategy` / :class:`~stepstone.strategies.FSDPStrategy`.
        accelerator: as for the Trainer (``"cpu"`` uses gloo, ``"gpu"``/``"cuda"`` nccl).
        devices: processes per node (an int; ``"auto"`` means 1 on CPU).
        num_nodes: nodes.
        precision: as for the Trainer.

    With ``strategy="ddp_spawn"`` this process starts no rank: each entry point spawns ``devices`` processes
    (see :mod:`stepstone.trainer.spawning`).

    Returns:
        The strategy (its environment filled in), the placement (``cuda:<local_rank>`` on GPUs), the launcher
        of the other ranks when this process must start them (else None), and the number of processes to
        spawn per call (``ddp_spawn`` in the calling process; else None).

    Raises:
        MisconfigurationException: an invalid count, an accelerator DDP cannot use, several processes asked for
            but not started by a launcher, or a launcher that started a different number of processes.
    """
    placement = resolve_placement(accelerator, "auto", "auto", precision)
    if placement.accelerator not in ("cpu", "cuda"):
        raise MisconfigurationException(
            f"Trainer(strategy='ddp', accelerator={accelerator!r}) is not supported; use accelerator='cpu' "
            "(gloo) or 'gpu' (nccl)."
        )
    environment = detect_environment()
    count = _processes_per_node(devices, environment)
    launcher, spawn = None, None
    if environment is None and strategy == "ddp_spawn" and count * num_nodes > 1:
        if num_nodes > 1:
            raise MisconfigurationException(
                f"Trainer(strategy='ddp_spawn', num_nodes={num_nodes}) is not supported; on several nodes start "
                "the processes with torchrun or srun and use strategy='ddp'."
            )
        environment, spawn = launcher_environment(count, 1), count
    elif environment is None and count * num_nodes > 1:
        environment = launcher_environment(count, num_nodes)
        launcher = ScriptLauncher(environment, count)
    elif environment is None:
        environment = single_process()
    check_matches(environment, count, num_nodes)
    chosen = _strategy_instance(strategy)
    # The Trainer's arguments decide where each rank computes; a DDPStrategy instance brings the other settings.
    chosen.environment = environment
    chosen.accelerator = placement.accelerator
    if placement.accelerator == "cuda":
        placement.device = _rank_gpu(environment.local_rank)
    return chosen, placement, launcher, spawn


def _processes_per_node(devices: Any, environment: ClusterEnvironment | None) -> int:
    """``devices`` as a number of processes per node; "auto" under torchrun/srun: as many as the launcher started.

    Raises:
        MisconfigurationException: ``devices`` is not a positive count.
    """
    automatic = devices in ("auto", None, -1, "-1")
    if automatic and environment is not None:
        count: int | None = environment.world_size // environment.num_nodes
    else:
        count = 1 if automatic else _device_count(devices)
    if count is None or count < 1:
        raise MisconfigurationException(
            f"Trainer(devices={devices!r}) is invalid with strategy='ddp'; pass the number of processes per node, "
            "e.g. devices=2."
        )
    return count


def _strategy_instance(strategy: Any) -> DDPStrategy:
    """The user's DDPStrategy instance, else a new FSDP or DDP strategy (its environment set by the caller)."""
    if isinstance(strategy, DDPStrategy):
        return strategy
    if strategy == "fsdp":
        from stepstone.strategies.fsdp import FSDPStrategy  # imported only when asked for (costly)

        return FSDPStrategy(single_process())  # Lightning's default: state_dict_type="full"
    return DDPStrategy(single_process())


def _rank_gpu(local_rank: int) -> torch.device:
    """The GPU of ``local_rank``.

    Raises:
        MisconfigurationException: fewer GPUs are visible than this node's ranks need.
    """
    if local_rank >= torch.cuda.device_count():
        raise MisconfigurationException(
            f"Local rank {local_rank} needs GPU {local_rank}, but "
            f"{torch.cuda.device_count()} GPU(s) are visible; start at most that many processes per node."
        )
    return torch.device("cuda", local_rank)


def start_ranks(launcher: ScriptLauncher) -> None:
    """Start the other local ranks (once, at the first run) and wait for them when this process exits.

    Raises:
        MisconfigurationException: this program cannot be re-run (``python -c``, a notebook): use torchrun.
    """
    if launcher.children:
        return
    launcher.launch()
    atexit.register(_join_at_exit, launcher)


def _join_at_exit(launcher: ScriptLauncher) -> None:
    # Rank 0 is the user's process: it exits only once the ranks it started have finished (or are stopped).
    try:
        launcher.join(timeout=collectives.DEFAULT_TIMEOUT.total_seconds())
    except Exception as exc:  # at exit there is no caller left to raise to
        import sys

        print(f"stepstone: {exc}", file=sys.stderr)


def save_on_all_ranks(
    trainer: Trainer,
    path: str,
    weights_only: bool,
    storage_options: Any = None,
    marks: dict[str, Any] | None = None,
    publish_as: str | None = None,
    publish_link: bool = False,
) -> CheckpointRecord | None:
    """Write a checkpoint once: every rank builds it (as Lightning does), global rank 0 commits it at its path.

    Every rank must call it: named barriers come before and after the write, so a rank that skipped it (a save
    under ``if trainer.is_global_zero``) makes every rank fail at once, naming both places, instead of hanging.
    The ranks may pass different paths (``f"rank{trainer.global_rank}.ckpt"``): as in Lightning, rank 0's path
    is the one written (and nothing else); rank 0 warns once per process that the others' paths were ignored.

    ``marks`` are entries added to the checkpoint's ``stepstone`` dict (see ``dump_checkpoint``); rank 0 also
    publishes the committed file as ``publish_as`` (a copy, or a link with ``publish_link``) before the barrier.

    Returns:
        The record of the committed file on rank 0, None on the other ranks.

    Raises:
        CollectiveError: the ranks are not all saving (or one failed) within the timeout.
    """
    # Before writing: a rank that is elsewhere (the save called on rank 0 only) fails here, nothing written.
    # The name must not hold the path, which may legitimately differ between ranks.
    paths = collectives.exchange_all("save_checkpoint", str(path))
    path = paths[0]
    _warn_if_paths_differ(trainer, paths)
    record = trainer.checkpoint_port.write(
        path, weights_only, storage_options, marks, publish_as, publish_link
    )
    # The file exists for every rank once the barrier is passed (e.g. before a rank reads best_model_path).
    collectives.barrier("saved checkpoint")
    return record


_warned_paths = False


def _warn_if_paths_differ(trainer: Trainer, paths: list[str]) -> None:
    global _warned_paths
    others = {rank: other for rank, other in enumerate(paths) if other != paths[0]}
    if not others or not trainer.is_global_zero or _warned_paths:
        return
    _warned_paths = True
    rank, other = next(iter(others.items()))
    warnings.warn(
        f"trainer.save_checkpoint was given different paths on different ranks: rank 0 {paths[0]!r}, rank {rank} "
        f"{other!r}. Only rank 0's path is written (as in Lightning); pass the same path on every rank to make "
        "this explicit. (Warned once.)",
        UserWarning,
        stacklevel=4,
    )


def finish_strategy(strategy: DDPStrategy, failed: bool) -> None:
    """End a run's use of the strategy: drop the DDP wrapper; on a failure also leave the process group.

    After a success the group stays for the next ``fit``/``validate``/``save_checkpoint`` of this process (under
    torchrun a group cannot be created twice: the second would pair with stale addresses in torchrun's store)
    and is left when the process exits, while the interpreter is still whole. After a failure it is left at
    once, so that the other ranks' pending collectives fail instead of waiting for the timeout.

    Args:
        strategy: the Trainer's strategy.
        failed: whether the run ended with an exception.
    """
    if failed:
        strategy.teardown()
        return
    strategy.model = None
    global _exit_registered
    if not _exit_registered and collectives.is_distributed():
        _exit_registered = True
        atexit.register(collectives.destroy_process_group)
