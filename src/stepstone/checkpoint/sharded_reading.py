"""Reading a torch.distributed.checkpoint directory safely: its metadata, and a template of everything in it.

torch reads a checkpoint's ``.metadata`` with an unrestricted ``pickle.load``; :func:`check_metadata_safe`
unpickles it first with an allow-list (the metadata dataclasses, dtypes, sizes), so that a planted file cannot
run code. :func:`template_from_metadata` builds an empty state (tensors of the stored shapes) for loading a
whole checkpoint without a model, as ``convert_sharded_to_file`` needs.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from stepstone.checkpoint.kinds import SHARDED_DIRECTORY
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.sharded_commit import (
    is_committed_dir,
    local_dir,
)
from stepstone.errors import CheckpointCorruptError, UnsafeCheckpointError

if TYPE_CHECKING:  # torch.distributed.checkpoint costs ~1 s to import: only code reading a directory pays it
    from torch.distributed.checkpoint.metadata import Metadata

#: torch.distributed.checkpoint's metadata file in a checkpoint directory.
METADATA_NAME = ".metadata"

__all__ = [
    "METADATA_NAME",
    "check_metadata_safe",
    "is_sharded_checkpoint",
    "metadata_from_bytes",
    "read_sharded_info",
    "restore_optimizer_states",
    "template_from_metadata",
    "verify_sharded",
]


def _set_path(root: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = root
    for key, following in itertools.pairwise(path):
        fresh: Any = [] if isinstance(following, int) else {}
        if isinstance(node, list):
            node.extend([None] * (key + 1 - len(node)))
            node[key] = fresh if node[key] is None else node[key]
        else:
            node.setdefault(key, fresh)
        node = node[key]
    if isinstance(node, list):
        node.extend([None] * (path[-1] + 1 - len(node)))
    node[path[-1]] = value


def template_from_metadata(path: str) -> dict[str, Any]:
    """An empty tensor (or a placeholder) for every stored entry: a template for loading everything.

    Args:
        path: the checkpoint directory (its ``.metadata`` is read with :func:`check_metadata_safe`).

    Returns:
        The nested state, shaped as it was saved (but see :func:`restore_optimizer_states`).
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = check_metadata_safe(path)
    template: dict[str, Any] = {}
    for key, stored in metadata.state_dict_metadata.items():
        value: Any = stored  # non-tensor entries: replaced by the loaded object
        if isinstance(stored, TensorStorageMetadata):
            value = torch.empty(stored.size, dtype=stored.properties.dtype)
        location = (metadata.planner_data or {}).get(key, (key,))
        _set_path(template, tuple(location), value)
    return template


def restore_optimizer_states(checkpoint: dict[str, Any]) -> None:
    """Make the ``optimizer_states`` of a checkpoint loaded into :func:`template_from_metadata` ordinary again.

    torch.distributed.checkpoint stores no entry for an empty dict and turns every key into a string. So the
    state dict of an optimizer without per-parameter state (SGD without momentum, any optimizer before its
    first step) comes back as its ``param_groups`` alone, which ``Optimizer.load_state_dict`` (``KeyError:
    'state'``) and torch's ``set_optimizer_state_dict`` (which takes it for a flattened state dict) refuse; and
    one keyed by parameter index (``optimizer.state_dict()``) comes back keyed ``"0"``, ``"1"``..., which
    ``load_state_dict`` accepts and silently does not apply. The ``params`` lists of ``param_groups`` are
    stored whole, so they give back each key's type.

    Args:
        checkpoint: the loaded checkpoint, changed in place.
    """
    states = checkpoint.get("optimizer_states")
    if not isinstance(states, list):
        return
    for index, state in enumerate(states):
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if not isinstance(groups, list):
            continue
        params = {
            str(param): param
            for group in groups
            if isinstance(group, dict)
            for param in group.get("params", ())
            if isinstance(param, (int, str))
        }
        per_parameter = state.get("state", {})
        if not isinstance(per_parameter, dict):
            continue  # not an optimizer state dict: left as it is
        rest = {key: value for key, value in state.items() if key != "state"}
        states[index] = {  # "state" first: torch's order
            "state": {params.get(key, key): value for key, value in per_parameter.items()},
            **rest,
        }


_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only the classes torch.distributed.checkpoint's ``.metadata`` holds (dataclasses, dtypes)."""

    @override
    def find_class(self, module: str, name: str) -> Any:
        """Allow the checkpoint metadata classes and torch dtypes; refuse any other global.

        Args:
            module: the global's module.
            name: the global's name.

        Returns:
            The class or object.

        Raises:
            pickle.UnpicklingError: for any other global.
        """
        allowed = module == "torch.distributed.checkpoint.metadata" or (module, name) in _METADATA_GLOBALS
        if allowed or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def check_metadata_safe(path: str) -> Metadata:
    """Unpickle a checkpoint directory's ``.metadata`` with an allow-list (torch's own reader has none).

    Args:
        path: the checkpoint directory.

    Returns:
        The metadata.

    Raises:
        CheckpointCorruptError: the metadata file is missing.
        UnsafeCheckpointError: it needs a class outside the allow-list (it could run code).
    """
    metadata_path = os.path.join(path, METADATA_NAME)
    try:
        with open(metadata_path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise CheckpointCorruptError(
            metadata_path, "the torch.distributed.checkpoint metadata is missing"
        ) from None
    return metadata_from_bytes(data, metadata_path)


def metadata_from_bytes(data: bytes, metadata_path: str) -> Metadata:
    """Unpickle the bytes of a ``.metadata`` file (already read, e.g. verified against the marker) safely.

    Args:
        data: the file's bytes.
        metadata_path: the file (named in errors).

    Returns:
        The metadata.

    Raises:
        CheckpointCorruptError: the bytes hold something other than checkpoint metadata.
        UnsafeCheckpointError: they need a class outside the allow-list (they could run code).
    """
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{metadata_path!r} needs code to load ({error}); it was not loaded. Sharded checkpoints written by "
            "stepstone never do: only load directories you trust with torch.distributed.checkpoint directly."
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointCorruptError(metadata_path, f"it cannot be unpickled ({error!r})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointCorruptError(
            metadata_path, f"it holds a {type(metadata).__name__}, not checkpoint Metadata"
        )
    return metadata


def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a committed sharded checkpoint directory (has its marker).

    Args:
        path: a local path.

    Returns:
        True for a committed checkpoint directory; False for files, missing paths and unfinished saves.
    """
    return is_committed_dir(os.fspath(path))


def read_sharded_info(path: str | os.PathLike[str]) -> CheckpointRecord:
    """The record of a sharded checkpoint from its marker alone (cheap; nothing is verified).

    Args:
        path: the checkpoint directory.

    Returns:
        Its record (``verified=False``); ``size`` is the total of its files.

    Raises:
        CheckpointNotFoundError: not a committed sharded checkpoint.
        CheckpointCorruptError: the marker is damaged.
    """
    return SHARDED_DIRECTORY.describe(local_dir(path))


def verify_sharded(path: str | os.PathLike[str]) -> CheckpointRecord:
    """Check every file of a sharded checkpoint against its marker (reads them all, unpickles nothing).

    Args:
        path: the checkpoint directory.

    Returns:
        Its record, with ``verified=True``.

    Raises:
        CheckpointNotFoundError: not a committed sharded checkpoint.
        CheckpointCorruptError: naming the damaged or missing file.
    """
    return SHARDED_DIRECTORY.verify(local_dir(path))
