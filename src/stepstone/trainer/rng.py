"""Capturing and restoring the random number generators that decide the future of training.

A resumed run is exact only if every generator continues where it stopped: python's ``random``, numpy's global
generator (when numpy is installed), torch's CPU generator and every CUDA device's generator. The captured
state is weights_only-safe (tensors, ints, floats, lists, dicts), so it can live inside a checkpoint that
``torch.load(..., weights_only=True)`` reads.
"""

from __future__ import annotations

import random
from typing import Any

import torch

__all__ = ["capture_rng", "numpy_global_state", "restore_rng"]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # numpy is optional
        return None
    return numpy


def capture_rng() -> dict[str, Any]:
    """The current state of every global generator, as plain tensors, numbers, lists and dicts.

    Returns:
        ``{"python": ..., "torch": ByteTensor, ["numpy": ...], ["cuda": [ByteTensor per device]]}``.
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        # random's state tuple becomes lists/ints: tuples and arbitrary objects are not weights_only-safe.
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
        "torch": torch.get_rng_state(),
    }
    np = _numpy()
    if np is not None:
        state["numpy"] = numpy_plain(numpy_global_state(np))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def numpy_global_state(np: Any) -> Any:
    """numpy's global generator state, as ``np.random.get_state(legacy=True)`` gives it, without its warning.

    ``get_state(legacy=True)`` warns (RuntimeWarning, nothing the user can act on) when the global bit
    generator is not MT19937; ``legacy=False`` never warns, and carries the same values.

    Args:
        np: the numpy module.

    Returns:
        ``(kind, keys, pos, has_gauss, cached_gaussian)`` for MT19937; otherwise the ``get_state`` dict.
    """
    full = np.random.get_state(legacy=False)
    if full.get("bit_generator") != "MT19937":
        return full
    inner = full["state"]
    return "MT19937", inner["key"], inner["pos"], full["has_gauss"], full["gauss"]


def numpy_plain(np_state: Any) -> dict[str, Any]:
    """numpy's global generator state in a weights_only-safe form (no ndarrays, no tuples).

    Args:
        np_state: :func:`numpy_global_state`: a tuple for the default MT19937, a dict when the user
            installed another bit generator (``np.random.set_bit_generator(np.random.PCG64())``).

    Returns:
        ``{"kind": "MT19937", "keys", "pos", "has_gauss", "cached_gaussian"}`` or
        ``{"kind": "bit_generator", "state": <the dict, arrays as {"__ndarray__": dtype, "values": list}>}``.
    """
    if isinstance(np_state, dict):
        return {"kind": "bit_generator", "state": _plain(np_state)}
    kind, keys, pos, has_gauss, cached = np_state
    return {
        "kind": str(kind),
        # an ndarray is not weights_only-safe; a tensor is (uint32 keys fit in int64).
        "keys": torch.from_numpy(keys.astype("int64")),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # an ndarray or a numpy scalar
        return {"__ndarray__": str(value.dtype), "values": value.tolist()}
    return value


def _from_plain(np: Any, value: Any) -> Any:
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.asarray(value["values"], dtype=value["__ndarray__"])
    if isinstance(value, dict):
        return {key: _from_plain(np, item) for key, item in value.items()}
    return value


def _restore_numpy(np: Any, saved: dict[str, Any]) -> None:
    if saved["kind"] != "bit_generator":
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))
        return
    state = _from_plain(np, saved["state"])
    name = state.get("bit_generator")
    # The global generator must be of the saved kind before its state can be set (e.g. a fresh process that
    # has not yet called np.random.set_bit_generator).
    if type(np.random.get_bit_generator()).__name__ != name:
        np.random.set_bit_generator(getattr(np.random, name)())
    np.random.set_state(state)


def restore_rng(state: dict[str, Any]) -> None:
    """Put every generator back to a state returned by :func:`capture_rng`.

    Generators missing from ``state`` (numpy not installed when it was captured, no CUDA) are left alone; CUDA
    states are restored on as many devices as both runs have.

    Args:
        state: the dict :func:`capture_rng` returned (possibly after a checkpoint round trip).
    """
    python = state.get("python")
    if python is not None:
        random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    saved_np = state.get("numpy")
    np = _numpy()
    if saved_np is not None and np is not None:
        _restore_numpy(np, saved_np)
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        count = min(len(cuda), torch.cuda.device_count())
        for device in range(count):
            torch.cuda.set_rng_state(cuda[device], device)
