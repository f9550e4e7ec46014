"""Functions run on spawned ranks by the FSDP tests (module level, so that spawn can import them)."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from stepstone.checkpoint import sharded as sharded_module
from stepstone.checkpoint.sharded import load_sharded, save_sharded
from stepstone.checkpoint.sharded_reader import read_whole
from stepstone.errors import CheckpointCorruptError
from stepstone.strategies import all_gather_object, detect_environment
from stepstone.strategies.fsdp import FSDPStrategy

STEPS = 3
LR = 0.1


class Net(nn.Module):
    """Two linear layers (sharded individually with ``auto_wrap_policy={nn.Linear}``); odd sizes on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((self(x) - y) ** 2).mean()  # calls forward inside: nested FSDP hooks must cope


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch (8 samples); rank r trains on rows [4r, 4r + 4)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=generator), torch.randn(8, 1, generator=generator)


def train(module: nn.Module, optimizer: torch.optim.Optimizer, step: Any, rows: slice) -> None:
    """``STEPS`` optimizer steps on ``rows`` of the global batch, through ``step(batch)``."""
    x, y = data()
    for _ in range(STEPS):
        step((x[rows], y[rows])).backward()
        optimizer.step()
        optimizer.zero_grad()


def reference() -> tuple[Net, torch.optim.Optimizer]:
    """The single-process model trained on the whole batch (what FSDP on two half batches must match)."""
    torch.manual_seed(0)
    module = Net()
    optimizer = torch.optim.Adam(module.parameters(), lr=LR)
    train(module, optimizer, module.training_step, slice(0, 8))
    return module, optimizer


def _full(strategy: FSDPStrategy, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    strategy.state_dict_type = "full"
    return {"model": strategy.model_state_dict(), "optim": strategy.optimizer_state_dict(optimizer)}


def _local(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.to_local().clone() if isinstance(v, DTensor) else v for k, v in state.items()}


def _load_damaged(
    strategy: FSDPStrategy, optimizer: torch.optim.Optimizer, committed: str
) -> tuple[str, ...]:
    """Load a copy of ``committed`` whose rank-1 shard has a flipped byte: what this rank raised."""
    damaged = Path(committed + ".damaged")
    if strategy.global_rank == 0:
        shutil.copytree(committed, damaged)
        shard = (
            damaged / "__1_0.distcp"
        )  # verified by rank 1, which reads it: rank 0 learns of it from rank 1
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x10
        shard.write_bytes(bytes(data))
    strategy.barrier()
    try:
        load_sharded(str(damaged), strategy.sharded_state_template([optimizer]))
    except CheckpointCorruptError as error:
        return (type(error).__name__, Path(error.path).name, error.reason)
    return ("loaded",)


def _load_unreadable_on_rank1(
    strategy: FSDPStrategy, optimizer: torch.optim.Optimizer, committed: str
) -> str:
    """Rank 1 alone fails to read the metadata: every rank must raise (none may wait in dcp.load)."""

    def refuse(path: str, expected: object) -> bytes:
        raise CheckpointCorruptError(path, "rank 1 cannot read it")

    if strategy.global_rank == 1:
        sharded_module.read_whole = refuse  # type: ignore[assignment]  # this spawned process only
    try:
        load_sharded(committed, strategy.sharded_state_template([optimizer]))
    except CheckpointCorruptError as error:
        return f"{Path(error.path).name}: {error.reason}"
    finally:
        sharded_module.read_whole = read_whole
    return "loaded"


def fsdp_checks(one_rank_dir: str, two_rank_dir: str) -> list[dict[str, Any]]:
    """Train, gather, save sharded, reload from a 1-rank checkpoint and from rank 0's full state."""
    env = detect_environment()
    assert env is not None
    strategy = FSDPStrategy(env, timeout=timedelta(seconds=30), auto_wrap_policy={nn.Linear})
    strategy.setup_environment()
    try:
        torch.manual_seed(env.global_rank)  # different weights per rank: setup must broadcast rank 0's
        module = strategy.setup(Net())
        seen: dict[str, Any] = {"rank": env.global_rank, "sharded": strategy.sharded}
        seen["param_types"] = sorted({type(p).__name__ for p in module.parameters()})
        seen["local_a_weight"] = _local(module.state_dict())["a.weight"].shape
        optimizer = torch.optim.Adam(module.parameters(), lr=LR)
        rows = slice(4 * env.global_rank, 4 * env.global_rank + 4)
        torch.manual_seed(0)
        # Rank 0's seed-0 weights again (setup broadcast them), here given on every rank.
        strategy.load_model_state_dict(Net().state_dict())
        train(module, optimizer, lambda batch: strategy.call("training_step", batch), rows)
        seen["trained"] = _full(strategy, optimizer)

        strategy.state_dict_type = "sharded"
        extra = {"epoch": 1, "global_step": STEPS, "loops": {"fit": {"batch": 2}}}
        state = {**strategy.sharded_state_template([optimizer]), **extra}
        seen["record"] = save_sharded(two_rank_dir, state, metadata={"step": STEPS, "epoch": 1})

        seen["damaged"] = _load_damaged(strategy, optimizer, two_rank_dir)
        seen["unreadable_on_rank1"] = _load_unreadable_on_rank1(strategy, optimizer, two_rank_dir)
        # The damaged load filled part of the shards; this one fills all of them again (checked below).
        loaded = load_sharded(one_rank_dir, strategy.sharded_state_template([optimizer]))
        strategy.load_model_state_dict(loaded["state_dict"])
        strategy.load_optimizer_state_dict(optimizer, loaded["optimizer_states"][0])
        seen["from_one_rank"] = _full(strategy, optimizer)
        seen["from_one_rank_meta"] = {k: loaded.get(k) for k in ("epoch", "global_step")}

        full = seen["trained"]
        strategy.load_model_state_dict(full["model"])  # rank 0 holds it, rank 1 passes {}: broadcast
        strategy.load_optimizer_state_dict(optimizer, full["optim"])
        seen["from_rank0"] = _full(strategy, optimizer)
        seen["full_untouched"] = all(not isinstance(v, DTensor) for v in full["model"].values())
        return all_gather_object(seen)
    finally:
        strategy.teardown()
        strategy.teardown()
