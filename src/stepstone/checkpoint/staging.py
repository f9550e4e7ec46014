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
  staged (correct, just not reused, and not counted in the budget below);
- **a memory budget** (``max_staging_bytes``): the storages torch.save writes last are staged, up to the
  budget; the ones it writes first stay *live* in the snapshot (views of the training tensors, no copy).
  The caller must not let training change them before the writer read them: ``live_gate()`` tells when
  (``live.py``). So extra host memory stays within the budget, and the training loop stalls while the
  over-budget part is written to the file instead of only while it is copied. Budget 0: nothing is staged,
  the save is as synchronous as a plain one (the commit still ends in the background). A live CUDA tensor
  is written as a synchronous save writes it (torch copies one storage at a time to the host; stored with
  its CUDA location), and the caller then waits for the whole data part of the file.

The caller must not take a new snapshot while the previous one is still being written: the buffers are
overwritten. The async writer guarantees this (one save in flight; ``reserve`` waits for it first).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections import Counter, OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from stepstone.checkpoint.live import LiveGate
from stepstone.errors import MisconfigurationException

__all__ = ["HostStaging"]

#: Threads that copy a snapshot's large CPU storages (memory bandwidth saturates around 4).
_COPY_THREADS = max(1, min(4, os.cpu_count() or 1))
#: Storages from this size on are copied in pieces by those threads.
_SPLIT_MIN = 16 * 1024 * 1024


@contextlib.contextmanager
def _copy_pool() -> Iterator[ThreadPoolExecutor | None]:
    # Per snapshot, so no thread outlives it (a snapshot takes tens of ms; starting 2-4 threads, ~0.1 ms).
    if _COPY_THREADS == 1:
        yield None
        return
    with ThreadPoolExecutor(_COPY_THREADS, thread_name_prefix="stepstone-snapshot") as pool:
        yield pool


_Key = tuple[Any, ...]
_Identity = tuple[int, int, str]


def _plain_strided(tensor: torch.Tensor) -> bool:
    return (
        tensor.layout == torch.strided
        and not tensor.is_quantized
        and not getattr(tensor, "is_nested", False)
        and tensor.device.type != "meta"
        and type(tensor) in (torch.Tensor, torch.nn.Parameter)
    )


def _tensors(item: Any, path: _Key) -> Iterator[tuple[torch.Tensor, _Key]]:
    """The tensors of a state with their positions, in the order ``_copy`` (and pickle) meets them."""
    if isinstance(item, torch.Tensor):
        yield item, path
    elif isinstance(item, (dict, OrderedDict, Counter)):
        for key, value in item.items():
            yield from _tensors(value, (*path, key))
    elif isinstance(item, (list, tuple, set)) and not isinstance(item, torch.Size):
        for index, value in enumerate(item):
            yield from _tensors(value, (*path, index))


def _identity(tensor: torch.Tensor) -> _Identity:
    storage = tensor.untyped_storage()
    return (storage.data_ptr(), storage.nbytes(), str(tensor.device))


