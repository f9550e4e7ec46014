"""``stepstone ckpt show``, ``diff`` and ``export``: what one checkpoint holds, how two differ, weights out.

Files are loaded through the engine: verified first, never unpickling code (a file that needs pickle is
refused with ``UnsafeCheckpointError``), memory-mapped so that large files cost little memory.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import torch

from stepstone.checkpoint import load_file, read_info
from stepstone.checkpoint.commit import atomic_write
from stepstone.cli_ckpt.output import emit_json, human_size, iter_tensors, metrics_text, table

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


def run_show(args: argparse.Namespace) -> int:
    """``stepstone ckpt show FILE``: keys, tensors, hparams, loops and callback state of one checkpoint.

    Args:
        args: the parsed command line.

    Returns:
        0.
    """
    state = load_file(args.file, mmap=True)
    record = read_info(args.file)
    # The weights by default; --all adds optimizer state, RNG states and the rest.
    tensors = _tensor_rows(
        state if args.all or "state_dict" not in state else {"state_dict": state["state_dict"]}
    )
    info = {
        "file": args.file,
        "step": record.step if record else state.get("global_step"),
        "epoch": record.epoch if record else state.get("epoch"),
        "metrics": dict(record.metrics) if record else {},
        "size": os.path.getsize(args.file),
        "keys": sorted(map(str, state)),
        "tensors": tensors,
        "tensor_bytes": sum(row["bytes"] for row in tensors),
        "hyper_parameters": state.get("hyper_parameters", {}),
        "loops": _summary(state.get("loops", {})),
        "callbacks": _summary(state.get("callbacks", {})),
    }
    if args.json:
        emit_json(info)
        return 0
    print(
        f"file:     {args.file} ({human_size(info['size'])}; stepstone trailer: {'yes' if record else 'no'})"
    )
    print(f"step:     {info['step']}   epoch: {info['epoch']}   metrics: {metrics_text(info['metrics'])}")
    print(f"keys:     {', '.join(info['keys'])}")
    print(f"hparams:  {info['hyper_parameters'] or '-'}")
    print(f"loops:    {info['loops'] or '-'}")
    print("callbacks:")
    for name, keys in (info["callbacks"] or {}).items():
        print(f"  {name}: {keys}")
    print(
        f"tensors:  {len(tensors)} ({human_size(info['tensor_bytes'])}){'' if args.all else ' in state_dict (--all: every tensor)'}"
    )
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

    Args:
        args: the parsed command line.

    Returns:
        0 when weights, hyperparameters and metrics are all equal, else 1 (like ``diff``).
    """
    a, b = load_file(args.a, mmap=True), load_file(args.b, mmap=True)
    info_a, info_b = read_info(args.a), read_info(args.b)
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

    Args:
        args: the parsed command line.

    Returns:
        0.

    Raises:
        ImportError: without the ``safetensors`` extra (the message says how to install it).
    """
    try:
        from safetensors.torch import save as safetensors_save
    except ImportError:
        raise ImportError(
            "stepstone ckpt export needs the safetensors package: pip install 'stepstone[safetensors]'"
        ) from None
    state = load_file(args.file, mmap=True)
    weights = _weights(state)
    record = read_info(args.file)
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
