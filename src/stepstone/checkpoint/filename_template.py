"""The file name template of ``CheckpointManager.save``: checked once, then filled in for each step."""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from typing import Any

from stepstone.checkpoint.index import CHECKPOINT_SUFFIX
from stepstone.errors import MisconfigurationException

__all__ = ["check_checkpoint_name", "check_filename", "fill_filename"]


def _template_parts(filename: str) -> tuple[str, set[str]]:
    """The literal text of a filename template and its field names."""
    try:
        parsed = list(string.Formatter().parse(filename))
    except ValueError as error:
        raise MisconfigurationException(
            f"filename={filename!r} is not a valid format string: {error}"
        ) from None
    return "".join(text for text, _, _, _ in parsed), {
        field for _, field, _, _ in parsed if field is not None
    }


def check_filename(filename: object) -> str:
    """Check a file name template: a plain ``.ckpt`` name with a ``{step}`` field.

    Args:
        filename: the template, e.g. ``"step={step}.ckpt"``.

    Returns:
        The template.

    Raises:
        MisconfigurationException: naming what is wrong, with an example.
    """
    if not isinstance(filename, str):
        raise MisconfigurationException(f"filename must be a str template, got {filename!r}")
    literal, fields = _template_parts(filename)
    problems = []
    if "step" not in fields:
        problems.append("it must contain '{step}' so that every step gets its own file")
    if not filename.endswith(CHECKPOINT_SUFFIX):
        problems.append(f"it must end with {CHECKPOINT_SUFFIX!r}")
    if "/" in literal or os.sep in literal or filename.startswith("."):
        problems.append("it must be a plain, non-hidden file name (no '/')")
    if problems:
        raise MisconfigurationException(
            f"filename={filename!r} is invalid: {'; '.join(problems)}, e.g. 'step={{step}}.ckpt'"
        )
    return filename


def fill_filename(filename: str, step: int, epoch: int | None, metrics: Mapping[str, float]) -> str:
    """The file name of one checkpoint.

    Args:
        filename: a template accepted by ``check_filename``.
        step: the step.
        epoch: the epoch, if known.
        metrics: metric values the template may use.

    Returns:
        The name.

    Raises:
        MisconfigurationException: a field has no value, or the name contains '/'.
    """
    values: dict[str, Any] = {**metrics, "step": step, "epoch": epoch}
    missing = sorted(
        f for f in _template_parts(filename)[1] if values.get(f.split(".")[0].split("[")[0]) is None
    )
    if missing:
        raise MisconfigurationException(
            f"filename={filename!r} uses {missing} but save() got no value for them; pass "
            "them as epoch=... or in metrics=..."
        )
    name = filename.format_map(values)
    if "/" in name or os.sep in name:
        raise MisconfigurationException(f"filename={filename!r} gives {name!r}, which contains '/'")
    return name


def check_checkpoint_name(argument: str, name: object) -> str:
    """Check the name of a checkpoint inside its directory (any file or directory name, not a path).

    Args:
        argument: the argument's name, for the message.
        name: the name.

    Returns:
        The name.

    Raises:
        MisconfigurationException: for a non-string, an empty name, '.', '..' or a name with '/'.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or os.sep in name:
        raise MisconfigurationException(
            f"{argument}={name!r} is not a checkpoint name; pass a plain file or directory name inside the "
            "manager's directory, e.g. 'last.ckpt'"
        )
    return name
