"""Moving batches (nested containers of tensors) to a device."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["move_to_device"]


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Return ``batch`` with every tensor moved to ``device``.

    Lists, tuples, namedtuples, dicts and dataclass instances are rebuilt with their tensors moved; any other
    object is returned as is. Objects with a ``.to(device)`` method that are not tensors are left alone (their
    meaning of ``to`` is unknown).

    Args:
        batch: the batch.
        device: the target device.

    Returns:
        The batch on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        items = {k: move_to_device(v, device) for k, v in batch.items()}
        if isinstance(batch, defaultdict):
            return type(batch)(batch.default_factory, items)
        try:
            return type(batch)(items)  # type: ignore[call-arg]  # abstract Mapping() takes none; see except
        except TypeError:  # a mapping type that cannot be built from a dict (e.g. MappingProxyType)
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {
            f.name: move_to_device(getattr(batch, f.name), device)
            for f in dataclasses.fields(batch)
            if f.init
        }
        return dataclasses.replace(batch, **changes)
    return batch