class HostStaging:
    """Reusable host buffers and the snapshots taken into them.

    Args:
        pin_memory: pin the buffers of CUDA tensors (None: when CUDA is available).
        max_staging_bytes: most bytes of host buffers (None: no limit, one full copy of the state); the
            storages that do not fit stay live and must be written before training goes on (``live_gate``).

    Raises:
        MisconfigurationException: if ``max_staging_bytes`` is not None or an int >= 0.
    """

    def __init__(self, pin_memory: bool | None = None, max_staging_bytes: int | None = None) -> None:
        self._pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self._budget: int | None = None
        self.max_staging_bytes = max_staging_bytes
        self._buffers: dict[_Key, torch.Tensor] = {}
        self._used: set[_Key] = set()
        self._copies: dict[_Identity, torch.Tensor] = {}
        self._plan: dict[_Identity, _Key | None] = {}  # staged: its buffer key; live: None
        self._live: list[tuple[int, int]] = []
        self._live_opaque = False
        self._held = 0
        self._cuda_copies = False
        self._pool: ThreadPoolExecutor | None = None  # during a snapshot: the threads copying large storages
        self._pieces: list[Future[Any]] = []
        #: How many buffers were allocated over the object's life (a steady state allocates none).
        self.allocations = 0
        #: The most bytes the buffers ever held at once.
        self.peak_nbytes = 0

    @property
    def max_staging_bytes(self) -> int | None:
        """The budget of host buffers in bytes (None: no limit); settable between snapshots."""
        return self._budget

    @max_staging_bytes.setter
    def max_staging_bytes(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise MisconfigurationException(
                f"max_staging_bytes must be an int >= 0 (bytes) or None (no limit), got {value!r}"
            )
        self._budget = value

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
        self._held = 0

    @property
    def live_bytes(self) -> int:
        """Bytes of the storages the last snapshot left live (over the budget)."""
        return sum(size for _, size in self._live)

    def live_gate(self) -> LiveGate:
        """A gate for the last snapshot: open at once if everything was staged.

        Returns:
            A new ``LiveGate`` over the storages the last snapshot left live.
        """
        return LiveGate(list(self._live), opaque=self._live_opaque)

    def _make_plan(self, state: Any) -> None:
        """Decide which storages are staged: the last ones torch.save writes, up to the budget."""
        sizes: dict[_Identity, tuple[_Key, int]] = {}
        for tensor, path in _tensors(state, ()):
            if _plain_strided(tensor) and (identity := _identity(tensor)) not in sizes:
                sizes[identity] = ((*path, identity[1]), identity[1])
        # torch.save writes storages in the order its pickler first meets them, which is this walk's order:
        # leaving the first ones live lets the training thread go as soon as they are written.
        budget = self.max_staging_bytes
        room = float("inf") if budget is None else budget
        self._plan, stopped = {}, False
        for identity, (key, size) in reversed(sizes.items()):
            # A suffix only: staging a storage written before a live one would not shorten the stall.
            fits = size == 0 or (not stopped and size <= room)
            stopped |= not fits
            self._plan[identity] = key if fits else None
            room -= size if fits else 0
        staged = {key for key in self._plan.values() if key is not None}
        # Free what this snapshot will not reuse *before* copying, so old and new never add up.
        for key in [key for key in self._buffers if key not in staged]:
            self._drop(key)

    def _drop(self, key: _Key) -> None:
        self._held -= self._buffers.pop(key).nbytes

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
        self._live, self._live_opaque = [], False
        self._cuda_copies = False
        try:
            self._make_plan(state)
            with _copy_pool() as self._pool:
                staged = self._copy(state, ())
                for piece in self._pieces:
                    piece.result()  # every host copy has landed (and a failed one raises here)
            if self._cuda_copies:
                torch.cuda.synchronize()  # the non_blocking copies must have landed before anyone reads
        finally:
            self._copies = {}
            self._plan = {}
            self._pool, self._pieces = None, []
        # Buffers for positions the state no longer has would only waste memory.
        for key in [key for key in self._buffers if key not in self._used]:
            self._drop(key)
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
        identity = _identity(tensor)
        known = self._copies.get(identity)
        if identity in self._plan and self._plan[identity] is None:
            staged = self._live_storage(storage, tensor.device, identity)
        elif known is None or storage.nbytes() == 0:
            staged = self._copies[identity] = self._stage_storage(storage, tensor.device, path)
        else:
            staged = known
        view = torch.empty(0, dtype=tensor.dtype, device=staged.device).set_(
            staged.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride()
        )
        if isinstance(tensor, torch.nn.Parameter):
            return torch.nn.Parameter(view, requires_grad=tensor.requires_grad)
        return view

    def _live_storage(
        self, storage: torch.UntypedStorage, device: torch.device, identity: _Identity
    ) -> torch.Tensor:
        """A view of the live storage itself (new tensor metadata, shared bytes), recorded for the gate."""
        if identity not in self._copies:
            self._copies[identity] = torch.empty(0, dtype=torch.uint8, device=device).set_(storage)
            if device.type == "cpu":
                self._live.append((storage.data_ptr(), storage.nbytes()))
            else:
                self._live_opaque = True  # torch copies it to the host first: not recognizable by address
        return self._copies[identity]

    def _stage_storage(self, storage: torch.UntypedStorage, device: torch.device, path: _Key) -> torch.Tensor:
        key = (*path, storage.nbytes())
        self._used.add(key)
        buffer = self._buffers.get(key)
        if buffer is None:
            pin = self._pin and device.type == "cuda"
            buffer = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pin)
            self._buffers[key] = buffer
            self.allocations += 1
            self._held += buffer.nbytes
            self.peak_nbytes = max(self.peak_nbytes, self._held)
        source = torch.empty(0, dtype=torch.uint8, device=device).set_(storage)
        non_blocking = device.type == "cuda" and buffer.is_pinned()
        if self._pool is not None and device.type == "cpu" and buffer.numel() >= _SPLIT_MIN:
            # The training loop waits for this copy: all cores copy (copy_ releases the GIL).
            step = max(_SPLIT_MIN // 2, -(-buffer.numel() // _COPY_THREADS))
            for start in range(0, buffer.numel(), step):
                piece = slice(start, start + step)
                self._pieces.append(self._pool.submit(buffer[piece].copy_, source[piece]))
            return buffer
        buffer.copy_(source, non_blocking=non_blocking)
        self._cuda_copies |= non_blocking
        return buffer
