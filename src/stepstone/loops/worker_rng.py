"""The random generators of DataLoader worker processes: captured per consumed batch, restored on resume.

Random augmentation in ``Dataset.__getitem__`` draws from the *worker's* generators (python ``random``, torch,
numpy), which live in other processes: the main process's generator states say nothing about them. So each
worker reports its generator states after producing a batch, carried beside the batch (a few KB) through
torch's result queue and unwrapped before the batch reaches user code. The main process keeps, per worker,
the states after the last batch the loop *consumed* (prefetched batches do not count); the checkpoint stores
them. A resumed run's workers start from those states (set in the worker init function, after torch seeded
the worker and after the user's ``worker_init_fn``), and the first remaining batch is sent to the worker that
would have produced it in the uninterrupted run: torch hands map-style batches to its workers in turn,
starting each epoch at worker 0, so batch ``k`` of an epoch comes from worker ``k % num_workers``.

Map-style datasets under a torch ``DataLoader`` with ``num_workers > 0`` are captured, and so are
``IterableDataset`` s with ``state_dict``/``load_state_dict``: each worker's copy also reports its position,
and the resumed workers load it instead of replaying. Other iterables are replayed by
:mod:`stepstone.loops.data_position` (non-persistent workers restart from the same seeds).
"""

from __future__ import annotations

import ctypes
import functools
import warnings
import weakref
from array import array
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from typing_extensions import TypeIs, override

from stepstone.checkpoint.private_apis import (
    persistent_iterator,
    pin_batch,
    turn_worker_cycle,
    worker_iterator_base,
)
from stepstone.loops.rng_memory import numpy_state, python_state
from stepstone.trainer.rng import numpy_plain, restore_rng

__all__ = ["WorkerRng"]

# Private switch: tests turn the capture off to show that the resume comparison then fails.
_CAPTURE = True


def _capture_compact() -> tuple[Any, ...]:
    """The worker's generator states, cheap to take and to pickle (bytes, not lists or tensors: a tensor would
    cross the result queue through a shared-memory file of its own). :func:`_expand` turns them into
    :func:`~stepstone.trainer.rng.capture_rng`'s format when a checkpoint needs them. python's and numpy's are
    read from the generators' memory (:mod:`~stepstone.loops.rng_memory`: ~1 µs instead of ~50 µs)."""
    version, internal, gauss_next = python_state()
    torch_state = torch.get_rng_state()
    np = _numpy()
    return (
        version,
        internal,
        gauss_next,
        ctypes.string_at(torch_state.data_ptr(), torch_state.numel()),
        numpy_state(np) if np is not None else None,
    )


def _expand(compact: tuple[Any, ...]) -> dict[str, Any]:
    """A :func:`_capture_compact` result in :func:`~stepstone.trainer.rng.capture_rng`'s (weights_only-safe)
    format, which :func:`~stepstone.trainer.rng.restore_rng` restores."""
    version, internal, gauss_next, torch_bytes, numpy_state = compact[:5]
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(array("I", internal)), "gauss_next": gauss_next},
        "torch": torch.frombuffer(bytearray(torch_bytes), dtype=torch.uint8),
    }
    if isinstance(numpy_state, dict):
        state["numpy"] = numpy_plain(numpy_state)
    elif numpy_state is not None:
        kind, keys, pos, has_gauss, cached = numpy_state
        state["numpy"] = {
            "kind": kind,
            "keys": torch.tensor(list(array("I", keys)), dtype=torch.int64),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached_gaussian": cached,
        }
    if len(compact) > 5 and compact[5] is not None:
        state["dataset"] = compact[5]
    return state


def _numpy() -> Any:
    global _NUMPY
    if _NUMPY is False:
        found: Any = None
        try:
            import numpy

            found = numpy
        except ImportError:  # numpy is optional
            pass
        _NUMPY = found
    return _NUMPY


_NUMPY: Any = False  # not looked up yet


class _Tagged:
    """A batch as it leaves a worker: the batch, the worker's id and its generator states after producing it."""

    __slots__ = ("batch", "state", "worker")

    def __init__(self, batch: Any, worker: int, state: tuple[Any, ...]) -> None:
        self.batch, self.worker, self.state = batch, worker, state

    def pin_memory(self, device: Any = None) -> _Tagged:
        # torch's pin-memory thread calls this on objects it does not know: pin the batch, keep the tag.
        return _Tagged(pin_batch(self.batch, device), self.worker, self.state)


