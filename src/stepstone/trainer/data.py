"""Finding the dataloaders (arguments, datamodule, module) and how many batches each loop runs."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Mapping, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader

from stepstone.core.datamodule import LightningDataModule
from stepstone.core.module import LightningModule
from stepstone.errors import MisconfigurationException
from stepstone.trainer.hooks import is_overridden

__all__ = ["find_loaders", "limited_batches", "loader_length"]

_OWNER_BASES: tuple[tuple[type, str], ...] = (
    (LightningDataModule, "datamodule"),
    (LightningModule, "module"),
)


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker's torch RNG from the loader's base seed; python and numpy are not seeded by torch,
    # so derive them from the worker's torch seed to make augmentations reproducible (seed_everything(workers=True)).
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def _as_list(kind: str, loaders: Any) -> list[Iterable[Any]]:
    if isinstance(loaders, Mapping):
        raise MisconfigurationException(
            f"The {kind} dataloaders were given as a dict; pass a single dataloader or a list of dataloaders."
        )
    if isinstance(loaders, (list, tuple)) and not isinstance(loaders, DataLoader):
        items = list(loaders)
    else:
        items = [loaders]
    for item in items:
        if not isinstance(item, Iterable):
            raise MisconfigurationException(
                f"The {kind} dataloader must be an iterable (e.g. a torch DataLoader), got {type(item).__name__}."
            )
    if os.environ.get("PL_SEED_WORKERS") == "1":
        for item in items:
            if isinstance(item, DataLoader) and item.num_workers > 0 and item.worker_init_fn is None:
                item.worker_init_fn = _worker_init
    return items


def find_loaders(
    kind: str, explicit: Any, datamodule: LightningDataModule | None, module: LightningModule
) -> list[Iterable[Any]] | None:
    """Return the dataloaders for ``kind`` (``train``, ``val``, ``test``, ``predict``) or None if there are none.

    Precedence as in Lightning: explicit arguments, else the datamodule of this call (its method only: a
    datamodule without ``val_dataloader`` means no validation, even if the module defines one), else the module.

    Raises:
        MisconfigurationException: a loader is not iterable, or several training loaders were given.
    """
    loaders = explicit
    method = f"{kind}_dataloader"
    owner: LightningDataModule | LightningModule = datamodule if datamodule is not None else module
    if loaders is None and is_overridden(method, owner, _base_of(owner)):
        loaders = getattr(owner, method)()
    if loaders is None:
        return None
    items = _as_list(kind, loaders)
    if kind == "train" and len(items) != 1:
        raise MisconfigurationException(
            f"fit() received {len(items)} training dataloaders; pass exactly one (combine datasets with "
            "torch.utils.data.ConcatDataset)."
        )
    return items


def check_hook_not_none(
    kind: str, fn: str, argument: str, datamodule: LightningDataModule | None, module: LightningModule
) -> None:
    """Raise Lightning's TypeError when the data source's ``<kind>_dataloader`` was set to None and is needed.

    Raises:
        TypeError: the hook is None (only validation inside fit is simply switched off that way).
    """
    owner: object = datamodule if datamodule is not None else module
    method = f"{kind}_dataloader"
    if method in getattr(owner, "__dict__", {}) and getattr(owner, method) is None:
        raise TypeError(
            f"An invalid dataloader was passed to trainer.{fn}({argument}=...): found None, because "
            f"{type(owner).__name__}.{method} is set to None. Either pass the dataloader to trainer.{fn}() or "
            f"define {method}(self) in your LightningModule/LightningDataModule."
        )


def _base_of(owner: object) -> type:
    for base, _ in _OWNER_BASES:
        if isinstance(owner, base):
            return base
    return object


def loader_length(loader: Iterable[Any]) -> int | float:
    """Number of batches of ``loader``, or ``inf`` when it has no length (an IterableDataset, a generator)."""
    if not isinstance(loader, Sized):
        return math.inf
    try:
        return len(loader)
    except (TypeError, NotImplementedError):
        return math.inf


def limited_batches(name: str, length: int | float, limit: int | float) -> int | float:
    """Apply a ``limit_*_batches`` value to a loader of ``length`` batches.

    Args:
        name: the Trainer argument (for errors), e.g. ``"limit_train_batches"``.
        length: the loader's batch count (``inf`` if unknown).
        limit: an int (at most that many batches) or a fraction.

    Returns:
        The number of batches to run (``inf`` for an unsized loader run to exhaustion).

    Raises:
        MisconfigurationException: a fraction of an unsized loader, or a fraction that rounds to zero batches.
    """
    if length == 0:
        return 0  # an empty loader: nothing to limit (Lightning's rule too)
    if isinstance(limit, int):
        return min(length, limit)
    if limit == 1.0:
        return length
    if limit == 0.0:
        return 0
    if math.isinf(length):
        raise MisconfigurationException(
            f"Trainer({name}={limit}) is a fraction, but the dataloader has no length (an IterableDataset?); "
            f"pass an int number of batches, e.g. {name}=100, or 1.0."
        )
    batches = int(length * limit)
    if batches == 0:
        minimum = math.ceil(1 / length * 100) / 100
        raise MisconfigurationException(
            f"Trainer({name}={limit}) selects {limit} * {int(length)} < 1 batch; increase it to at least "
            f"{name}={minimum}, or pass an int."
        )
    return batches
