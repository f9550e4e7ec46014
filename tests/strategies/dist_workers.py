"""Functions run on spawned ranks by the strategies tests (module level, so that spawn can import them)."""

from __future__ import annotations

import copy
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from stepstone.strategies import (
    CollectiveError,
    DDPStrategy,
    abort_on_error,
    agree,
    all_gather_object,
    barrier,
    broadcast_object,
    destroy_process_group,
    detect_environment,
    init_process_group,
    is_distributed,
    reduce,
)
from stepstone.strategies.collectives import get_rank, get_world_size


def _join(timeout_s: float) -> int:
    env = detect_environment()
    assert env is not None, "the spawn launcher did not set the rank variables"
    init_process_group(env, "gloo", timedelta(seconds=timeout_s))
    return env.global_rank


def collectives_roundtrip() -> list[dict[str, Any]]:
    """Every collective once; returns every rank's observations (gathered on rank 0)."""
    rank = _join(20)
    try:
        value = torch.tensor([rank + 1.0, 10.0 * (rank + 1)])
        seen: dict[str, Any] = {
            "rank": rank,
            "world": get_world_size(),
            "get_rank": get_rank(),
            "distributed": is_distributed(),
            "mean": reduce(value, "mean").tolist(),
            "avg": reduce(value, "avg").tolist(),
            "sum": reduce(value, "sum").tolist(),
            "max": reduce(value, "max").tolist(),
            "min": reduce(value, "min").tolist(),
            "int_mean": reduce(torch.tensor(rank + 2), "mean").item(),
            "input_after": value.tolist(),
            "bcast0": broadcast_object({"path": f"rank{rank}.ckpt"}),
            "bcast1": broadcast_object(f"from{rank}", src=1),
            "gather": all_gather_object(rank * 10),
            "all": agree(rank == 0, "all"),
            "any": agree(rank == 0, "any"),
            "all_true": agree(True),
            "none": agree(False, "any"),
        }
        barrier("same name")
        try:
            barrier(f"place {rank}")
            seen["mismatch"] = "no error"
        except CollectiveError as exc:
            seen["mismatch"] = str(exc)
        barrier("after mismatch")  # the group still works after a name mismatch
        return all_gather_object(seen)
    finally:
        destroy_process_group()


def _appears(path: str, deadline_s: float) -> bool:
    """Whether ``path`` exists within ``deadline_s`` seconds (a generous deadline, not a measure of speed)."""
    deadline = time.monotonic() + deadline_s
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def raise_before_barrier(out: str) -> None:
    """Rank 1 raises (inside abort_on_error) and stays alive until rank 0's barrier failed; rank 0 writes its error.

    The process group timeout is 30 s and rank 1 gives up waiting after 20: rank 0 failing while rank 1 is
    alive can only be abort_on_error's doing.
    """
    rank = _join(30)
    try:
        if rank == 1:
            try:
                with abort_on_error():
                    raise ValueError("rank 1 broke before the barrier")
            except ValueError:
                if not _appears(out, 20):
                    raise AssertionError("rank 0's barrier did not fail while rank 1 was alive") from None
                raise
        try:
            barrier("before save")
        except CollectiveError as exc:
            Path(out).write_text(str(exc))
            raise
    finally:
        destroy_process_group()


def mismatched_collective(timeout_s: float, out: str) -> float:
    """Rank 1 stays connected but never joins rank 0's barrier; returns how long rank 0 waited for its error.

    Rank 1 leaves only once rank 0 wrote ``out`` (its barrier failed), so only the timeout can have ended
    rank 0's wait; rank 1 gives up after 30 s, failing the run, if rank 0 never times out.
    """
    rank = _join(timeout_s)
    try:
        if rank == 1:
            if not _appears(out, 30):
                raise AssertionError("rank 0's barrier did not time out while rank 1 was connected")
            return 0.0
        start = time.monotonic()
        try:
            barrier("lonely")
        except CollectiveError:
            waited = time.monotonic() - start
            Path(out).write_text(f"{waited}")
            return waited
        raise AssertionError("rank 0's barrier returned although rank 1 never arrived")
    finally:
        destroy_process_group()


def report_environment(payload_size: int) -> dict[str, Any]:
    """The environment a spawned rank sees, plus a large tensor (the result must not block its sender)."""
    env = detect_environment()
    assert env is not None
    return {
        "env": env,
        "vars": {
            k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        },
        "payload": torch.arange(payload_size, dtype=torch.float32),
    }


def _nested_failure(rank: int) -> None:
    raise KeyError(f"no such key on rank {rank}")


def fail_on_rank_one(how: str) -> str:
    """Rank 1 fails (``how``: ``"raise"`` or ``"exit"``); rank 0 succeeds."""
    env = detect_environment()
    assert env is not None
    if env.global_rank == 1:
        if how == "exit":
            os._exit(7)
        _nested_failure(1)
    return "rank 0 done"


class Regressor(nn.Module):
    """A model whose training step is not its forward (as a LightningModule)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((self(x) - y) ** 2).mean()


def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])]


def ddp_step() -> list[dict[str, Any]]:
    """Wrap, shard, take one step; returns what rank 0 and the gathered ranks saw."""
    env = detect_environment()
    assert env is not None
    strategy = DDPStrategy(env, "cpu", timeout=timedelta(seconds=20))
    strategy.setup_environment()
    try:
        torch.manual_seed(100 + env.global_rank)  # different initial weights per rank
        module = Regressor()
        initial = {k: v.clone() for k, v in module.state_dict().items()}
        strategy.setup(module)
        after_wrap = {k: v.clone() for k, v in module.state_dict().items()}
        reference = copy.deepcopy(module)  # synced weights, no DDP: for the expected averaged gradient
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(16, 4, generator=generator), torch.randn(16, 1, generator=generator))
        loader = strategy.replace_sampler(
            DataLoader(data, batch_size=4, shuffle=True, collate_fn=_collate, drop_last=True)
        )
        assert isinstance(loader.sampler, DistributedSampler)
        strategy.set_epoch(loader, 0)
        epoch0 = list(loader.sampler)
        strategy.set_epoch(loader, 1)
        epoch1 = list(loader.sampler)
        strategy.set_epoch(loader, 0)
        batch = next(iter(loader))
        strategy.call("training_step", batch).backward()
        grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
        reference.training_step(batch).backward()
        local = {name: p.grad.clone() for name, p in reference.named_parameters() if p.grad is not None}
        seen = {
            "rank": strategy.global_rank,
            "initial": initial,
            "after_wrap": after_wrap,
            "grads": grads,
            "local_grads": local,
            "epoch0": epoch0,
            "epoch1": epoch1,
            "batch_size": loader.batch_size,
            "collate": loader.collate_fn is _collate,
            "drop_last": loader.drop_last,
            "unwrapped": strategy.unwrap() is module,
            "keys": sorted(module.state_dict()),
            "reduced": strategy.reduce(torch.tensor([float(strategy.global_rank)]), "sum").item(),
            "broadcast": strategy.broadcast(f"name-{strategy.global_rank}"),
            "agree": strategy.agree(strategy.is_global_zero, "any"),
            "kwargs": strategy.distributed_sampler_kwargs,
        }
        strategy.barrier("end of step")
        return all_gather_object(seen)
    finally:
        strategy.teardown()
        strategy.teardown()  # twice is harmless
