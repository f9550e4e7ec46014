"""Giving each rank its share of a DataLoader: the same loader, rebuilt around a ``DistributedSampler``."""

from __future__ import annotations

import inspect
import os
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from stepstone.errors import MisconfigurationException

__all__ = ["distributed_loader", "sequential_loader", "set_loader_epoch"]

# DataLoader arguments carried over as they are (when this torch has them); the sampler arguments are rebuilt.
_KEPT = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


def _loader_kwargs(loader: DataLoader[Any]) -> dict[str, Any]:
    accepted = inspect.signature(DataLoader.__init__).parameters
    kwargs = {name: getattr(loader, name) for name in _KEPT if name in accepted and hasattr(loader, name)}
    if loader.num_workers == 0:
        # Passing these with num_workers=0 is an error in DataLoader; they only matter with workers.
        kwargs.pop("prefetch_factor", None)
        kwargs["persistent_workers"] = False
    kwargs["batch_size"] = loader.batch_size
    return kwargs


def _check_sampler(loader: DataLoader[Any]) -> None:
    batch_sampler = loader.batch_sampler
    if loader.batch_size is None or type(batch_sampler) is not BatchSampler:
        raise MisconfigurationException(
            f"This DataLoader uses a custom batch_sampler ({type(batch_sampler).__name__}), which cannot be "
            "sharded across ranks automatically. Give it a DistributedSampler yourself (num_replicas=world_size, "
            "rank=global_rank) and pass Trainer(use_distributed_sampler=False)."
        )
    if not isinstance(loader.sampler, (SequentialSampler, RandomSampler)):
        raise MisconfigurationException(
            f"This DataLoader uses a custom sampler ({type(loader.sampler).__name__}), which cannot be sharded "
            "across ranks automatically. Shard it yourself (e.g. a DistributedSampler over your indices) and "
            "pass Trainer(use_distributed_sampler=False)."
        )


def distributed_loader(
    loader: Any,
    num_replicas: int,
    rank: int,
    shuffle: bool | None = None,
    seed: int | None = None,
) -> Any:
    """Rebuild ``loader`` so that this rank iterates only its share of the dataset.

    Every other DataLoader setting is kept (batch_size, num_workers, collate_fn, drop_last, pin_memory,
    worker_init_fn, generator, ...). Left unchanged: anything that is not a DataLoader, a loader over an
    IterableDataset (it shards itself), a loader that already has a DistributedSampler, or ``num_replicas == 1``.

    Args:
        loader: the user's loader.
        num_replicas: number of ranks.
        rank: this rank.
        shuffle: shuffle the dataset each epoch (default: only if the loader shuffled, i.e. had a RandomSampler).
        seed: the shuffling seed, identical on all ranks (default: ``PL_GLOBAL_SEED`` set by seed_everything,
            else 0, as in Lightning).

    Returns:
        The new loader (or ``loader`` itself, see above).

    Raises:
        MisconfigurationException: a custom sampler or batch sampler, or a DataLoader subclass that cannot be
            rebuilt from DataLoader's arguments.
    """
    if (
        not isinstance(loader, DataLoader)
        or num_replicas == 1
        or isinstance(loader.dataset, IterableDataset)
        or isinstance(loader.sampler, DistributedSampler)
    ):
        return loader
    _check_sampler(loader)
    if shuffle is None:
        shuffle = isinstance(loader.sampler, RandomSampler)
    if seed is None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed
    )
    return _rebuilt(loader, sampler)


def _rebuilt(loader: DataLoader[Any], sampler: Any) -> DataLoader[Any]:
    kwargs = _loader_kwargs(loader)
    try:
        return type(loader)(loader.dataset, sampler=sampler, shuffle=False, **kwargs)
    except TypeError as exc:
        raise MisconfigurationException(
            f"The dataloader class {type(loader).__name__} cannot be rebuilt with a {type(sampler).__name__} from "
            f"DataLoader's arguments ({exc}). Accept DataLoader's keyword arguments in its __init__, or give it "
            "the sampler yourself."
        ) from exc


def sequential_loader(loader: Any) -> Any:
    """``loader`` rebuilt to read its dataset in order (a ``SequentialSampler``), other settings kept.

    Args:
        loader: the user's loader.

    Returns:
        The rebuilt loader; ``loader`` itself when it is not a DataLoader, reads an IterableDataset, already
        reads in order, or batches with a custom ``batch_sampler`` (which decides the order itself).

    Raises:
        MisconfigurationException: a DataLoader subclass that cannot be rebuilt from DataLoader's arguments.
    """
    if (
        not isinstance(loader, DataLoader)
        or isinstance(loader.dataset, IterableDataset)
        or isinstance(loader.sampler, SequentialSampler)
        or loader.batch_size is None
        or type(loader.batch_sampler) is not BatchSampler
    ):
        return loader
    # A map-style dataset here; the ignore: torch's Dataset type does not declare __len__ (Sized).
    return _rebuilt(loader, SequentialSampler(loader.dataset))  # type: ignore[arg-type]


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Tell the loader's sampler(s) which epoch starts, so that shuffling differs per epoch but not per rank.

    Args:
        loader: any loader; samplers with ``set_epoch`` (DistributedSampler, user samplers) are told.
        epoch: the epoch number.
    """
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    seen: set[int] = set()
    for candidate in (sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
        if candidate is not None and id(candidate) not in seen and hasattr(candidate, "set_epoch"):
            seen.add(id(candidate))
            candidate.set_epoch(epoch)
