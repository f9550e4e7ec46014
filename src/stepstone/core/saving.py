"""``load_from_checkpoint``: rebuild a module or datamodule from a checkpoint's hparams and weights.

Also Lightning's public path of ``save_hparams_to_yaml`` / ``load_hparams_from_yaml`` (written in
:mod:`stepstone.core.hparams_yaml`).
"""

from __future__ import annotations

import errno
import inspect
import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from stepstone.core.hparams_yaml import _MISSING, _read_yaml, load_hparams_from_yaml, save_hparams_to_yaml
from stepstone.errors import MisconfigurationException

if TYPE_CHECKING:
    from stepstone.core.module import LightningModule

_T = TypeVar("_T")
_Module = TypeVar("_Module", bound="LightningModule")

__all__ = [
    "instantiate_from_hparams",
    "load_hparams_from_yaml",
    "load_module_from_checkpoint",
    "read_checkpoint",
    "save_hparams_to_yaml",
]


def read_checkpoint(
    path: str | Path, map_location: Any = None, weights_only: bool | None = None
) -> dict[str, Any]:
    """Load a checkpoint dict through the engine (integrity-checked, weights_only unless told otherwise).

    Args:
        path: the checkpoint file.
        map_location: as in ``torch.load``.
        weights_only: ``False`` means the file is trusted and may contain pickled objects.

    Returns:
        The checkpoint dict.
    """
    from stepstone.checkpoint import load_file

    return load_file(str(path), map_location=map_location, trusted=weights_only is False)


def _read_hparams_file(hparams_file: str | Path) -> dict[str, Any]:
    path = Path(hparams_file)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise MisconfigurationException(
            f"load_from_checkpoint(hparams_file={str(hparams_file)!r}): only .yaml/.yml files are supported."
        )
    # The one YAML reader of the hyper-parameter files (yaml.safe_load, local or fsspec), as load_hparams_from_yaml.
    loaded = _read_yaml(str(path))
    if loaded is _MISSING:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    loaded = loaded or {}
    if not isinstance(loaded, dict):
        raise MisconfigurationException(
            f"load_from_checkpoint(hparams_file={str(hparams_file)!r}): the file must hold a mapping, "
            f"got {type(loaded).__name__}."
        )
    return loaded


# Where Lightning before 0.8 stored a module's hyperparameters; read (under the current key) by every Lightning.
_PAST_HPARAMS_KEYS = ("hparams", "module_arguments")


def _saved_hparams(checkpoint: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The saved hyperparameters: a module's legacy keys first, the current key winning (Lightning's order)."""
    keys = (*(_PAST_HPARAMS_KEYS if not prefix else ()), f"{prefix}hyper_parameters")
    hparams: dict[str, Any] = {}
    for key in keys:
        saved = checkpoint.get(key) or {}
        if isinstance(saved, Namespace):
            saved = vars(saved)
        if not isinstance(saved, Mapping):
            raise MisconfigurationException(
                f"The checkpoint's {key!r} entry is a {type(saved).__name__}, not a mapping of hyperparameters; "
                "pass the constructor arguments to load_from_checkpoint(..., name=value) and an hparams_file "
                "instead."
            )
        hparams.update(saved)
    return hparams


def instantiate_from_hparams(
    cls: type[_T], checkpoint: dict[str, Any], prefix: str, kwargs: dict[str, Any]
) -> _T:
    """Call ``cls(...)`` with the saved hyperparameters, ``kwargs`` overriding them (Lightning's rules).

    ``kwargs`` also override the saved values (``checkpoint[prefix + "hyper_parameters"]`` is updated with
    them, as in Lightning), including inside a single hparams argument (``save_hyperparameters(cfg)``).
    Unless ``__init__`` takes ``**kwargs``, names it does not accept are left out.

    Args:
        cls: the LightningModule or LightningDataModule subclass.
        checkpoint: the checkpoint dict.
        prefix: ``""`` for modules, ``"datamodule_"`` for datamodules (Lightning's key names).
        kwargs: explicit constructor arguments.

    Returns:
        The new instance.

    Raises:
        MisconfigurationException: a saved hyperparameters entry is not a mapping.
    """
    hparams = {**_saved_hparams(checkpoint, prefix), **kwargs}
    checkpoint[f"{prefix}hyper_parameters"] = hparams
    name = checkpoint.get(f"{prefix}hparams_name")
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [
        key
        for i, (key, p) in enumerate(params.items())
        if i > 0 and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    init_kwargs = {name: hparams} if name and name in names else dict(hparams)
    init_kwargs.update(kwargs)
    if not takes_kwargs:
        init_kwargs = {k: v for k, v in init_kwargs.items() if k in names}
    return cls(**init_kwargs)


def _first_tensor_device(state_dict: dict[str, Any]) -> torch.device | None:
    for value in state_dict.values():
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _can_assign(model: torch.nn.Module, state_dict: dict[str, Any]) -> bool:
    """Whether the loaded tensors can replace the module's own without changing any of their properties."""
    own = model.state_dict(keep_vars=True)
    if own.keys() != state_dict.keys():
        return False
    params = [p for _, p in model.named_parameters(remove_duplicate=False)]
    if len({id(p) for p in params}) != len(params):
        return False  # tied weights: assigning would untie them into two Parameters
    for name, tensor in own.items():
        loaded = state_dict[name]
        if not isinstance(loaded, torch.Tensor) or type(loaded) is not torch.Tensor:
            return False
        if (loaded.dtype, loaded.shape, loaded.device) != (tensor.dtype, tensor.shape, tensor.device):
            return False
    return True


def _load_weights(model: torch.nn.Module, state_dict: dict[str, Any], strict: bool) -> None:
    # A freshly built module's tensors hold nothing worth keeping: taking the loaded tensors (assign=True)
    # instead of copying into them halves the memory traffic of load_from_checkpoint. Only when every
    # property matches exactly, so the result is the same as Lightning's copy.
    assign = _can_assign(model, state_dict)
    model.load_state_dict(state_dict, strict=strict, assign=assign)


def load_module_from_checkpoint(
    cls: type[_Module],
    checkpoint_path: str | Path,
    map_location: Any,
    hparams_file: str | Path | None,
    strict: bool | None,
    weights_only: bool | None,
    kwargs: dict[str, Any],
) -> _Module:
    """Implementation of ``LightningModule.load_from_checkpoint`` (see its docstring)."""
    checkpoint = read_checkpoint(checkpoint_path, map_location, weights_only)
    if hparams_file is not None:
        checkpoint["hyper_parameters"] = _read_hparams_file(hparams_file)
        checkpoint.setdefault("hparams_name", "kwargs")
    model = instantiate_from_hparams(cls, checkpoint, "", kwargs)
    if "state_dict" not in checkpoint:
        raise MisconfigurationException(
            f"load_from_checkpoint({str(checkpoint_path)!r}): the file has no 'state_dict' entry (keys: "
            f"{sorted(checkpoint)}); it is not a model checkpoint."
        )
    if model._strict_loading is not None and strict is not None and strict != model.strict_loading:
        raise MisconfigurationException(
            f"load_from_checkpoint(strict={strict!r}) conflicts with {cls.__name__}.strict_loading="
            f"{model.strict_loading!r}; set the same value for both (or leave one unset)."
        )
    model.configure_model()
    model.on_load_checkpoint(checkpoint)
    _load_weights(model, checkpoint["state_dict"], model.strict_loading if strict is None else strict)
    device = _first_tensor_device(checkpoint["state_dict"])
    if device is not None:
        model.to(device)
    return model
