"""The worker generators: captured per consumed batch, restored in new workers, batches routed to the same worker."""

from __future__ import annotations

import random
import warnings
from array import array
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from stepstone.loops import rng_memory
from stepstone.loops.data_position import DataPosition
from stepstone.loops.rng_memory import numpy_state, python_state
from stepstone.loops.worker_rng import WorkerRng, is_captured
from stepstone.trainer.rng import capture_rng


class WhoAndWhat(Dataset[torch.Tensor]):
    """Each sample: the id of the worker that loaded it and a draw from its torch and python generators."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        return torch.tensor([float(info.id if info else -1), torch.rand(()).item(), random.random()])


def _loader(**kwargs: Any) -> DataLoader[torch.Tensor]:
    return DataLoader(WhoAndWhat(), batch_size=2, num_workers=2, **kwargs)


def _epoch(loader: DataLoader[torch.Tensor], tracker: WorkerRng, skip: int) -> list[torch.Tensor]:
    return list(tracker.iterate(loader, skip, lambda: iter(loader)))


def test_the_first_batch_goes_to_the_worker_of_the_uninterrupted_run() -> None:
    loader = _loader()
    batches = _epoch(loader, WorkerRng(), skip=3)
    # Four batches dispatched from worker 1 on: workers 1, 0, 1, 0 (torch alternates).
    assert [int(b[0, 0]) for b in batches] == [1, 0, 1, 0]


def test_resumed_workers_continue_the_generators_of_the_consumed_batches() -> None:
    torch.manual_seed(0)
    full_tracker = WorkerRng()
    loader = _loader()
    full = _epoch(loader, full_tracker, 0)
    # The state after batch 2 (worker 0's second batch) and after batch 1 (worker 1's first) say where the
    # workers stand after 3 consumed batches.
    torch.manual_seed(0)
    partial = WorkerRng()
    iterator = partial.iterate(loader, 0, lambda: iter(loader))
    consumed = [next(iterator) for _ in range(3)]
    saved = partial.state_dict()
    del iterator
    assert saved is not None and saved["num_workers"] == 2
    assert all(torch.equal(a, b) for a, b in zip(consumed, full[:3], strict=True))
    resumed = WorkerRng()
    resumed.load_state_dict(saved)
    torch.manual_seed(1)  # other seeds for the new workers: the saved states must win
    # The samples themselves are not skipped here (no index skipper): the draws are what is compared.
    rest = _epoch(loader, resumed, 3)
    assert torch.equal(rest[0][:, 1:], full[3][:, 1:])
    assert int(rest[0][0, 0]) == 1


def test_a_changed_num_workers_warns_once_and_continues() -> None:
    tracker = WorkerRng()
    tracker.load_state_dict({"num_workers": 3, "states": [None, None, None]})
    with pytest.warns(UserWarning, match=r"num_workers=3.*num_workers=2.*cannot continue"):
        assert len(_epoch(_loader(), tracker, 1)) == 4
    tracker.load_state_dict({"num_workers": 3, "states": [None, None, None]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _epoch(_loader(), tracker, 1)


def test_the_user_collate_and_worker_init_run_and_batches_reach_the_loop_unwrapped() -> None:
    def collate(samples: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": torch.stack(samples)}

    loader = _loader(collate_fn=collate, worker_init_fn=lambda worker_id: random.seed(worker_id))
    batches = _epoch(loader, WorkerRng(), 0)
    assert all(isinstance(b, dict) and b["x"].shape == (2, 3) for b in batches)
    random.seed(0)
    assert float(batches[0]["x"][0, 2]) == pytest.approx(random.random())


def test_only_map_style_loaders_with_workers_are_captured() -> None:
    assert is_captured(_loader())
    assert not is_captured(DataLoader(WhoAndWhat(), batch_size=2))
    assert not is_captured([1, 2])


class Positioned(IterableDataset[torch.Tensor]):
    """Each worker's copy yields its share of 0..15 with a random draw, and saves/loads its position."""

    def __init__(self) -> None:
        self.start = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        assert info is not None
        mine = list(range(info.id, 16, info.num_workers))
        start, self.start = self.start, 0
        for self.position in range(start, len(mine)):
            yield torch.tensor([float(mine[self.position]), torch.rand(()).item()])

    def state_dict(self) -> dict[str, int]:
        return {"start": self.position + 1}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.start = state["start"]


def test_an_iterable_dataset_with_state_dict_resumes_each_worker_without_replay() -> None:
    loader = DataLoader(Positioned(), batch_size=2, num_workers=2)
    torch.manual_seed(0)
    first = DataPosition()
    full = list(first.open(loader, 0))
    torch.manual_seed(0)
    interrupted = DataPosition()
    iterator = interrupted.open(loader, 0)
    consumed = [next(iterator) for _ in range(3)]
    saved = interrupted.workers.state_dict()
    del iterator
    assert all(torch.equal(a, b) for a, b in zip(consumed, full[:3], strict=True))
    assert saved is not None and [s["dataset"] for s in saved["states"]] == [{"start": 4}, {"start": 2}]
    resumed = DataPosition()
    resumed.resume_from(interrupted.epoch_state, capture_rng())
    resumed.workers.load_state_dict(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no replay warning
        rest = list(resumed.open(loader, 3))
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, full[3:], strict=True))


