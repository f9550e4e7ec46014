"""``save_hyperparameters()``: collect a module's ``__init__`` arguments into ``self.hparams``.

The mechanics behind :class:`stepstone.core.mixins.HyperparametersMixin`.

Hyperparameters travel inside checkpoints, which must stay loadable with ``torch.load(weights_only=True)``.
So a value that such a loader would refuse is rejected here, when it is saved, with the name of the
argument and the fix — not months later when somebody tries to load the file.
"""

from __future__ import annotations

import copy
import inspect
import types
import warnings
from argparse import Namespace
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import torch
from typing_extensions import override

from stepstone.errors import MisconfigurationException

__all__ = [
    "AttributeDict",
    "check_hparams_safe",
    "collect_init_args",
    "init_hparams_state",
    "logged_hparams",
    "save_hyperparameters",
]


class AttributeDict(dict[str, Any]):
    """A dict whose keys can also be read and written as attributes (``hparams.lr``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"hyperparameter {key!r} does not exist; known: {sorted(self)}") from err

    @override
    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    @override
    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError as err:
            raise AttributeError(key) from err

    def __deepcopy__(self, memo: dict[int, Any]) -> AttributeDict:
        return AttributeDict(copy.deepcopy(dict(self), memo))


# Exact types only: subclasses (IntEnum, numpy.float64, namedtuples) pickle as their own class, which
# torch.load(weights_only=True) refuses.
_SAFE_SCALARS = (str, int, float, bool, complex, bytes, type(None), torch.dtype, torch.device, torch.Size)
_SAFE_KEYS = (str, int, float, bool)


def check_hparams_safe(value: Any, where: str) -> None:
    """Raise if ``value`` could not be read back by ``torch.load(weights_only=True)``.

    Args:
        value: a hyperparameter value (nested dicts, lists and tuples are walked).
        where: how to name the value in the error, e.g. ``"hparams['cfg']"``.

    Raises:
        MisconfigurationException: naming the first offending entry and what to do about it.
    """
    kind = type(value)
    if kind in _SAFE_SCALARS or kind in (torch.Tensor, torch.nn.Parameter):
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _SAFE_KEYS:
                raise MisconfigurationException(
                    f"{where} has a key {key!r} of type {type(key).__name__}; checkpoint hyperparameters "
                    "need str, int, float or bool keys. Convert the key, or exclude it with "
                    "save_hyperparameters(ignore=[...])."
                )
            check_hparams_safe(item, f"{where}[{key!r}]")
        return
    if kind in (list, tuple):
        for i, item in enumerate(value):
            check_hparams_safe(item, f"{where}[{i}]")
        return
    raise MisconfigurationException(
        f"{where} is a {kind.__module__}.{kind.__qualname__} ({value!r:.60}), which cannot be stored in a "
        "checkpoint that loads with torch.load(weights_only=True) (such a load would have to run code from "
        "the file). Pass plain values (numbers, strings, lists, dicts, tensors), convert it (e.g. a dataclass "
        "to dataclasses.asdict(cfg), a Path to str, an Enum to its .value), or exclude it with "
        "save_hyperparameters(ignore=[...])."
    )


def _plain(value: Any) -> Any:
    """Convert values that have an exact plain equivalent (Namespace, dataclass, Mapping, numpy scalar)."""
    if isinstance(value, Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if type(value) is list:
        return [_plain(v) for v in value]
    if type(value) is tuple:
        return tuple(_plain(v) for v in value)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()  # a numpy scalar: the same number as a Python scalar
    return value


def _init_frames(obj: Any, frame: types.FrameType | None) -> list[types.FrameType]:
    """The ``__init__`` frames constructing ``obj``, innermost (the base class's) first.

    An ``__init__`` counts when its first argument (``self``, whatever it is named) is ``obj``: the frames of
    an enclosing object's ``__init__`` (a module built inside another module) are not part of it.
    """
    found = []
    current = frame
    while current is not None:
        code = current.f_code
        if (
            code.co_name == "__init__"
            and code.co_argcount
            and current.f_locals.get(code.co_varnames[0]) is obj
        ):
            found.append(current)
        current = current.f_back
    return found


def collect_init_args(obj: Any, frame: types.FrameType | None) -> dict[str, Any]:
    """Return the named arguments (and ``**kwargs``) of every ``__init__`` in the construction of ``obj``.

    As in Lightning, the arguments of the base classes' ``__init__`` are included; a subclass's argument of the
    same name wins.

    Args:
        obj: the module or datamodule being constructed.
        frame: a frame inside that construction (usually the caller of ``save_hyperparameters``).

    Returns:
        Argument name to value, the first argument (``self``) and ``*args`` excluded.

    Raises:
        MisconfigurationException: ``frame`` is not inside the construction of ``obj``.
    """
    frames = _init_frames(obj, frame)
    if not frames:
        raise MisconfigurationException(
            "save_hyperparameters() must be called from inside __init__ of the module (or datamodule); "
            "it reads the arguments of that call. Outside __init__, pass a dict: save_hyperparameters({...})."
        )
    values: dict[str, Any] = {}
    for init_frame in frames:
        info = inspect.getargvalues(init_frame)
        values.update({name: info.locals[name] for name in info.args[1:]})
        if info.keywords:
            values.update(info.locals.get(info.keywords, {}))
    return values


def save_hyperparameters(
    obj: Any,
    args: Sequence[Any],
    ignore: Sequence[str] | str | None,
    frame: types.FrameType | None,
) -> None:
    """Update ``obj._hparams`` and set ``obj._hparams_initial`` and ``obj._hparams_name`` (Lightning's semantics).

    Repeated calls (a base class's ``__init__`` and then a subclass's) merge; ``ignore`` also drops names a
    previous call saved, so that a subclass can leave out what its base class saved. It may be called before
    ``super().__init__()``.

    Args:
        obj: the module or datamodule.
        args: what the user passed to ``save_hyperparameters``: nothing (all init args), names of init
            args, or a single dict / Namespace / dataclass used as the hyperparameters.
        ignore: init argument names to leave out.
        frame: the caller's frame.

    Raises:
        MisconfigurationException: an argument name is unknown or also ignored, or a value is not
            weights_only-safe.
    """
    ignore_set = (
        {ignore} if isinstance(ignore, str) else {name for name in ignore or () if isinstance(name, str)}
    )
    if len(args) == 1 and not isinstance(args[0], str) and not args[0]:
        return  # an empty container: nothing to save (as in Lightning)
    name: str | None = "kwargs"
    if len(args) == 1 and not isinstance(args[0], str):
        hparams = _plain(args[0])
        if not isinstance(hparams, Mapping):
            raise MisconfigurationException(
                f"save_hyperparameters({args[0]!r}): a single positional argument must be a dict, Namespace "
                "or dataclass, or pass the names of __init__ arguments as strings."
            )
        # Lightning: the name of the __init__ argument equal to the container, None when none is (a literal
        # or a container built in __init__); load_from_checkpoint passes it back under that name.
        init_args = collect_init_args(obj, frame) if _init_frames(obj, frame) else {}
        name = next((k for k, v in init_args.items() if k not in ignore_set and _equal(v, args[0])), None)
        hparams = dict(hparams)
    else:
        hparams = _named_init_args(obj, [a for a in args if isinstance(a, str)], ignore_set, frame)
        if not args and not hparams:
            name = None  # Lightning: save_hyperparameters() of an __init__ without arguments
    hparams = _drop_modules(hparams)
    check_hparams_safe(hparams, "hparams")
    merged = getattr(obj, "_hparams", None)
    merged = merged if merged is not None else AttributeDict()
    merged.update(hparams)  # Lightning merges repeated calls
    for key in ignore_set:
        merged.pop(key, None)  # ... and drops what a base class saved and this call ignores
    obj._hparams_name = name
    obj._hparams = merged
    obj._hparams_initial = copy.deepcopy(merged)


def _equal(value: Any, container: Any) -> bool:
    """``value == container`` as Lightning compares them; a comparison that fails (tensors) is no match."""
    try:
        return bool(value == container)
    except Exception:  # an incomparable argument simply is not the container
        return False


def _named_init_args(
    obj: Any, names: list[str], ignore: set[str], frame: types.FrameType | None
) -> dict[str, Any]:
    """The ``__init__`` arguments ``names`` (all of them when empty), less ``ignore``."""
    init_args = collect_init_args(obj, frame)
    unknown = [a for a in names if a not in init_args]
    if unknown:
        raise MisconfigurationException(
            f"save_hyperparameters({', '.join(map(repr, unknown))}): not an argument of "
            f"{type(obj).__name__}.__init__; its arguments are {sorted(init_args)}."
        )
    both = [a for a in names if a in ignore]
    if both:
        raise MisconfigurationException(
            f"save_hyperparameters({', '.join(map(repr, both))}, ignore={sorted(ignore)!r}): "
            f"{', '.join(map(repr, both))} is both saved and ignored; remove it from one of the two."
        )
    return {k: _plain(init_args[k]) for k in names or init_args if k not in ignore}


def init_hparams_state(obj: Any) -> None:
    """Give ``obj`` its hyperparameter attributes, keeping any a ``save_hyperparameters()`` call set already.

    Called by the module's and datamodule's ``__init__``: ``save_hyperparameters()`` may run before
    ``super().__init__()`` (Lightning allows it), and what it saved must survive.

    Args:
        obj: the module or datamodule being constructed.
    """
    defaults = {
        "_hparams": None,
        "_hparams_initial": None,
        "_hparams_name": "kwargs",
        # Lightning's default: a module or datamodule that never calls save_hyperparameters() logs nothing
        # (no hparams.yaml); save_hyperparameters(logger=...) sets it.
        "_log_hyperparams": False,
    }
    for attribute, default in defaults.items():
        if attribute not in obj.__dict__:
            setattr(obj, attribute, default)


def logged_hparams(module: Any, datamodule: Any) -> dict[str, Any] | None:
    """The hyperparameters the Trainer sends to its loggers: the module's and the datamodule's, merged.

    Args:
        module: the LightningModule.
        datamodule: the LightningDataModule, or None.

    Returns:
        The merged ``hparams_initial`` of those whose ``save_hyperparameters(logger=...)`` allows it; None
        when neither does (nothing is logged).

    Raises:
        RuntimeError: a key is in both with different values (Lightning's error): the loggers would show one
            of them as if it were both.
    """
    # getattr: a subclass whose __init__ skipped super().__init__() never called save_hyperparameters either.
    from_module = getattr(module, "_log_hyperparams", False)
    from_datamodule = datamodule is not None and getattr(datamodule, "_log_hyperparams", False)
    if from_module and from_datamodule:
        ours, theirs = module.hparams_initial, datamodule.hparams_initial
        conflicts = [key for key in ours.keys() & theirs.keys() if _differ(ours[key], theirs[key])]
        if conflicts:
            raise RuntimeError(
                f"Error while merging hparams: the keys {sorted(conflicts)} are present in both the "
                "LightningModule's and LightningDataModule's hparams but have different values. Rename one, or "
                "leave it out of one side's save_hyperparameters(ignore=[...])."
            )
        return {**ours, **theirs}
    if from_module:
        return dict(module.hparams_initial)
    if from_datamodule:
        return dict(datamodule.hparams_initial)
    return None


def _differ(ours: Any, theirs: Any) -> bool:
    # Lightning's rule: a different type, distinct tensors, or unequal values.
    if type(ours) is not type(theirs):
        return True
    if isinstance(ours, torch.Tensor):
        return ours is not theirs
    return bool(ours != theirs)


def _drop_modules(hparams: dict[str, Any]) -> dict[str, Any]:
    """Leave out nn.Module arguments: their weights are already in the state_dict (Lightning warns too)."""
    kept = {}
    for key, value in hparams.items():
        if isinstance(value, torch.nn.Module):
            warnings.warn(
                f"Attribute {key!r} is an nn.Module; its weights are saved in the state_dict, so it is left out "
                f"of the hyperparameters. Pass it again to load_from_checkpoint({key}=...), and silence this "
                f"with save_hyperparameters(ignore=[{key!r}]).",
                UserWarning,
                stacklevel=4,
            )
            continue
        kept[key] = value
    return kept
