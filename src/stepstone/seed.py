"""``seed_everything``: one seed for python, numpy and torch (and the DataLoader workers)."""

from __future__ import annotations

import numbers
import os
import random
import warnings

import torch

__all__ = ["seed_everything"]

_MAX_SEED = 2**32 - 1


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed ``random``, ``numpy`` (when installed) and ``torch`` (all devices), as Lightning does.

    Args:
        seed: the seed; None reads ``PL_GLOBAL_SEED`` from the environment, else uses 0 with a warning.
        workers: also make DataLoader workers derive distinct, reproducible seeds (sets ``PL_SEED_WORKERS``).
        verbose: print the seed that was set.

    Returns:
        The seed used.

    Raises:
        ValueError: ``seed`` is not an int in ``[0, 2**32 - 1]`` (Lightning would warn and use 0; a wrong seed
            silently breaks reproducibility, so stepstone refuses it).
    """
    if seed is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        if env is None:
            warnings.warn(
                "seed_everything(seed=None): no seed given and PL_GLOBAL_SEED unset; using 0.", stacklevel=2
            )
            seed = 0
        else:
            try:
                seed = int(env)
            except ValueError:
                raise ValueError(
                    f"seed_everything(seed=None) read PL_GLOBAL_SEED={env!r} from the environment, which is not an "
                    f"int; set it to an int in [0, {_MAX_SEED}] or pass seed=..."
                ) from None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seed = int(seed)  # also numpy integers
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed_everything(seed={seed!r}): the seed must be an int in [0, {_MAX_SEED}].")
    if verbose:
        print(f"Seed set to {seed}")
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = str(int(workers))
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)
    return seed
