"""Reopening a dataloader at batch k: same order as the uninterrupted epoch, skipped batches never fetched."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler

from stepstone.loops.data_position import DataPosition, is_stateful_loader
from stepstone.trainer.rng import capture_rng


class Counting(Dataset[torch.Tensor]):
    """20 distinct samples; remembers which indices were fetched (in this process)."""

    def __init__(self) -> None:
        self.fetched: list[int] = []

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> torch.Tensor:
        self.fetched.append(index)
        return torch.tensor([float(index)])


LOADERS: dict[str, Callable[[Counting], DataLoader[Any]]] = {
    "random-sampler": lambda ds: DataLoader(ds, batch_size=4, shuffle=True),
    "sequential-sampler": lambda ds: DataLoader(ds, batch_size=4),
    "own-generator": lambda ds: DataLoader(
        ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)
    ),
    "batch-sampler": lambda ds: DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 3, False)),
    "distributed-sampler": lambda ds: DataLoader(
        ds, batch_size=2, sampler=DistributedSampler(ds, num_replicas=2, rank=1, seed=5)
    ),
    "no-batching": lambda ds: DataLoader(ds, batch_size=None, shuffle=True),
}


def _epoch(loader: DataLoader[Any], position: DataPosition, skip: int) -> list[torch.Tensor]:
    return list(position.open(loader, skip))


@pytest.mark.parametrize("name", list(LOADERS))
def test_resuming_at_batch_k_gives_the_rest_of_the_same_epoch_without_fetching_the_skipped(name: str) -> None:
    dataset = Counting()
    loader = LOADERS[name](dataset)
    torch.manual_seed(0)
    _epoch(loader, DataPosition(), 0)  # an earlier epoch: the order below is not the first one
    first = DataPosition()
    full = _epoch(loader, first, 0)
    save_time = capture_rng()
    torch.manual_seed(123)  # a new process: other generator states
    random.seed(9)
    dataset.fetched.clear()
    resumed = DataPosition()
    resumed.resume_from(first.epoch_state, save_time)
    rest = _epoch(loader, resumed, 2)
    assert [t.tolist() for t in rest] == [t.tolist() for t in full[2:]]
    skipped = {int(i) for t in full[:2] for i in t.flatten().tolist()}
    assert skipped.isdisjoint(dataset.fetched)
    assert torch.equal(
        torch.get_rng_state(), save_time["torch"]
    )  # the run continues with the saved generators


def test_workers_and_persistent_workers_skip_only_the_resumed_epoch() -> None:
    loader = DataLoader(Counting(), batch_size=4, shuffle=True, num_workers=2, persistent_workers=True)
    try:
        first = DataPosition()
        full = _epoch(loader, first, 0)
        save_time = capture_rng()
        resumed = DataPosition()
        resumed.resume_from(first.epoch_state, save_time)
        assert [t.tolist() for t in _epoch(loader, resumed, 3)] == [t.tolist() for t in full[3:]]
        assert len(_epoch(loader, resumed, 0)) == 5  # the next epoch is whole again
    finally:
        del loader._iterator  # shut the persistent workers down now


class StatefulLoader:
    """Duck-typed like torchdata's StatefulDataLoader: resumes itself from its state_dict."""

    def __init__(self) -> None:
        self.position = 0

    def __iter__(self) -> Iterator[int]:
        start, self.position = self.position, 0
        for i in range(start, 5):
            self.position = i + 1
            yield i

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def test_a_stateful_loader_resumes_through_its_own_state() -> None:
    loader = StatefulLoader()
    assert is_stateful_loader(loader) and not is_stateful_loader(DataLoader(Counting()))
    iterator = DataPosition().open(loader, 0)
    assert [next(iterator), next(iterator)] == [0, 1]
    state = loader.state_dict()
    assert list(DataPosition().open(StatefulLoader(), 2, loader_state=state)) == [2, 3, 4]


def test_an_iterable_without_a_sampler_is_replayed_with_a_warning() -> None:
    data = [torch.tensor([float(i)]) for i in range(6)]
    with pytest.warns(UserWarning, match="first 4 batches of this epoch are read again and dropped"):
        rest = list(DataPosition().open(data, 4))
    assert [t.item() for t in rest] == [4.0, 5.0]
