"""Snapshot of a checkpoint state into reusable host buffers, for asynchronous saves.

An asynchronous save must write the state *as it was when the save was requested*, while training goes on
and changes the parameters in place. ``HostStaging.snapshot(state)`` returns a copy of ``state`` whose
containers are new and whose tensors live in host (CPU) buffers owned by the staging object:

- **one copy, reused**: buffers are allocated on the first snapshot and reused by the next ones (keyed by
  the position of the tensor in the state), so steady-state snapshots allocate nothing and never fault in
  fresh pages -- the copy runs at memory bandwidth. Extra host memory is one copy of the state's tensor
  bytes, whatever the number of saves;
- **storages, not tensors**: each distinct storage is copied once and the tensors are rebuilt as views of
  the copy (same offset, shape and strides), so tied weights and views stay shared exactly as
  ``torch.save`` would have written them;
- **pinned on CUDA**: buffers for CUDA tensors are pinned, copied with ``non_blocking=True``, and the
  device is synchronized once at the end of the snapshot;
- anything that is not a plain strided tensor (sparse, quantized, nested) is cloned to the CPU instead of
  staged (correct, just not reused).

The caller must not take a new snapshot while the previous one is still being written: the buffers are
overwritten. The async writer guarantees this (one save in flight; ``reserve`` waits for it first).
"""

from __future__ import annotations

import copy
from collections import Counter, OrderedDict
from typing import Any

import torch

__all__ = ["HostStaging"]

_Key = tuple[Any, ...]


def _plain_strided(tensor: torch.Tensor) -> bool:
    return (
        tensor.layout == torch.strided
        and not tensor.is_quantized
        and not getattr(tensor, "is_nested", False)
        and tensor.device.type != "meta"
        and type(tensor) in (torch.Tensor, torch.nn.Parameter)
    )


class HostStaging:
    """Reusable host buffers and the snapshots taken into them.

    Args:
        pin_memory: pin the buffers of CUDA tensors (None: when CUDA is available).
    """

    def __init__(self, pin_memory: bool | None = None) -> None:
        self._pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self._buffers: dict[_Key, torch.Tensor] = {}
        self._used: set[_Key] = set()
        self._copies: dict[tuple[int, int, str], torch.Tensor] = {}
        self._cuda_copies = False
        #: How many buffers were allocated over the object's life (a steady state allocates none).
        self.allocations = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the staging buffers."""
        return sum(buffer.nbytes for buffer in self._buffers.values())

    def buffers(self) -> dict[_Key, torch.Tensor]:
        """The buffers by position in the state (for inspection and tests).

        Returns:
            A new dict: position -> uint8 buffer.
        """
        return dict(self._buffers)

    def release(self) -> None:
        """Free every buffer (the next snapshot allocates again)."""
        self._buffers.clear()

    def snapshot(self, state: Any) -> Any:
        """Copy ``state`` into the host buffers.

        Args:
            state: a checkpoint (nested dicts, lists, tuples, sets of tensors and plain values).

        Returns:
            A structure equal to ``state`` sharing no mutable container or tensor memory with it.

        Raises:
            RuntimeError: if copying a tensor fails (e.g. host memory exhausted); the buffers are then
                left in an unspecified content, which the next snapshot overwrites.
        """
        self._used = set()
        self._copies = {}
        self._cuda_copies = False
        try:
            staged = self._copy(state, ())
            if self._cuda_copies:
                torch.cuda.synchronize()  # the non_blocking copies must have landed before anyone reads
        finally:
            self._copies = {}
        # Buffers for positions the state no longer has would only waste memory.
        for key in [key for key in self._buffers if key not in self._used]:
            del self._buffers[key]
        return staged

    def _copy(self, item: Any, path: _Key) -> Any:
        if isinstance(item, torch.Tensor):
            return self._tensor(item, path)
        if isinstance(item, (dict, OrderedDict, Counter)):
            copied = type(item)((key, self._copy(value, (*path, key))) for key, value in item.items())
            extra = getattr(item, "__dict__", None)
            if extra:  # e.g. the ``_metadata`` of a module's state_dict, pickled with it
                copied.__dict__.update(copy.deepcopy(extra))
            return copied
        if isinstance(item, (list, tuple, set)) and not isinstance(item, torch.Size):
            values = [self._copy(value, (*path, index)) for index, value in enumerate(item)]
            return type(item)(values)
        if isinstance(item, bytearray):
            return bytearray(item)
        return item  # immutable atoms (numbers, strings, dtypes, devices, torch.Size)

    def _tensor(self, tensor: torch.Tensor, path: _Key) -> torch.Tensor:
        if not _plain_strided(tensor):
            return tensor.detach().to("cpu", copy=True)
        storage = tensor.untyped_storage()
        identity = (storage.data_ptr(), storage.nbytes(), str(tensor.device))
        staged = self._copies.get(identity)
        if staged is None or storage.nbytes() == 0:
            staged = self._stage_storage(storage, tensor.device, path)
            self._copies[identity] = staged
        view = torch.empty(0, dtype=tensor.dtype).set_(
            staged.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride()
        )
        if isinstance(tensor, torch.nn.Parameter):
            return torch.nn.Parameter(view, requires_grad=tensor.requires_grad)
        return view

    def _stage_storage(self, storage: torch.UntypedStorage, device: torch.device, path: _Key) -> torch.Tensor:
        key = (*path, storage.nbytes())
        self._used.add(key)
        buffer = self._buffers.get(key)
        if buffer is None:
            pin = self._pin and device.type == "cuda"
            buffer = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pin)
            self._buffers[key] = buffer
            self.allocations += 1
        source = torch.empty(0, dtype=torch.uint8, device=device).set_(storage)
        non_blocking = device.type == "cuda" and buffer.is_pinned()
        buffer.copy_(source, non_blocking=non_blocking)
        self._cuda_copies |= non_blocking
        return buffer
