"""Distributed training on torch.distributed: where a process sits, how ranks start, and how they talk.

- :mod:`~stepstone.strategies.environment`: ranks and the main address from torchrun, SLURM or the launcher.
- :mod:`~stepstone.strategies.launcher`: ``strategy="ddp"`` from ``python train.py`` (re-running the script).
- :mod:`~stepstone.strategies.spawn`: ``strategy="ddp_spawn"`` (torch.multiprocessing).
- :mod:`~stepstone.strategies.collectives`: the process group and bounded, single-process-safe collectives.
- :mod:`~stepstone.strategies.sampler`: sharding a DataLoader across ranks.
- :mod:`~stepstone.strategies.ddp`: :class:`DDPStrategy`, composing the above.
- :mod:`~stepstone.strategies.fsdp`: :class:`FSDPStrategy` (FSDP2), DDP's interface plus sharded state.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, TypeGuard

from stepstone.strategies.collectives import (
    DEFAULT_TIMEOUT,
    CollectiveError,
    abort_on_error,
    agree,
    all_gather_object,
    backend_for,
    barrier,
    broadcast_object,
    destroy_process_group,
    exchange,
    exchange_all,
    init_process_group,
    is_distributed,
    reduce,
)
from stepstone.strategies.ddp import DDPStrategy
from stepstone.strategies.environment import (
    ClusterEnvironment,
    check_matches,
    detect_environment,
    launcher_environment,
    single_process,
)
from stepstone.strategies.launcher import ChildExit, ChildProcessFailed, ScriptLauncher, find_free_port
from stepstone.strategies.sampler import distributed_loader, set_loader_epoch
from stepstone.strategies.spawn import SpawnedRankFailed, ddp_spawn

if TYPE_CHECKING:
    from stepstone.strategies.fsdp import FSDPStrategy

_FSDP_MODULE = "stepstone.strategies.fsdp"


def __getattr__(name: str) -> Any:
    # FSDPStrategy is exported lazily: its module imports torch.distributed.checkpoint, which costs ~1 s, so
    # `import stepstone` (and the `stepstone ckpt` command line) pays for it only when FSDP is used.
    if name == "FSDPStrategy":
        return importlib.import_module(_FSDP_MODULE).FSDPStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_fsdp(strategy: object) -> TypeGuard[FSDPStrategy]:
    """Whether ``strategy`` is an :class:`FSDPStrategy`, without importing FSDP when it was never used.

    Args:
        strategy: any strategy object (or None).

    Returns:
        True for an FSDPStrategy (or a subclass).
    """
    module = sys.modules.get(_FSDP_MODULE)
    return module is not None and isinstance(strategy, module.FSDPStrategy)


__all__ = [
    "DEFAULT_TIMEOUT",
    "ChildExit",
    "ChildProcessFailed",
    "ClusterEnvironment",
    "CollectiveError",
    "DDPStrategy",
    "FSDPStrategy",
    "ScriptLauncher",
    "SpawnedRankFailed",
    "abort_on_error",
    "agree",
    "all_gather_object",
    "backend_for",
    "barrier",
    "broadcast_object",
    "check_matches",
    "ddp_spawn",
    "destroy_process_group",
    "detect_environment",
    "distributed_loader",
    "exchange",
    "exchange_all",
    "find_free_port",
    "init_process_group",
    "is_distributed",
    "is_fsdp",
    "launcher_environment",
    "reduce",
    "set_loader_epoch",
    "single_process",
]