class _CapturingCollate:
    """Wraps the loader's ``collate_fn``: in a worker, the result carries the worker's generator states."""

    def __init__(self, inner: Callable[[Any], Any]) -> None:
        self.inner = inner

    def __call__(self, samples: Any) -> Any:
        batch = self.inner(samples)
        info = get_worker_info()
        if info is None:
            return batch
        dataset = info.dataset
        # An IterableDataset that keeps its own position: each worker's copy reports where it is.
        position = dataset.state_dict() if _has_state(dataset) else None
        return _Tagged(batch, info.id, (*_capture_compact(), position))


class _RestoringInit:
    """Wraps the loader's ``worker_init_fn``: runs the user's, then sets the worker's saved generator states."""

    def __init__(self, inner: Callable[[int], None] | None) -> None:
        self.inner = inner
        self.states: list[dict[str, Any] | None] | None = None

    def __call__(self, worker_id: int) -> None:
        if self.inner is not None:
            self.inner(worker_id)
        state = self.states[worker_id] if self.states is not None else None
        if state is not None:
            restore_rng(state)
            info = get_worker_info()
            if "dataset" in state and info is not None:
                dataset = info.dataset
                assert _has_state(dataset)  # the worker's copy of the dataset whose state_dict() was saved
                dataset.load_state_dict(state["dataset"])


@functools.cache
def _routed_iterator() -> type[Any]:
    """The worker iterator class that starts dispatching at a chosen worker (built on first use: it subclasses
    a private torch class, probed by ``private_apis``)."""
    if TYPE_CHECKING:  # the class that worker_iterator_base() checks and returns, named for the type checker
        from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter as base
    else:
        base = worker_iterator_base()

    class _RoutedIterator(base):
        """torch's worker iterator, whose next epoch (or first) starts dispatching at worker ``first_worker``."""

        def __init__(self, loader: DataLoader[Any], first_worker: int, undo_seed_draw: bool = False) -> None:
            self.first_worker = first_worker
            self._rotation = 0
            # Persistent workers that the uninterrupted run had started in an earlier epoch: there, this epoch's
            # iter() drew no base seed, so the draw made here to start the new workers is undone before the
            # sampler draws the epoch's order (the workers' generators come from the checkpoint anyway).
            generator = loader.generator
            self._before_seed = (
                (torch.get_rng_state(), generator.get_state() if generator is not None else None)
                if undo_seed_draw
                else None
            )
            super().__init__(loader)

        @override
        def _reset(self, loader: DataLoader[Any], first_iter: bool = False) -> None:
            if self._before_seed is not None:
                state, generator_state = self._before_seed
                self._before_seed = None
                torch.set_rng_state(state)
                if generator_state is not None and loader.generator is not None:
                    loader.generator.set_state(generator_state)
            # The rotation applies to one epoch: the first batch dispatched after this reset.
            self._rotation, self.first_worker = self.first_worker, 0
            super()._reset(loader, first_iter)

        @override
        def _try_put_index(self) -> None:
            # _reset made a fresh worker cycle just before priming the prefetch; turn it to the right worker once.
            turn_worker_cycle(self, self._rotation)
            self._rotation = 0
            super()._try_put_index()

    return _RoutedIterator


class Stateful(Protocol):
    """An object that saves and restores its own position (a stateful dataset or data loader)."""

    def state_dict(self) -> Any:
        """Its position."""

    def load_state_dict(self, state: Any) -> Any:
        """Go back to ``state``."""


def _has_state(dataset: object) -> TypeIs[Stateful]:
    return callable(getattr(dataset, "state_dict", None)) and callable(
        getattr(dataset, "load_state_dict", None)
    )


def is_captured(loader: object) -> bool:
    """Whether the workers of ``loader`` can be captured: a DataLoader with workers over a map-style dataset,
    or over an IterableDataset with ``state_dict``/``load_state_dict`` (each worker's copy is saved).

    Args:
        loader: the training dataloader.

    Returns:
        True when :class:`WorkerRng` tracks its workers.
    """
    return (
        _CAPTURE
        and isinstance(loader, DataLoader)
        and loader.num_workers > 0
        and (not isinstance(loader.dataset, IterableDataset) or _has_state(loader.dataset))
        and getattr(loader, "in_order", True)
    )


