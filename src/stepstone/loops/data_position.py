"""Resumable data position: reopen a training dataloader at batch k of an epoch without loading batches 0..k-1.

For a torch ``DataLoader`` over a map-style dataset the order of an epoch is decided when its index sampler
(``RandomSampler``, ``SequentialSampler``, ``BatchSampler``, ``DistributedSampler`` or a custom one) starts
iterating: from the global generators (a ``RandomSampler`` without a generator draws its seed from torch's) and
from the loader's/sampler's own ``torch.Generator``. So at every epoch start this module records the state of
all of them at two moments: when the iterator is created (it draws the workers' ``base_seed``) and when the
index sampler starts. A resumed run puts them back at those moments, lets the sampler skip the first k batches
of *indices* (nothing is fetched, also with ``num_workers > 0``), then restores the generators as they were
when the checkpoint was written.

Loaders that keep their own position (torchdata's ``StatefulDataLoader``, or anything with
``state_dict``/``load_state_dict``) are resumed through those methods. Other iterables (an ``IterableDataset``,
a list, a generator) are replayed: the skipped batches are read and dropped, with the same generator states,
because nothing else can know where their k-th batch is.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import TypeIs

from stepstone.checkpoint.private_apis import index_sampler, persistent_iterator, set_index_sampler
from stepstone.loops.worker_rng import Stateful, WorkerRng, is_captured
from stepstone.trainer.rng import capture_rng, restore_rng

__all__ = ["DataPosition", "is_stateful_loader"]

_END = object()


def is_stateful_loader(loader: object) -> TypeIs[Stateful]:
    """Whether ``loader`` saves its own position (duck-typed ``state_dict``/``load_state_dict``).

    Args:
        loader: the training dataloader.

    Returns:
        True for e.g. ``torchdata.stateful_dataloader.StatefulDataLoader``.
    """
    return callable(getattr(loader, "state_dict", None)) and callable(
        getattr(loader, "load_state_dict", None)
    )


def _generators(loader: object) -> dict[str, torch.Generator]:
    """The ``torch.Generator`` objects that decide the loader's order, by attribute path."""
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for name, owner in (
        ("loader", loader),
        ("sampler", sampler),
        ("batch_sampler", batch_sampler),
        ("batch_sampler.sampler", getattr(batch_sampler, "sampler", None)),
    ):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and id(generator) not in seen:
            seen.add(id(generator))
            found[name] = generator
    return found


def _capture(loader: object) -> dict[str, Any]:
    return {
        "rng": capture_rng(),
        "generators": {name: g.get_state() for name, g in _generators(loader).items()},
    }


def _restore(loader: object, state: dict[str, Any]) -> None:
    restore_rng(state["rng"])
    generators = _generators(loader)
    for name, saved in state.get("generators", {}).items():
        if name in generators:
            generators[name].set_state(saved)


class _IndexSkipper:
    """Stands in for a DataLoader's index sampler for one epoch: records or restores the generators when the
    sampler starts, and skips its first ``skip`` items (indices only: no data is fetched for them)."""

    def __init__(
        self, position: DataPosition, loader: DataLoader[Any], inner: Iterable[Any], skip: int
    ) -> None:
        self.position, self.loader, self.inner, self.skip = position, loader, inner, skip

    def __len__(self) -> int:
        if not isinstance(self.inner, Sized):  # as len() itself would fail
            raise TypeError(f"object of type '{type(self.inner).__name__}' has no len()")
        return max(len(self.inner) - self.skip, 0)

    def __iter__(self) -> Iterator[Any]:
        self.position.at_sampler_start(self.loader)
        iterator = iter(self.inner)
        for _ in range(self.skip):
            if next(iterator, _END) is _END:
                break
        self.position.after_skip()
        yield from iterator


