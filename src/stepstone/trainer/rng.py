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

__all__ = ["capture_rng", "restore_rng"]


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
        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = {
            "kind": str(kind),
            # an ndarray is not weights_only-safe; a tensor is (uint32 keys fit in int64).
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


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
        keys = saved_np["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (saved_np["kind"], keys, saved_np["pos"], saved_np["has_gauss"], saved_np["cached_gaussian"])
        )
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        count = min(len(cuda), torch.cuda.device_count())
        for device in range(count):
            torch.cuda.set_rng_state(cuda[device], device)
