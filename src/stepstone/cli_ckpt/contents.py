"""``stepstone ckpt show``, ``diff`` and ``export``: what one checkpoint holds, how two differ, weights out.

Files are loaded through the engine: verified first, never unpickling code (a file that needs pickle is
refused with ``UnsafeCheckpointError``), memory-mapped so that large files cost little memory.

Sharded (FSDP) checkpoint directories are accepted too. ``show`` reads only the small files (the
torch.distributed.checkpoint ``.metadata``, through an allow-listed unpickler, and ``meta.pt``), each checked
against the commit marker: shapes and dtypes come from the metadata, no shard is read. ``diff`` and ``export``
verify every file, then gather the whole checkpoint in memory (as ``stepstone ckpt convert`` would).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import zlib
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from stepstone.checkpoint import load_file, read_info
from stepstone.checkpoint.commit import atomic_write
from stepstone.checkpoint.kinds import SHARDED_DIRECTORY, is_uncommitted_directory, kind_of
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.sharded import (
    MARKER_NAME,
    META_NAME,
    gather_sharded,
    read_sharded_info,
)
from stepstone.checkpoint.sharded_commit import read_marker
from stepstone.checkpoint.sharded_reading import check_metadata_safe
from stepstone.checkpoint.storage import split_url
from stepstone.cli_ckpt.locations import is_url
from stepstone.cli_ckpt.output import emit_json, human_size, iter_tensors, metrics_text, table
from stepstone.errors import CheckpointCorruptError, CheckpointNotFoundError

__all__ = ["run_diff", "run_export", "run_show"]

_LIGHTNING_KEYS = (
    "state_dict",
    "optimizer_states",
    "lr_schedulers",
    "callbacks",
    "loops",
    "hyper_parameters",
)


def _tensor_rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).replace("torch.", ""),
            "bytes": tensor.numel() * tensor.element_size(),
        }
        for name, tensor in iter_tensors(state)
    ]


def _summary(value: Any) -> Any:
    """Keys of a dict (recursively one level), the length of a list: a compact outline of loop/callback state."""
    if isinstance(value, dict):
        return {
            str(k): sorted(map(str, v)) if isinstance(v, dict) else type(v).__name__ for k, v in value.items()
        }
    if isinstance(value, list):
        return f"list of {len(value)}"
    return type(value).__name__


def _not_a_checkpoint_dir(argument: str, path: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(
        f"{argument}={path!r} is a directory without the {MARKER_NAME} commit marker, not a committed "
        "checkpoint (an unfinished save, or a folder of checkpoints: see `stepstone ckpt ls`); pass a "
        "checkpoint file or a committed sharded checkpoint directory"
    )


def _load_any(argument: str, path: str) -> tuple[dict[str, Any], CheckpointRecord | None]:
    """The whole checkpoint and its record: a file (memory-mapped), or a sharded directory gathered in memory.

    Args:
        argument: the command-line argument's name (``A``, ``B``, ``FILE``), for error messages.
        path: the checkpoint file or sharded directory.

    Returns:
        ``(state, record)``; the record is None for a file without a stepstone trailer.

    Raises:
        CheckpointNotFoundError: ``path`` is missing, or a directory that is not a committed checkpoint.
        CheckpointCorruptError: a damaged file (named).
        UnsafeCheckpointError: content that would run code when unpickled.
    """
    if kind_of(path) is SHARDED_DIRECTORY:
        record = SHARDED_DIRECTORY.verify(path)  # every shard checked once, then loaded without a second pass
        return gather_sharded(path, verify=False), record
    if is_uncommitted_directory(path):
        raise _not_a_checkpoint_dir(argument, path)
    return load_file(path, mmap=not is_url(path)), read_info(path)  # mmap: local files only


def _checked_bytes(directory: str, name: str, marker: dict[str, Any]) -> bytes | None:
    """One small file of a sharded checkpoint, checked against the marker; None if the marker lacks it."""
    path = os.path.join(directory, name)
    expected = marker["files"].get(name)
    if not isinstance(expected, dict):
        return None
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise CheckpointCorruptError(path, "the file is missing from the checkpoint directory") from None
    if len(data) != expected.get("size") or f"{zlib.crc32(data):08x}" != expected.get("crc32"):
        raise CheckpointCorruptError(path, "its size or CRC32 does not match the commit marker")
    return data


def _dotted(location: tuple[Any, ...]) -> str:
    """``("state_dict", "layer", "weight")`` -> ``state_dict.layer.weight``; list indices as ``[i]``."""
    name = str(location[0])
    for part in location[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def _location(metadata: Metadata, key: str) -> tuple[Any, ...]:
    """Where a flattened entry sits in the saved state (``"state_dict.w"`` -> ``("state_dict", "w")``)."""
    return tuple((metadata.planner_data or {}).get(key, (key,)))


def _stored_tensor_rows(metadata: Metadata, weights_only: bool) -> list[dict[str, Any]]:
    """The shapes and dtypes the metadata records (the whole tensor, whatever the shards)."""
    rows = []
    for key, stored in metadata.state_dict_metadata.items():
        location = _location(metadata, key)
        if not isinstance(stored, TensorStorageMetadata) or (weights_only and location[0] != "state_dict"):
            continue
        dtype = stored.properties.dtype
        rows.append(
            {
                "name": _dotted(location),
                "shape": list(stored.size),
                "dtype": str(dtype).replace("torch.", ""),
                "bytes": math.prod(stored.size) * dtype.itemsize,
            }
        )
    return rows


def _sharded_info(path: str, everything: bool) -> dict[str, Any]:
    """What ``show`` prints for a sharded directory, from its marker, ``.metadata`` and ``meta.pt`` only."""
    marker = read_marker(os.path.abspath(path))
    record = read_sharded_info(path)
    _checked_bytes(path, ".metadata", marker)
    metadata = check_metadata_safe(path)
    meta_bytes = _checked_bytes(path, META_NAME, marker)
    meta = torch.load(io.BytesIO(meta_bytes), weights_only=True) if meta_bytes is not None else {}
    if not isinstance(meta, dict):
        raise CheckpointCorruptError(os.path.join(path, META_NAME), f"it holds a {type(meta).__name__}")
    roots = {str(_location(metadata, key)[0]) for key in metadata.state_dict_metadata}
    weights_only = not everything and "state_dict" in roots
    tensors = _stored_tensor_rows(metadata, weights_only) + ([] if weights_only else _tensor_rows(meta))
    return {
        "file": path,
        "sharded": True,
        "files": len(marker["files"]),
        "world_size": marker.get("world_size"),
        "step": record.step if record.step is not None else meta.get("global_step"),
        "epoch": record.epoch if record.epoch is not None else meta.get("epoch"),
        "metrics": dict(record.metrics),
        "size": record.size,
        "keys": sorted(set(map(str, meta)) | roots),
        "tensors": tensors,
        "tensor_bytes": sum(row["bytes"] for row in tensors),
        "hyper_parameters": meta.get("hyper_parameters", {}),
        "loops": _summary(meta.get("loops", {})),
        "callbacks": _summary(meta.get("callbacks", {})),
        "saved_on": _saved_on(meta),
    }


def _saved_on(state: dict[str, Any]) -> str | None:
    """Why stepstone wrote the file when it was not a scheduled save: an exception or a preemption."""
    marks = state.get("stepstone")
    if not isinstance(marks, dict):
        return None
    exception = marks.get("saved_on_exception")
    if isinstance(exception, dict):
        return f"exception {exception.get('type')}: {exception.get('message')}"
    return "preemption" if marks.get("preempted") else None


def _file_info(path: str, everything: bool) -> dict[str, Any]:
    """What ``show`` prints for a checkpoint file (loaded memory-mapped, verified)."""
    state = load_file(path, mmap=not is_url(path))  # mmap: local files only
    record = read_info(path)
    storage, storage_path = split_url(path)
    # The weights by default; --all adds optimizer state, RNG states and the rest.
    tensors = _tensor_rows(
        state if everything or "state_dict" not in state else {"state_dict": state["state_dict"]}
    )
    return {
        "file": path,
        "sharded": False,
        "trailer": record is not None,
        "step": record.step if record else state.get("global_step"),
        "epoch": record.epoch if record else state.get("epoch"),
        "metrics": dict(record.metrics) if record else {},
        "size": storage.size(storage_path),
        "keys": sorted(map(str, state)),
        "tensors": tensors,
        "tensor_bytes": sum(row["bytes"] for row in tensors),
        "hyper_parameters": state.get("hyper_parameters", {}),
        "loops": _summary(state.get("loops", {})),
        "callbacks": _summary(state.get("callbacks", {})),
        "saved_on": _saved_on(state),
    }


def run_show(args: argparse.Namespace) -> int:
    """``stepstone ckpt show FILE``: keys, tensors, hparams, loops and callback state of one checkpoint.

    ``FILE`` may be a sharded checkpoint directory: only its metadata and ``meta.pt`` are read.

    Args:
        args: the parsed command line.

    Returns:
        0.

    Raises:
        CheckpointNotFoundError: ``FILE`` is missing, or a directory that is not a committed checkpoint.
    """
    if kind_of(args.file) is SHARDED_DIRECTORY:
        info = _sharded_info(args.file, args.all)
        kind = f"sharded checkpoint directory: {info['files']} files, saved by {info['world_size']} rank(s)"
    elif is_uncommitted_directory(args.file):
        raise _not_a_checkpoint_dir("FILE", args.file)
    else:
        info = _file_info(args.file, args.all)
        kind = f"stepstone trailer: {'yes' if info['trailer'] else 'no'}"
    if args.json:
        emit_json(info)
        return 0
    tensors = info["tensors"]
    print(f"file:     {args.file} ({human_size(info['size'])}; {kind})")
    print(f"step:     {info['step']}   epoch: {info['epoch']}   metrics: {metrics_text(info['metrics'])}")
    if info["saved_on"] is not None:
        print(f"saved on: {info['saved_on']}")
    print(f"keys:     {', '.join(info['keys'])}")
    print(f"hparams:  {info['hyper_parameters'] or '-'}")
    print(f"loops:    {info['loops'] or '-'}")
    print("callbacks:")
    for name, keys in (info["callbacks"] or {}).items():
        print(f"  {name}: {keys}")
    scope = "" if args.all else " in state_dict (--all: every tensor)"
    print(f"tensors:  {len(tensors)} ({human_size(info['tensor_bytes'])}){scope}")
    rows = [[r["name"], str(tuple(r["shape"])), r["dtype"], human_size(r["bytes"])] for r in tensors]
    if rows:
        print(table(["  NAME", "SHAPE", "DTYPE", "BYTES"], [["  " + row[0], *row[1:]] for row in rows]))
    return 0


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest ``|a - b|`` of two tensors of the same shape and dtype (NaN against a number counts as inf)."""
    if a.numel() == 0:
        return 0.0
    if a.dtype == torch.bool or not (a.is_floating_point() or a.is_complex()):
        return float((a.to(torch.int64) - b.to(torch.int64)).abs().max())
    wide = torch.complex128 if a.is_complex() else torch.float64
    difference = (a.to(wide) - b.to(wide)).abs()
    difference = torch.where(a.isnan() & b.isnan(), 0.0, difference.nan_to_num(nan=math.inf))
    return float(difference.max())


