"""Formatting shared by the ``stepstone ckpt`` commands: sizes, times, tables, JSON, tensor walks."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["emit_json", "human_size", "human_time", "iter_tensors", "metrics_text", "table"]


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``.

    Args:
        size: bytes.

    Returns:
        The size with a binary unit.
    """
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_time(created: float) -> str:
    """Seconds since the epoch as local ``YYYY-MM-DD HH:MM:SS`` ("-" when unknown).

    Args:
        created: seconds since the epoch.

    Returns:
        The text.
    """
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if created > 0 else "-"


def metrics_text(metrics: Mapping[str, float]) -> str:
    """``{"val_loss": 0.25}`` -> ``"val_loss=0.25"``.

    Args:
        metrics: metric values.

    Returns:
        The metrics, comma separated ("-" when none).
    """
    return ", ".join(f"{name}={value:.6g}" for name, value in sorted(metrics.items())) or "-"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces.

    Args:
        headers: column titles.
        rows: the cells, as text.

    Returns:
        The table, one line per row, header first.
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in [headers, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf: "nan", "inf", "-inf"
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(item) for item in value]
    if isinstance(value, torch.Tensor):
        return (
            value.item() if value.numel() == 1 else f"tensor(shape={list(value.shape)}, dtype={value.dtype})"
        )
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value
    return repr(value)


def emit_json(data: Any) -> None:
    """Print ``data`` as indented, strict JSON (non-finite floats and tensors become strings or numbers).

    Args:
        data: what to print.
    """
    print(json.dumps(_jsonable(data), indent=2, allow_nan=False))


def iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts/lists, with a dotted name (``state_dict.layer.weight``).

    Args:
        obj: a checkpoint or part of it.
        prefix: the name of ``obj``.

    Yields:
        ``(name, tensor)`` pairs, in container order.
    """
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from iter_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from iter_tensors(value, f"{prefix}[{index}]")