def test_an_iterable_dataset_without_usable_positions_is_replayed_with_a_warning() -> None:
    loader = DataLoader(Positioned(), batch_size=2, num_workers=2)
    torch.manual_seed(0)
    full = list(DataPosition().open(loader, 0))
    torch.manual_seed(0)
    resumed = DataPosition()
    with pytest.warns(UserWarning, match="give the IterableDataset state_dict"):
        rest = list(resumed.open(loader, 3))
    assert all(torch.equal(a, b) for a, b in zip(rest, full[3:], strict=True))


def test_the_loader_is_left_as_the_user_made_it() -> None:
    """The wrappers live in the training iterator only: a validation iterating the same loader sees plain
    batches (a loader passed as both train and val dataloader is common)."""
    loader = _loader()
    collate, init = loader.collate_fn, loader.worker_init_fn
    iterator = WorkerRng().iterate(loader, 0, lambda: iter(loader))
    assert loader.collate_fn is collate and loader.worker_init_fn is init
    assert "_get_iterator" not in vars(loader)
    assert all(isinstance(batch, torch.Tensor) for batch in loader)
    assert all(isinstance(batch, torch.Tensor) for batch in iterator)


def test_a_tagged_batch_keeps_its_tag_through_the_pin_memory_thread() -> None:
    from torch.utils.data._utils.pin_memory import pin_memory

    from stepstone.loops.worker_rng import _capture_compact, _Tagged

    state = _capture_compact()
    pinned = pin_memory(_Tagged("not a tensor", 1, state))  # what torch's pin-memory thread calls
    assert isinstance(pinned, _Tagged) and (pinned.batch, pinned.worker, pinned.state) == (
        "not a tensor",
        1,
        state,
    )


class NumpyAndPythonDraws(Dataset[torch.Tensor]):
    """One numpy and one python gaussian per sample (the cached gaussians alternately made and taken), and now
    and then a ``set_state`` that leaves numpy's MT19937 bytes as they were but sets a cached gaussian."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> torch.Tensor:
        np.random.normal()
        random.gauss(0, 1)
        if index % 5 == 4:
            kind, keys, pos, _, _ = np.random.get_state(legacy=True)
            np.random.set_state((kind, keys, pos, 1, float(index)))
        return torch.tensor(float(index))


def _public_states(samples: list[torch.Tensor]) -> tuple[Any, ...]:
    """A collate_fn that returns, instead of a batch, the worker's states as the public getters report them
    right before the capture, and whether the capture reads them from memory."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    numpy_state(np)
    python_state()
    cache, python_cache = rng_memory._numpy_cache, rng_memory._python_cache
    from_memory = (
        cache is not None
        and cache[2] is not None
        and python_cache is not None
        and python_cache[1] is not None
    )
    info = torch.utils.data.get_worker_info()
    assert info is not None
    numpy_public = (str(kind), keys.tobytes(), int(pos), int(has_gauss), float(cached))
    return info.id, (version, array("I", internal).tobytes(), gauss_next), numpy_public, from_memory


def test_the_captured_states_are_those_of_the_public_getters_in_the_worker() -> None:
    loader = DataLoader(NumpyAndPythonDraws(), batch_size=1, num_workers=2, collate_fn=_public_states)
    tracker = WorkerRng()
    seen_gaussian_cache = set()
    for worker, python, numpy_public, from_memory in tracker.iterate(loader, 0, lambda: iter(loader)):
        captured = tracker.states[worker]
        assert isinstance(captured, tuple) and from_memory
        assert captured[:3] == python and captured[4] == numpy_public
        seen_gaussian_cache.add(numpy_public[3])
    assert seen_gaussian_cache == {0, 1}


@pytest.mark.filterwarnings("error")  # numpy warns if captured with get_state(legacy=True)
def test_a_worker_with_a_numpy_bit_generator_other_than_mt19937_is_captured_exactly() -> None:
    from stepstone.loops.worker_rng import _capture_compact, _expand
    from stepstone.trainer.rng import restore_rng

    original = np.random.get_bit_generator()
    try:
        np.random.set_bit_generator(np.random.PCG64(3))
        np.random.normal()
        captured = _expand(_capture_compact())
        expected = [float(np.random.normal()) for _ in range(3)]
        restore_rng(captured)
        assert [float(np.random.normal()) for _ in range(3)] == expected
    finally:
        np.random.set_bit_generator(original)