def _tensor_changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    left, right = dict(iter_tensors(a.get("state_dict", a))), dict(iter_tensors(b.get("state_dict", b)))
    changed: list[dict[str, Any]] = []
    for name in sorted(left.keys() & right.keys()):
        x, y = left[name], right[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            changed.append(
                {"name": name, "change": f"{tuple(x.shape)} {x.dtype} -> {tuple(y.shape)} {y.dtype}"}
            )
        elif not torch.equal(x, y):
            changed.append({"name": name, "change": "values", "max_abs_diff": _max_abs_diff(x, y)})
    return {
        "only_in_a": sorted(left.keys() - right.keys()),
        "only_in_b": sorted(right.keys() - left.keys()),
        "changed": changed,
        "same": len(left.keys() & right.keys()) - len(changed),
    }


def _dict_changes(a: Any, b: Any) -> dict[str, list[Any]]:
    a, b = (a if isinstance(a, dict) else {}), (b if isinstance(b, dict) else {})
    keys = sorted(set(a) | set(b), key=str)
    return {str(k): [a.get(k), b.get(k)] for k in keys if str(a.get(k)) != str(b.get(k))}


def run_diff(args: argparse.Namespace) -> int:
    """``stepstone ckpt diff A B``: tensors that differ (max abs diff, shape/dtype), hparam and metric changes.

    A and B may be files or sharded checkpoint directories (gathered in memory).

    Args:
        args: the parsed command line.

    Returns:
        0 when weights, hyperparameters and metrics are all equal, else 1 (like ``diff``).
    """
    (a, info_a), (b, info_b) = _load_any("A", args.a), _load_any("B", args.b)
    result: dict[str, Any] = {
        "tensors": _tensor_changes(a, b),
        "hyper_parameters": _dict_changes(a.get("hyper_parameters"), b.get("hyper_parameters")),
        "metrics": _dict_changes(info_a.metrics if info_a else {}, info_b.metrics if info_b else {}),
        "step": [
            info_a.step if info_a else a.get("global_step"),
            info_b.step if info_b else b.get("global_step"),
        ],
    }
    tensors = result["tensors"]
    same = not (tensors["only_in_a"] or tensors["only_in_b"] or tensors["changed"])
    same = same and not result["hyper_parameters"] and not result["metrics"]
    if args.json:
        emit_json({**result, "identical": same})
        return 0 if same else 1
    print(f"A: {args.a} (step {result['step'][0]})\nB: {args.b} (step {result['step'][1]})")
    for name in tensors["only_in_a"]:
        print(f"only in A: {name}")
    for name in tensors["only_in_b"]:
        print(f"only in B: {name}")
    for change in tensors["changed"]:
        detail = (
            f"max abs diff {change['max_abs_diff']:.6g}" if "max_abs_diff" in change else change["change"]
        )
        print(f"differs:   {change['name']}  {detail}")
    print(f"{tensors['same']} tensor(s) identical, {len(tensors['changed'])} differ")
    for kind in ("hyper_parameters", "metrics"):
        for key, (old, new) in result[kind].items():
            print(f"{kind[:-1] if kind == 'metrics' else 'hparam'} {key}: {old} -> {new}")
    return 0 if same else 1


def _weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    source = state.get("state_dict", state)
    # safetensors refuses tensors sharing memory and non-contiguous ones: give each its own contiguous copy.
    return {name: tensor.detach().contiguous().clone() for name, tensor in iter_tensors(source)}


def run_export(args: argparse.Namespace) -> int:
    """``stepstone ckpt export FILE OUT.safetensors``: the weights (``state_dict``) as a safetensors file.

    ``FILE`` may be a sharded checkpoint directory: it is verified and gathered in memory first.

    Args:
        args: the parsed command line.

    Returns:
        0.

    Raises:
        ImportError: without the ``safetensors`` extra (safetensors and numpy; the message says how to install it).
    """
    try:
        # safetensors.torch imports without numpy but needs it to save; stepstone itself never does.
        import numpy  # noqa: F401
        from safetensors.torch import save as safetensors_save
    except ImportError:
        raise ImportError(
            "stepstone ckpt export needs the safetensors and numpy packages: pip install 'stepstone[safetensors]'"
        ) from None
    state, record = _load_any("FILE", args.file)
    weights = _weights(state)
    metadata = {"format": "pt", "source": os.path.basename(args.file)}
    if record is not None and record.step is not None:
        metadata["step"] = str(record.step)
    data = safetensors_save(weights, metadata=metadata)

    def write(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    atomic_write(os.path.abspath(args.out), write)  # the commit protocol: never a half-written export
    print(f"exported {len(weights)} tensor(s), {human_size(len(data))}, to {args.out}")
    return 0
