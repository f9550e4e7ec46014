"""DDPStrategy and dataloader sharding: in-process checks, and one real two-rank gloo training step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    Sampler,
    SequentialSampler,
    TensorDataset,
)
from torch.utils.data.distributed import DistributedSampler

from stepstone.errors import MisconfigurationException
from stepstone.strategies import (
    ClusterEnvironment,
    DDPStrategy,
    ddp_spawn,
    distributed_loader,
    set_loader_epoch,
    single_process,
)
from strategies import dist_workers

_DATA = TensorDataset(torch.arange(10.0).unsqueeze(1))


def _rank(rank: int, world: int = 2) -> ClusterEnvironment:
    return ClusterEnvironment(rank, rank, 0, world, 1, "127.0.0.1", 1, "torchrun")


def _worker_init(worker_id: int) -> None:
    pass


def _collate(items: list[Any]) -> list[Any]:
    return items


# --- one process -----------------------------------------------------------------------------------
def test_single_process_strategy_needs_no_process_group() -> None:
    strategy = DDPStrategy(single_process())
    strategy.setup_environment()
    assert not dist.is_initialized()
    module = dist_workers.Regressor()
    strategy.setup(module)
    batch = [torch.ones(2, 4), torch.zeros(2, 1)]
    loss = strategy.call("training_step", batch)
    assert torch.equal(loss, module.training_step(batch))
    assert strategy.unwrap() is module
    value = torch.tensor([3.0])
    assert strategy.reduce(value, "mean") is value
    assert strategy.broadcast("x") == "x"
    assert strategy.agree(False) is False
    strategy.barrier("alone")
    assert strategy.is_global_zero and strategy.world_size == 1
    assert strategy.root_device == torch.device("cpu") and strategy.backend == "gloo"
    assert strategy.replace_sampler(loader := DataLoader(_DATA, batch_size=2)) is loader
    strategy.teardown()


def test_strategy_misuse_is_named() -> None:
    with pytest.raises(MisconfigurationException, match="accelerator='tpu'"):
        DDPStrategy(single_process(), "tpu")
    strategy = DDPStrategy(_rank(1))
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 1}
    assert (strategy.global_rank, strategy.local_rank, strategy.node_rank) == (1, 1, 0)
    assert not strategy.is_global_zero
    with pytest.raises(MisconfigurationException, match="setup_environment"):
        strategy.setup(dist_workers.Regressor())
    with pytest.raises(MisconfigurationException, match="setup"):
        strategy.call("training_step")
    with pytest.raises(MisconfigurationException, match="setup"):
        strategy.unwrap()


def test_cuda_ranks_need_their_gpu() -> None:
    missing = torch.cuda.device_count()  # the first GPU index that does not exist here
    env = ClusterEnvironment(missing, missing, 0, missing + 1, 1, "127.0.0.1", 1, "torchrun")
    with pytest.raises(MisconfigurationException, match=f"Local rank {missing} needs GPU {missing}"):
        DDPStrategy(env, "cuda")


# --- sharding a loader -----------------------------------------------------------------------------
def test_loader_settings_survive_sharding() -> None:
    generator = torch.Generator().manual_seed(3)
    loader = DataLoader(
        _DATA,
        batch_size=3,
        shuffle=True,
        num_workers=1,
        collate_fn=_collate,
        drop_last=True,
        pin_memory=False,
        worker_init_fn=_worker_init,
        generator=generator,
        prefetch_factor=3,
        persistent_workers=True,
        timeout=7,
    )
    shard = DDPStrategy(_rank(1)).replace_sampler(loader)
    assert isinstance(shard.sampler, DistributedSampler)
    assert (shard.sampler.num_replicas, shard.sampler.rank, shard.sampler.shuffle) == (2, 1, True)
    assert shard.batch_size == 3 and shard.drop_last and shard.num_workers == 1
    assert shard.collate_fn is _collate and shard.worker_init_fn is _worker_init
    assert shard.generator is generator and shard.prefetch_factor == 3 and shard.persistent_workers
    assert shard.timeout == 7


def test_ranks_get_disjoint_shards_that_cover_the_dataset() -> None:
    shards = [distributed_loader(DataLoader(_DATA, batch_size=2), 2, rank) for rank in (0, 1)]
    seen = [[int(x) for (batch,) in shard for x in batch.flatten()] for shard in shards]
    assert not shards[0].sampler.shuffle  # a sequential loader stays sequential
    assert sorted(seen[0] + seen[1]) == list(range(10))
    assert not set(seen[0]) & set(seen[1])


def test_set_epoch_reshuffles_identically_on_every_rank() -> None:
    shards = [distributed_loader(DataLoader(_DATA, batch_size=2, shuffle=True), 2, r) for r in (0, 1)]
    orders = {}
    for epoch in (0, 1):
        for rank, shard in enumerate(shards):
            set_loader_epoch(shard, epoch)
            orders[epoch, rank] = list(shard.sampler)
    assert orders[0, 0] != orders[1, 0]  # a new order each epoch...
    for epoch in (0, 1):  # ...that is still a partition of the dataset
        assert sorted(orders[epoch, 0] + orders[epoch, 1]) == list(range(10))


def test_shuffle_seed_comes_from_seed_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "17")
    shard = distributed_loader(DataLoader(_DATA, shuffle=True), 2, 0)
    assert shard.sampler.seed == 17
    assert distributed_loader(DataLoader(_DATA), 2, 0, shuffle=True, seed=5).sampler.seed == 5


class _Stream(IterableDataset[int]):
    def __iter__(self) -> Iterator[int]:
        return iter(range(4))


class _Loader(DataLoader[Any]):
    pass


class _Odd(Sampler[int]):
    def __iter__(self) -> Iterator[int]:
        return iter([1, 3])

    def __len__(self) -> int:
        return 2


def test_loaders_that_need_no_sharding_are_returned_as_they_are() -> None:
    stream = DataLoader(_Stream(), batch_size=2)
    assert distributed_loader(stream, 2, 0) is stream
    ready = DataLoader(_DATA, sampler=DistributedSampler(_DATA, num_replicas=2, rank=0))
    assert distributed_loader(ready, 2, 0) is ready
    plain = [1, 2, 3]
    assert distributed_loader(plain, 2, 0) is plain
    sub = distributed_loader(_Loader(_DATA, batch_size=2), 2, 0)
    assert type(sub) is _Loader and isinstance(sub.sampler, DistributedSampler)


def test_custom_samplers_are_refused_with_a_fix() -> None:
    with pytest.raises(MisconfigurationException, match="custom sampler \\(_Odd\\)"):
        distributed_loader(DataLoader(_DATA, sampler=_Odd()), 2, 0)
    batches = BatchSampler(SequentialSampler(_DATA), batch_size=2, drop_last=False)
    with pytest.raises(MisconfigurationException, match="custom batch_sampler"):
        distributed_loader(DataLoader(_DATA, batch_sampler=batches), 2, 0)


def test_set_epoch_reaches_a_batch_samplers_sampler() -> None:
    inner: DistributedSampler[Any] = DistributedSampler(_DATA, num_replicas=2, rank=0)
    loader = DataLoader(_DATA, batch_sampler=BatchSampler(inner, batch_size=2, drop_last=False))
    set_loader_epoch(loader, 4)
    assert inner.epoch == 4
    set_loader_epoch([1, 2], 5)  # no sampler: nothing to do


# --- two real ranks --------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_ddp_step_on_two_gloo_ranks() -> None:
    ranks = ddp_spawn(dist_workers.ddp_step, 2)
    zero, one = ranks
    # The wrapper copied rank 0's weights to rank 1 (they started different).
    assert not torch.equal(zero["initial"]["layer.weight"], one["initial"]["layer.weight"])
    for name in zero["after_wrap"]:
        assert torch.equal(one["after_wrap"][name], zero["initial"][name])
    # Gradients are averaged over the two ranks' batches, identically on both ranks.
    for name in zero["grads"]:
        expected = (zero["local_grads"][name] + one["local_grads"][name]) / 2
        assert torch.allclose(zero["grads"][name], expected, atol=1e-6)
        assert torch.equal(zero["grads"][name], one["grads"][name])
    assert not torch.equal(zero["local_grads"]["layer.weight"], one["local_grads"]["layer.weight"])
    # Each rank reads half the data; together all of it; a different order in epoch 1.
    assert sorted(zero["epoch0"] + one["epoch0"]) == list(range(16))
    assert zero["epoch0"] != zero["epoch1"]
    for seen in ranks:
        assert (seen["batch_size"], seen["collate"], seen["drop_last"]) == (4, True, True)
        assert seen["unwrapped"] and seen["keys"] == ["layer.bias", "layer.weight"]
        assert (seen["reduced"], seen["broadcast"], seen["agree"]) == (1.0, "name-0", True)
        assert seen["kwargs"] == {"num_replicas": 2, "rank": seen["rank"]}
