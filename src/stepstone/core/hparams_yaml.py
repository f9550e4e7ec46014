"""``hparams.yaml``: writing hyperparameters as plain YAML and reading them back with ``yaml.safe_load``.

Public as :func:`stepstone.core.saving.save_hparams_to_yaml` / :func:`~stepstone.core.saving.load_hparams_from_yaml`
(Lightning's names and path). Lightning writes values with ``yaml.dump``, which may emit ``!!python/...`` tags
that only an unsafe loader can read; here every value is first converted to a plain form (a tensor to a number
or list, a tuple to a list, a Path to str, an Enum to its name) so that the file always loads with
``yaml.safe_load`` — the only way it is ever read. For plain values both write the same file.

``omegaconf`` is optional and never imported unless asked: ``use_omegaconf=True`` makes the loader return a
``DictConfig`` when omegaconf is installed (as Lightning does) and is ignored when it is not. The writer never
needs it: a ``DictConfig``/``ListConfig`` is written as the mapping/list it reads as (interpolations resolved).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import warnings
from argparse import Namespace
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import torch
import yaml

from stepstone.checkpoint.commit import atomic_write

__all__ = ["load_hparams_from_yaml", "save_hparams_to_yaml", "to_plain", "write_atomically"]


def to_plain(value: Any) -> Any:
    """Convert ``value`` into the types ``yaml.safe_dump`` writes.

    Args:
        value: a hyperparameter value (containers are converted recursively).

    Returns:
        The plain value: tensors and arrays become numbers or lists, tuples and sets lists, an Enum its name,
        a Path, dtype or device a string.

    Raises:
        TypeError: when ``value`` has no faithful plain form (a class, a function, an arbitrary object).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    scalar = _plain_scalar(value)
    if scalar is not None:
        return scalar
    return _plain_container(value)


def _plain_scalar(value: Any) -> str | bytes | None:
    """The string an Enum, complex number, dtype, device or path is written as; None for anything else."""
    if isinstance(value, enum.Enum):
        return value.name  # Lightning writes a top-level Enum by name
    if isinstance(value, (complex, torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, os.PathLike):
        path: str | bytes = os.fspath(value)
        return path
    return None


def _plain_container(value: Any) -> Any:
    """Convert a namespace, dataclass, mapping, sequence, set or array recursively (see ``to_plain``)."""
    if isinstance(value, Namespace):
        value = vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {
            k if isinstance(k, (str, int, float, bool)) else str(k): to_plain(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, bytes)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_plain(v) for v in value), key=repr)
    if callable(getattr(value, "tolist", None)) and not isinstance(value, type):
        # torch tensors and numpy arrays/scalars: 0-d gives a Python number, n-d nested lists.
        return to_plain(value.tolist())
    raise TypeError(f"{type(value).__qualname__} has no plain YAML form")


def write_atomically(path: str, write: Callable[[IO[str]], object]) -> None:
    """Write a local text file through the checkpoint engine's commit protocol (readers never see half a file).

    The file is written to a temporary sibling, fsynced, renamed over ``path`` and its folder fsynced, so
    the new contents survive a power loss once this returns.

    Args:
        path: the file to (re)write; its folder is created (durably) when missing.
        write: writes the contents to the open text handle.

    Raises:
        OSError: on any I/O failure; ``path`` is then untouched.
    """

    def write_fd(fd: int) -> None:
        with os.fdopen(fd, "w", newline="", encoding="utf-8", closefd=False) as handle:
            write(handle)

    atomic_write(path, write_fd)


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def save_hparams_to_yaml(
    config_yaml: str | os.PathLike[str], hparams: Mapping[str, Any] | Namespace, use_omegaconf: bool = True
) -> None:
    """Write ``hparams`` to ``config_yaml`` as plain YAML (keys sorted, as Lightning writes them).

    A value without a plain form is skipped with a warning, as Lightning skips what it cannot dump. A local
    file is replaced atomically; a URL (``s3://...``) is written through fsspec.

    Args:
        config_yaml: the ``.yaml`` file to (re)write; its folder must exist.
        hparams: a dict (an AttributeDict, a ``DictConfig``) or an ``argparse.Namespace``.
        use_omegaconf: accepted for Lightning compatibility; the file is plain YAML either way.

    Raises:
        RuntimeError: the folder of ``config_yaml`` does not exist (Lightning's error).
        TypeError: ``hparams`` is not a mapping or a Namespace.
    """
    path = os.fspath(config_yaml)
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    if not isinstance(hparams, Mapping):
        raise TypeError(f"hparams={hparams!r:.80} must be a dict, an AttributeDict or an argparse.Namespace.")
    plain: dict[str, Any] = {}
    for key, value in hparams.items():
        try:
            plain[str(key)] = to_plain(value)
        except TypeError as err:
            warnings.warn(f"Skipping hyperparameter {key!r} in {path}: {err}.", UserWarning, stacklevel=2)
    text = yaml.safe_dump(plain, sort_keys=True)
    if _is_remote(path):
        from stepstone.checkpoint.filesystems import filesystem, is_folder_like

        fs, target = filesystem(path)
        if not is_folder_like(fs, os.path.dirname(target)):
            raise RuntimeError(f"Missing folder: {os.path.dirname(path)}.")
        with fs.open(target, "w") as handle:
            handle.write(text)
        return
    if not os.path.isdir(os.path.dirname(path) or "."):
        raise RuntimeError(f"Missing folder: {os.path.dirname(path)}.")
    write_atomically(path, lambda handle: handle.write(text))


_MISSING = object()


def _read_yaml(path: str) -> Any:
    """``yaml.safe_load`` of a local file or an fsspec URL; ``_MISSING`` when there is no such file."""
    if _is_remote(path):
        from stepstone.checkpoint.filesystems import filesystem

        fs, target = filesystem(path)
        if not fs.exists(target):
            return _MISSING
        with fs.open(target, "r") as handle:
            return yaml.safe_load(handle)
    if not os.path.isfile(path):
        return _MISSING
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_hparams_from_yaml(config_yaml: str | os.PathLike[str], use_omegaconf: bool = True) -> dict[str, Any]:
    """Read hyperparameters written by :func:`save_hparams_to_yaml` (or by Lightning), with ``yaml.safe_load``.

    Never an unsafe loader: a file with ``!!python/...`` tags (Lightning's dump of a tensor or a tuple) is
    refused instead of running code from it.

    Args:
        config_yaml: the ``.yaml`` file (a local path or an fsspec URL).
        use_omegaconf: when omegaconf is installed, return an ``omegaconf.DictConfig`` (as Lightning does);
            ignored when it is not installed.

    Returns:
        The hyperparameters; ``{}`` with a RuntimeWarning when the file does not exist (Lightning's behaviour).

    Raises:
        yaml.YAMLError: the file is not YAML that ``yaml.safe_load`` accepts.
    """
    path = os.fspath(config_yaml)
    hparams: dict[str, Any] = _read_yaml(path)  # the mapping save_hparams_to_yaml wrote
    if hparams is _MISSING:
        warnings.warn(f"Missing Tags: {path}.", RuntimeWarning, stacklevel=2)
        return {}
    if use_omegaconf:
        try:
            from omegaconf import OmegaConf
            from omegaconf.errors import UnsupportedValueType, ValidationError
        except ImportError:
            return hparams
        with contextlib.suppress(UnsupportedValueType, ValidationError):
            config: dict[str, Any] = OmegaConf.create(hparams)  # a DictConfig, typed as Lightning types it
            return config
    return hparams
