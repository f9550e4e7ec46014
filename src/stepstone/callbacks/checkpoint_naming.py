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

from stepstone.errors import MisconfigurationException

__all__ = ["DEFAULT_TEMPLATE", "check_names", "format_name", "template_fields"]

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


def check_names(templates: Mapping[str, str | None], extension: str) -> None:
    """Refuse, before anything is written, names that the checkpoint folder would not recognise.

    stepstone finds a run's checkpoints (``fit(ckpt_path="last")``, the ``stepstone ckpt`` tools) by their
    ``.ckpt`` ending, and hidden names are its temporary files: a checkpoint written under another name would
    be left untracked.

    Args:
        templates: where each template comes from (e.g. ``"filename"``) -> the template (None: the default).
        extension: ``ModelCheckpoint.FILE_EXTENSION``.

    Raises:
        MisconfigurationException: the extension does not end in ``.ckpt``, or a name would start with ``.``.
    """
    if not isinstance(extension, str) or not extension.endswith(".ckpt"):
        raise MisconfigurationException(
            f"ModelCheckpoint.FILE_EXTENSION={extension!r} is not supported: stepstone recognises checkpoints "
            "by their '.ckpt' ending (resuming with ckpt_path='last', the `stepstone ckpt` tools). Keep "
            "FILE_EXTENSION='.ckpt' (or an extension ending in '.ckpt', e.g. '.model.ckpt')."
        )
    for source, template in templates.items():
        name = format_name(template, {}).rsplit("/", 1)[-1]
        if name.startswith("."):
            raise MisconfigurationException(
                f"ModelCheckpoint {source}={template!r} gives hidden file names ({name + extension!r}); names "
                "starting with '.' are stepstone's temporary files. Use a template that does not start with '.'."
            )
