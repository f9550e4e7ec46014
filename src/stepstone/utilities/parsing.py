"""Lightning's ``lightning.pytorch.utilities.parsing`` names: checking hyperparameter values."""

from __future__ import annotations

import pickle

from stepstone.core.hparams import AttributeDict

__all__ = ["AttributeDict", "is_picklable"]


def is_picklable(obj: object) -> bool:
    """Whether ``pickle.dumps(obj)`` succeeds (Lightning's ``is_picklable``).

    Args:
        obj: any object.

    Returns:
        False when pickling fails with the errors Lightning catches (``PickleError``, ``AttributeError``,
        ``RuntimeError``, ``TypeError``: a lambda, a local class, an open file, a lock); True otherwise.
    """
    try:
        pickle.dumps(obj)
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False
    return True
