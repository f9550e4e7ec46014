"""ModelCheckpoint's settings: validating its arguments and resolving its folder (pure functions + stat calls)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from stepstone.errors import MisconfigurationException

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = [
    "default_dirpath",
    "exists",
    "has_checkpoints",
    "is_folder",
    "is_local",
    "resolve_dirpath",
    "validate_arguments",
]


def is_local(path: str) -> bool:
    from stepstone.checkpoint import is_local

    return is_local(path)


def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(path)
    from stepstone.checkpoint.filesystems import filesystem

    fs, target = filesystem(path)
    return bool(fs.exists(target))


def resolve_dirpath(dirpath: str | os.PathLike[str] | None) -> str | None:
    if dirpath is None or dirpath == "":
        return dirpath  # "" stays "": bare names, relative to the working directory (as in Lightning)
    return _absolute(os.fspath(dirpath))


def _absolute(path: str) -> str:
    """A local path made absolute (a ``file://`` URL becomes its plain path); any other URL as given."""
    if not is_local(path):
        return path
    if path.startswith("file://"):
        path = path[len("file://") :]
    return os.path.realpath(os.path.expanduser(path))


def default_dirpath(trainer: Trainer) -> str:
    if trainer.loggers:
        first = trainer.loggers[0]
        save_dir = first.save_dir or trainer.default_root_dir
        version = first.version
        version_dir = version if isinstance(version, str) else f"version_{version}"
        return _absolute(os.path.join(save_dir, str(first.name or ""), version_dir, "checkpoints"))
    return _absolute(os.path.join(trainer.default_root_dir, "checkpoints"))


def is_folder(path: str) -> bool:
    if is_local(path):
        return os.path.isdir(path)
    from stepstone.checkpoint.filesystems import filesystem

    fs, target = filesystem(path)
    return bool(fs.isdir(target))


def has_checkpoints(dirpath: str) -> bool:
    if is_local(dirpath):
        return any(name.endswith(".ckpt") for name in os.listdir(dirpath))
    from stepstone.checkpoint.filesystems import filesystem

    fs, target = filesystem(dirpath)
    return any(str(name).endswith(".ckpt") for name in fs.ls(target, detail=False))


def validate_arguments(
    save_top_k: Any,
    monitor: str | None,
    mode: str,
    save_last: Any,
    every_n_train_steps: int | None,
    every_n_epochs: int | None,
    train_time_interval: timedelta | None,
) -> None:
    if not isinstance(save_top_k, int) or save_top_k < -1:
        raise MisconfigurationException(
            f"Invalid value for save_top_k={save_top_k!r}. Must be >= -1 (-1 keeps all, 0 none, k the best k)."
        )
    if mode not in ("min", "max"):
        raise MisconfigurationException(
            f"`mode` can be min, max but got {mode!r}: pass mode='min' or mode='max'."
        )
    if save_last not in (None, True, False, "link"):
        raise MisconfigurationException(
            f"ModelCheckpoint(save_last={save_last!r}) is invalid; pass True, False or 'link'."
        )
    for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise MisconfigurationException(
                f"Invalid value for {name}={value!r}. Must be >= 0 (0 disables it)."
            )
    if train_time_interval is not None and not isinstance(train_time_interval, timedelta):
        raise MisconfigurationException(
            f"ModelCheckpoint(train_time_interval={train_time_interval!r}) must be a datetime.timedelta."
        )
    triggers = [(every_n_train_steps or 0) >= 1, (every_n_epochs or 0) >= 1, train_time_interval is not None]
    if sum(triggers) > 1:
        raise MisconfigurationException(
            f"Combination of parameters every_n_train_steps={every_n_train_steps}, every_n_epochs={every_n_epochs} "
            f"and train_time_interval={train_time_interval} should be mutually exclusive: set only one of them."
        )
    if monitor is None and save_top_k not in (-1, 0, 1):
        raise MisconfigurationException(
            f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration. No quantity for "
            "top_k to track: set monitor='val_loss' (or any logged metric), or save_top_k to -1, 0 or 1."
        )
