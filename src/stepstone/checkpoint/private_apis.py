"""The one place stepstone touches private names of torch and fsspec, each probed and explained.

stepstone relies on a handful of names that torch and fsspec do not promise to keep:

- ``torch.serialization._save``, ``_get_storage_alignment`` and ``_serialization_tls`` -- the fast writer
  (``torch_zip``) lets torch pickle the state and writes the zip archive itself. Missing or changed, the
  fast writer is simply not used: :func:`serialization_supported` says False and every save goes through the
  public ``torch.save`` (the reference path, also selected with ``STEPSTONE_SERIALIZER=reference``).
- ``Tensor._use_count`` -- a collective's tensors are kept alive until gloo's worker threads let go of them.
- ``DataLoader._iterator`` and its iterator's ``_index_sampler`` -- a mid-epoch resume with persistent
  workers puts the batch skipper into the workers' iterator.
- fsspec's ``AbstractFileSystem._intrans`` -- a remote save inside the caller's own transaction.
- torch's ``_MultiProcessingDataLoaderIter`` (its ``_reset``, ``_try_put_index`` and
  ``_worker_queue_idx_cycle``), ``DataLoader._get_iterator`` and ``torch.utils.data._utils.pin_memory`` -- a
  resume with DataLoader workers sends the first remaining batch to the worker that produced it in the
  uninterrupted run (``loops/worker_rng``).

(Outside the engine, ``loops/rng_memory`` reads python's and numpy's generator states from their objects'
memory for the per-batch worker capture: located on probe generators, confirmed against
``getstate()``/``get_state()``, and replaced by those public getters whenever anything is unexpected.)

- the entries of a torch.distributed.checkpoint ``Metadata.storage_data`` (instances of torch's private
  ``filesystem._StorageInfo``: the file, offset and length of each stored item) -- the sharded loader
  (``sharded_reader``) reads and verifies each shard file in one pass. If they change shape (or use stream
  transforms), :func:`storage_locations` says None and the load takes the two-pass path (verify every file,
  then torch's own reader).

The last four of the first list have no public equivalent: if one disappears, :class:`PrivateApiChanged` says which name,
the installed version and the fix (pin the versions stepstone was tested with, or report it). This module
lives in the engine because the engine imports nothing outside itself, while the rest of stepstone may
import the engine.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.serialization

if TYPE_CHECKING:
    from torch.utils.data.dataloader import _BaseDataLoaderIter

__all__ = [
    "PrivateApiChanged",
    "StorageLocation",
    "fsspec_in_transaction",
    "index_sampler",
    "persistent_iterator",
    "pin_batch",
    "save_into",
    "serialization_supported",
    "set_index_sampler",
    "skip_data_active",
    "storage_alignment",
    "storage_locations",
    "tensor_use_count",
    "turn_worker_cycle",
    "worker_iterator_base",
]

_SERIALIZATION_NAMES = ("_save", "_get_storage_alignment", "_serialization_tls")
# Looked up through this name (not ``torch.serialization`` directly) so that a test can stand in a torch
# without them: torch.save itself needs the real ones.
_torch_serialization: Any = torch.serialization
#: The versions this module was checked against (named in the error message).
TESTED_WITH = "torch 2.13, fsspec 2026.9"


class PrivateApiChanged(RuntimeError):
    """A private torch/fsspec name stepstone relies on is gone or changed in the installed version.

    Args:
        name: the private name (e.g. ``"torch.Tensor._use_count"``).
        package: the distribution that owns it (``"torch"`` or ``"fsspec"``).
    """

    def __init__(self, name: str, package: str) -> None:
        try:
            version = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            version = "unknown"
        super().__init__(
            f"stepstone relies on {name}, which {package} {version} no longer provides as before. Install the "
            f"version stepstone's tests ran on ({TESTED_WITH}), e.g. pip install '{package}<{version}', or "
            "report this to stepstone with the versions above."
        )
        self.name = name


# --- torch.serialization (the fast writer; missing names mean: use torch.save) --------------------------
def serialization_supported() -> bool:
    """Whether torch still has the private serialization names the fast writer calls.

    Returns:
        True if ``torch.serialization._save``, ``_get_storage_alignment`` and ``_serialization_tls`` exist;
        False means every save goes through the public ``torch.save`` (never an error).
    """
    return all(hasattr(_torch_serialization, name) for name in _SERIALIZATION_NAMES) and callable(
        getattr(_torch_serialization, "_save", None)
    )


def skip_data_active() -> bool:
    """Whether ``torch.serialization.skip_data`` is active in this thread (False if torch cannot tell).

    Returns:
        True inside ``with torch.serialization.skip_data():``.
    """
    return bool(getattr(getattr(_torch_serialization, "_serialization_tls", None), "skip_data", False))


def storage_alignment() -> int:
    """The alignment torch gives storage records in the zip archive.

    Returns:
        The alignment in bytes.

    Raises:
        AttributeError: torch no longer has the private name (callers check ``serialization_supported``).
    """
    alignment: int = _torch_serialization._get_storage_alignment()
    return alignment


def save_into(state: object, writer: object) -> None:
    """Let torch pickle ``state`` into ``writer``, an object with ``PyTorchFileWriter``'s methods.

    Args:
        state: the object to save.
        writer: receives ``write_record`` calls, as torch's own zip writer does.

    Raises:
        Exception: whatever pickling raises (as ``torch.save`` would), or an ``AttributeError`` when torch no
            longer has the private name (callers check ``serialization_supported``).
    """
    _torch_serialization._save(state, writer, pickle, torch.serialization.DEFAULT_PROTOCOL, False)


# --- torch.distributed.checkpoint's storage entries (changed: the sharded load takes two passes) -----------
class StorageLocation(NamedTuple):
    """Where one stored item of a torch.distributed.checkpoint directory lies."""

    #: The file, relative to the checkpoint directory.
    relative_path: str
    #: The item's first byte in that file.
    offset: int
    #: Its length in bytes.
    length: int


def storage_locations(storage_data: object) -> dict[Any, StorageLocation] | None:
    """The file, offset and length of every stored item, from a checkpoint's ``Metadata.storage_data``.

    Args:
        storage_data: the metadata's ``storage_data``: ``{MetadataIndex: filesystem._StorageInfo}``.

    Returns:
        ``{MetadataIndex: StorageLocation}``; None when an entry is not what this version of torch writes
        (a renamed field) or its bytes pass through stream transforms: the caller then reads with torch's own
        ``FileSystemReader`` after a separate verification pass.
    """
    if not isinstance(storage_data, Mapping):
        return None
    locations: dict[Any, StorageLocation] = {}
    for index, info in storage_data.items():
        path = getattr(info, "relative_path", None)
        offset = getattr(info, "offset", None)
        length = getattr(info, "length", None)
        if not (isinstance(path, str) and isinstance(offset, int) and isinstance(length, int)):
            return None
        if getattr(info, "transform_descriptors", None):
            return None
        locations[index] = StorageLocation(path, offset, length)
    return locations


# --- names without a public equivalent (a change is an error that names the fix) ------------------------
def tensor_use_count(tensor: torch.Tensor) -> int:
    """How many references the C++ side holds to ``tensor``'s implementation.

    Args:
        tensor: any tensor.

    Returns:
        The use count (1: only this Python object).

    Raises:
        PrivateApiChanged: torch no longer has ``Tensor._use_count``.
    """
    count = getattr(tensor, "_use_count", None)
    if not callable(count):
        raise PrivateApiChanged("torch.Tensor._use_count", "torch")
    return int(count())


def persistent_iterator(loader: torch.utils.data.DataLoader[Any]) -> _BaseDataLoaderIter | None:
    """The iterator a ``DataLoader`` with persistent workers keeps between epochs (None until created).

    Args:
        loader: the data loader.

    Returns:
        Its kept iterator, or None (none yet, or no persistent workers).

    Raises:
        PrivateApiChanged: torch no longer keeps it as ``DataLoader._iterator``.
    """
    if not (loader.persistent_workers and loader.num_workers > 0):
        return None
    if not hasattr(loader, "_iterator"):
        raise PrivateApiChanged("torch.utils.data.DataLoader._iterator", "torch")
    return loader._iterator


def index_sampler(iterator: _BaseDataLoaderIter) -> Any:
    """The sampler a data loader iterator draws its indices from at each epoch's reset.

    Args:
        iterator: a ``DataLoader`` iterator.

    Returns:
        Its index sampler.

    Raises:
        PrivateApiChanged: torch's iterator no longer has ``_index_sampler``.
    """
    if not hasattr(iterator, "_index_sampler"):
        raise PrivateApiChanged("torch.utils.data.dataloader._BaseDataLoaderIter._index_sampler", "torch")
    return iterator._index_sampler


def set_index_sampler(iterator: _BaseDataLoaderIter, sampler: object) -> None:
    """Make a data loader iterator draw its indices from ``sampler`` from its next reset on.

    Args:
        iterator: a ``DataLoader`` iterator.
        sampler: the sampler (or batch sampler) to use.

    Raises:
        PrivateApiChanged: torch's iterator no longer has ``_index_sampler``.
    """
    index_sampler(iterator)
    iterator._index_sampler = sampler


def fsspec_in_transaction(fs: object) -> bool:
    """Whether the caller has an fsspec transaction open on ``fs`` (its writes commit with it).

    Args:
        fs: an ``fsspec.AbstractFileSystem``.

    Returns:
        True inside ``with fs.transaction:``.

    Raises:
        PrivateApiChanged: fsspec no longer records it as ``AbstractFileSystem._intrans``.
    """
    if not hasattr(fs, "_intrans"):
        raise PrivateApiChanged("fsspec.AbstractFileSystem._intrans", "fsspec")
    return bool(fs._intrans)


def worker_iterator_base() -> type:
    """torch's iterator over a ``DataLoader`` with worker processes, for a subclass that picks the first worker.

    Returns:
        ``torch.utils.data.dataloader._MultiProcessingDataLoaderIter``, checked to have what the subclass uses.

    Raises:
        PrivateApiChanged: the class, its ``_reset``/``_try_put_index``, or ``DataLoader._get_iterator`` is gone.
    """
    from torch.utils.data import dataloader

    base = getattr(dataloader, "_MultiProcessingDataLoaderIter", None)
    if not isinstance(base, type):
        raise PrivateApiChanged("torch.utils.data.dataloader._MultiProcessingDataLoaderIter", "torch")
    for name in ("_reset", "_try_put_index"):
        if not callable(getattr(base, name, None)):
            raise PrivateApiChanged(
                f"torch.utils.data.dataloader._MultiProcessingDataLoaderIter.{name}", "torch"
            )
    if not callable(getattr(dataloader.DataLoader, "_get_iterator", None)):
        raise PrivateApiChanged("torch.utils.data.DataLoader._get_iterator", "torch")
    return base


def turn_worker_cycle(iterator: object, steps: int) -> None:
    """Make a worker iterator send its next index batch ``steps`` workers further on (round-robin).

    Args:
        iterator: a ``_MultiProcessingDataLoaderIter`` right after its reset.
        steps: how many workers to pass over.

    Raises:
        PrivateApiChanged: the iterator no longer has ``_worker_queue_idx_cycle``.
    """
    cycle = getattr(iterator, "_worker_queue_idx_cycle", None)
    if cycle is None:
        raise PrivateApiChanged(
            "torch.utils.data.dataloader._MultiProcessingDataLoaderIter._worker_queue_idx_cycle", "torch"
        )
    for _ in range(steps):
        next(cycle)


def pin_batch(batch: Any, device: Any = None) -> Any:
    """Pin a batch's tensors as torch's pin-memory thread does.

    Args:
        batch: a (nested) batch.
        device: the device to pin for (None: the current accelerator).

    Returns:
        The batch with pinned tensors.

    Raises:
        PrivateApiChanged: ``torch.utils.data._utils.pin_memory.pin_memory`` is gone.
    """
    try:
        from torch.utils.data._utils.pin_memory import pin_memory
    except ImportError:
        raise PrivateApiChanged("torch.utils.data._utils.pin_memory.pin_memory", "torch") from None
    return pin_memory(batch, device)
