"""Checkpoint file names from templates such as ``sample-mnist-{epoch:02d}-{val_loss:.2f}`` (pure functions).

Lightning's rules: each ``{name}`` or ``{name:spec}`` is filled from the metrics (a missing metric counts as
0); with ``auto_insert_metric_name`` it becomes ``name=value``; values are 0-d tensors, so ``{x}`` without a
spec prints like a Python float or int (an int logged with ``self.log`` is a float: ``global_step=11.0``).
Metric names may contain dots and slashes (a slash makes a sub-folder).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["DEFAULT_TEMPLATE", "format_name", "template_fields"]

DEFAULT_TEMPLATE = "{epoch}-{step}"
_FIELD = re.compile(r"\{([^:{}]*)(:[^{}]*)?\}")


def template_fields(template: str) -> list[str]:
    """The metric names a template refers to, in order of appearance."""
    return [m.group(1) for m in _FIELD.finditer(template)]


def format_name(
    template: str | None,
    metrics: Mapping[str, Any],
    *,
    auto_insert_metric_name: bool = True,
    equals: str = "=",
    join: str = "-",
    prefix: str = "",
) -> str:
    """Fill a filename template (without extension or version suffix).

    Args:
        template: the template; None or empty means ``{epoch}-{step}``.
        metrics: metric name to value (tensors or numbers).
        auto_insert_metric_name: write ``name=value`` instead of ``value``.
        equals: the character between name and value.
        join: the character between ``prefix`` and the rest.
        prefix: an optional prefix.

    Returns:
        The formatted name.
    """
    template = template or DEFAULT_TEMPLATE

    def fill(match: re.Match[str]) -> str:
        name, spec = match.group(1), (match.group(2) or ":")[1:]
        value = metrics.get(name)
        if value is None:
            value = torch.tensor(0)
        text = format(value, spec)
        return f"{name}{equals}{text}" if auto_insert_metric_name else text

    name = _FIELD.sub(fill, template)
    return join.join((prefix, name)) if prefix else name