class DataPosition:
    """Where the current training epoch's data comes from, and how to reopen it at a given batch.

    ``epoch_state`` (recorded at each epoch start) goes into checkpoints; a resumed run hands it back with
    :meth:`resume_from` before the first epoch.
    """

    def __init__(self) -> None:
        self.epoch_state: dict[str, Any] = {}
        self._carried_loader_state: Any = None
        self._resume: dict[str, Any] | None = None
        self._save_time_rng: dict[str, Any] | None = None
        self._warned_replay = False
        # The training loader's worker processes' generators (random augmentation in the workers).
        self.workers = WorkerRng()

    def carry(
        self, epoch_state: dict[str, Any] | None, workers: dict[str, Any] | None, loader_state: Any
    ) -> None:
        """Take a checkpoint's data state: until the loader is reopened, checkpoints report it as it was.

        A run resumed from a checkpoint written after the last batch of an epoch may write checkpoints before
        (or without) opening the loader again; they must describe the same data position as the uninterrupted
        run's.

        Args:
            epoch_state: the checkpoint's ``epoch_state`` (None: none was saved).
            workers: the worker processes' generators (:meth:`WorkerRng.state_dict`), or None.
            loader_state: a stateful loader's saved ``state_dict()``, or None.
        """
        self.epoch_state = dict(epoch_state or {})
        self.workers.load_state_dict(workers)
        self._carried_loader_state = loader_state

    def loader_state(self, loader: object) -> Any:
        """What a checkpoint saves for a stateful ``loader``: its ``state_dict()``, or the carried one while
        the loader has not been reopened since the resume; None for other loaders.

        Args:
            loader: the training dataloader.

        Returns:
            The state to checkpoint.
        """
        if not is_stateful_loader(loader):
            return None
        if self._carried_loader_state is not None:
            return self._carried_loader_state
        return loader.state_dict()

    def resume_from(self, epoch_state: dict[str, Any], save_time_rng: dict[str, Any] | None) -> None:
        """Arrange for the next :meth:`open` to recreate the saved epoch's order.

        Args:
            epoch_state: the ``epoch_state`` of the run that wrote the checkpoint.
            save_time_rng: the generator states training continues with once the skipped batches are passed
                (those of the checkpoint, moved on by whatever the resumed run did before reopening the data).
        """
        self._resume = epoch_state
        self._save_time_rng = save_time_rng

    def at_sampler_start(self, loader: object) -> None:
        """Called when the index sampler starts: record (new epoch) or restore (resumed epoch) the generators."""
        saved = (self._resume or {}).get("at_sampler")
        if saved is not None:
            _restore(loader, saved)
        self.epoch_state["at_sampler"] = _capture(loader)

    def after_skip(self) -> None:
        """Called once the skipped batches are passed: continue with the generators given to :meth:`resume_from`."""
        if self._save_time_rng is not None:
            restore_rng(self._save_time_rng)
        self._resume = self._save_time_rng = None

    def open(
        self, loader: Iterable[Any], skip: int, loader_state: Any = None, lookahead: bool = False
    ) -> Iterator[Any]:
        """An iterator over ``loader`` that starts at batch ``skip`` of the epoch.

        Args:
            loader: the training dataloader.
            skip: batches of this epoch already trained on (0 for a fresh epoch).
            loader_state: a stateful loader's saved ``state_dict()`` (it resumes itself).
            lookahead: the caller fetches each batch before training the previous one (an unsized loader):
                a batch counts as consumed when the next one is fetched.

        Returns:
            The iterator; its first item is batch ``skip``.
        """
        self._carried_loader_state = None
        resume = self._resume
        if resume is not None and "at_iter" in resume:
            _restore(loader, resume["at_iter"])
        self.epoch_state = {"at_iter": _capture(loader)}
        self.workers.lookahead = lookahead
        if is_stateful_loader(loader):
            if loader_state is not None:
                loader.load_state_dict(loader_state)
            iterator = iter(loader)
            self.after_skip()
            return iterator
        if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
            if is_captured(loader):
                return self.workers.iterate(loader, skip, lambda: self._open_with_skipper(loader, skip))
            return self._open_with_skipper(loader, skip)
        if is_captured(loader):
            assert isinstance(loader, DataLoader)  # is_captured holds for DataLoaders only
            if skip == 0 or self.workers.can_resume(loader):
                # An IterableDataset whose workers' copies load their saved positions: nothing to replay.
                return self.workers.iterate(loader, skip, lambda: self._replay(loader, 0))
            self.workers.load_state_dict(None)  # no usable positions: replay from the epoch's start
            return self.workers.iterate(loader, 0, lambda: self._replay(loader, skip))
        return self._replay(loader, skip)

    def _open_with_skipper(self, loader: DataLoader[Any], skip: int) -> Iterator[Any]:
        # DataLoader forbids reassigning its samplers after construction (for good reasons: length and workers
        # depend on them); the skipper is put in place only while the iterator is created, so that its
        # iterator holds it, and taken out again. A persistent-workers iterator keeps its own reference.
        attribute = "batch_sampler" if loader.batch_sampler is not None else "sampler"
        inner = getattr(loader, attribute)
        skipper = _IndexSkipper(self, loader, inner, skip)
        persistent = persistent_iterator(loader)
        object.__setattr__(loader, attribute, skipper)
        if persistent is not None:
            set_index_sampler(persistent, skipper)
        try:
            iterator = iter(loader)
        finally:
            object.__setattr__(loader, attribute, inner)
            current = persistent_iterator(loader)
            if current is not None and index_sampler(current) is skipper:
                set_index_sampler(current, inner)
        return iterator

    def _replay(self, loader: Iterable[Any], skip: int) -> Iterator[Any]:
        if skip and not self._warned_replay:
            self._warned_replay = True
            warnings.warn(
                f"Resuming mid-epoch on a {type(loader).__name__} that has no sampler to fast-forward: its first "
                f"{skip} batches of this epoch are read again and dropped. To skip them without loading, give the "
                "IterableDataset state_dict()/load_state_dict() methods (with DataLoader workers, each worker's "
                "copy is saved and restored), use a map-style Dataset, or a loader with "
                "state_dict()/load_state_dict() (e.g. torchdata's StatefulDataLoader).",
                UserWarning,
                stacklevel=4,
            )
        self.at_sampler_start(loader)
        iterator = iter(loader)
        for _ in range(skip):
            if next(iterator, _END) is _END:
                break
        self.after_skip()
        return iterator