class WorkerRng:
    """Per-worker generator states of the training loader, kept for checkpoints and restored on resume."""

    def __init__(self) -> None:
        self.num_workers = 0
        # Per worker: a compact state (a tuple) from the worker, or an expanded one (a dict) from a checkpoint.
        self.states: list[tuple[Any, ...] | dict[str, Any] | None] = []
        self._saved: dict[str, Any] | None = None
        # Whether the loop fetches one batch ahead of the one it trains (a loader without a length).
        self.lookahead = False
        self._warned = False

    def state_dict(self) -> dict[str, Any] | None:
        """The states to checkpoint: ``{"num_workers", "states"}`` (a state per worker, in
        :func:`~stepstone.trainer.rng.capture_rng`'s format; None for a worker that has produced no consumed
        batch yet), or None when no workers are tracked."""
        if not self.num_workers:
            return None
        states = [_expand(x) if isinstance(x, tuple) else x for x in self.states]
        return {"num_workers": self.num_workers, "states": states}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Arrange for the next :meth:`iterate` to start the workers from ``state`` (a :meth:`state_dict`).

        Until then :meth:`state_dict` reports ``state``: a checkpoint written before the loader is reopened
        (a run resumed right after the last batch of an epoch) carries the workers' generators on.
        """
        self._saved = state
        self.num_workers = int(state["num_workers"]) if state is not None else 0
        self.states = list(state["states"]) if state is not None else []

    def can_resume(self, loader: DataLoader[Any]) -> bool:
        """Whether the saved states put ``loader``'s workers at the position (no replay needed): they were
        saved with the same number of workers and every worker had produced a consumed batch."""
        saved = self._saved or {}
        states = saved.get("states") or []
        return saved.get("num_workers") == loader.num_workers and all(x is not None for x in states)

    def iterate(self, loader: DataLoader[Any], skip: int, make: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        """Create the epoch's iterator with ``make`` (which calls ``iter(loader)``), with captured workers.

        Args:
            loader: a loader for which :func:`is_captured` holds.
            skip: batches of this epoch already consumed (the resumed run starts at batch ``skip``).
            make: creates the loader's iterator (e.g. with an index skipper in place).

        Returns:
            The batches, unwrapped; the states of each consumed batch's worker are recorded.
        """
        workers = loader.num_workers
        persistent = bool(loader.persistent_workers)
        # The wrappers are in place only while the iterator starts its workers (they take them along): the
        # loader itself stays as the user made it, e.g. for a validation that iterates the same loader.
        collate, user_init = loader.collate_fn, loader.worker_init_fn
        init = _RestoringInit(user_init)
        route = _Router(loader)
        saved, self._saved = self._saved, None
        if not persistent or self.num_workers != workers:
            self.states = [None] * workers  # new worker processes
        self.num_workers = workers
        # A fresh epoch of new workers needs nothing: torch seeds them as in the uninterrupted run.
        if saved is not None and (skip > 0 or persistent):
            if saved.get("num_workers") == workers:
                init.states = list(saved["states"])
                self.states = list(saved["states"])
                route.undo_seed_draw = persistent and any(x is not None for x in init.states)
            else:
                self._warn_workers_changed(saved.get("num_workers"), workers)
        route.first_worker = skip % workers
        existing: Any = persistent_iterator(loader)
        if isinstance(existing, _routed_iterator()):
            existing.first_worker = route.first_worker
        loader.collate_fn, loader.worker_init_fn = _CapturingCollate(collate), init
        object.__setattr__(loader, "_get_iterator", route)
        try:
            iterator = make()
        finally:
            loader.collate_fn, loader.worker_init_fn = collate, user_init
            del loader.__dict__["_get_iterator"]
        return self._unwrap(iterator)

    def _unwrap(self, iterator: Iterator[Any]) -> Iterator[Any]:
        # With ``lookahead`` the loop fetches batch i + 1 before training batch i (to know which is the last):
        # a batch counts as consumed once the next one is fetched, or the loader is exhausted.
        pending: _Tagged | None = None
        for item in iterator:
            if pending is not None:
                self.states[pending.worker], pending = pending.state, None
            if isinstance(item, _Tagged):
                if self.lookahead:
                    pending = item
                else:
                    self.states[item.worker] = item.state
                item = item.batch
            yield item
        if pending is not None:
            self.states[pending.worker] = pending.state

    def _warn_workers_changed(self, before: Any, now: int) -> None:
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"The checkpoint was written with num_workers={before}, the training DataLoader now has "
            f"num_workers={now}: the order of the data is exact, but random augmentation drawn in the workers "
            "cannot continue as in the uninterrupted run. Resume with the same num_workers for an exact resume.",
            UserWarning,
            stacklevel=5,
        )


class _Router:
    """Stands in for ``DataLoader._get_iterator``: a worker iterator that starts at ``first_worker``."""

    def __init__(self, loader: DataLoader[Any]) -> None:
        # A weak reference: the loader holds this object, and a cycle would keep persistent workers alive
        # until the garbage collector runs instead of until the loader is dropped.
        self.loader = weakref.ref(loader)
        self.first_worker = 0
        self.undo_seed_draw = False

    def __call__(self) -> Any:
        loader = self.loader()
        assert loader is not None  # called by the loader itself
        loader.check_worker_number_rationality()
        first, self.first_worker = self.first_worker, 0
        undo, self.undo_seed_draw = self.undo_seed_draw, False
        return _routed_iterator()(loader, first, undo)
