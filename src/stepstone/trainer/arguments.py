"""Validation of the Trainer's arguments: each check names the argument, the value and the fix."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from stepstone.errors import MisconfigurationException

__all__ = [
    "check_int",
    "check_limit",
    "check_val_check_interval",
    "resolve_fast_dev_run",
    "resolve_max_epochs",
    "resolve_max_time",
]


def check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> int | None:
    """Return ``value`` if it is an int >= ``minimum`` (or None when allowed).

    Raises:
        MisconfigurationException: naming ``name`` and ``value``.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        none = " or None" if allow_none else ""
        raise MisconfigurationException(
            f"Trainer({name}={value!r}) is invalid; pass an int >= {minimum}{none}."
        )
    return value


def check_limit(name: str, value: Any) -> int | float:
    """Validate ``limit_*_batches``: an int >= 0 (a number of batches) or a float in [0.0, 1.0] (a fraction).

    A float above 1.0 with an integral value (``10.0``) is read as that many batches, as Lightning does.

    Returns:
        The value, with None meaning 1.0 (all batches).

    Raises:
        MisconfigurationException: for negative numbers, fractions above 1.0 or other types.
    """
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MisconfigurationException(
            f"Trainer({name}={value!r}) is invalid; pass an int (number of batches) or a float in [0.0, 1.0] "
            "(fraction of the batches)."
        )
    if isinstance(value, float) and value > 1.0 and value.is_integer():
        value = int(value)  # Lightning reads 10.0 as 10 batches
    if isinstance(value, int):
        if value < 0:
            raise MisconfigurationException(
                f"Trainer({name}={value}) is invalid; a number of batches must be >= 0 (0 disables the loop)."
            )
        return value
    if not 0.0 <= value <= 1.0:  # also NaN
        example = max(int(value), 1) if math.isfinite(value) else 10
        raise MisconfigurationException(
            f"Trainer({name}={value}) is invalid; a fraction must be in [0.0, 1.0]. To run a fixed number of "
            f"batches pass an int, e.g. {name}={example}."
        )
    return value


def check_val_check_interval(value: Any) -> int | float:
    """Validate ``val_check_interval``: an int >= 1 (every N training batches) or a float in (0.0, 1.0].

    Raises:
        MisconfigurationException: naming the value and the valid forms.
    """
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MisconfigurationException(
            f"Trainer(val_check_interval={value!r}) is invalid; pass an int >= 1 (every N training batches) or a "
            "float in (0.0, 1.0] (a fraction of the epoch)."
        )
    if isinstance(value, float) and value > 1.0 and value.is_integer():
        value = int(value)  # Lightning reads 10.0 as every 10 batches
    if isinstance(value, int) and value < 1:
        raise MisconfigurationException(
            f"Trainer(val_check_interval={value}) is invalid; an int must be >= 1. To disable validation, pass "
            "limit_val_batches=0."
        )
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise MisconfigurationException(
            f"Trainer(val_check_interval={value}) is invalid; a float must be in (0.0, 1.0]. To validate every "
            "N batches pass an int."
        )
    return value


def resolve_max_epochs(max_epochs: Any, max_steps: int, max_time: Any) -> int:
    """Lightning's default: 1000 epochs when neither ``max_steps`` nor ``max_time`` is set, else unlimited (-1).

    Raises:
        MisconfigurationException: ``max_epochs`` is below -1 or not an int.
    """
    if max_epochs is None:
        return 1000 if max_steps == -1 and max_time is None else -1
    if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < -1:
        raise MisconfigurationException(
            f"Trainer(max_epochs={max_epochs!r}) is invalid; pass an int >= 0, or -1 for no epoch limit."
        )
    return max_epochs


def resolve_max_time(value: Any) -> timedelta | None:
    """Accept a ``timedelta``, a dict of ``timedelta`` arguments or ``"DD:HH:MM:SS"`` (the Timer's forms).

    Raises:
        MisconfigurationException: for any other form.
        TypeError: a dict with keys ``timedelta`` does not take.
    """
    from stepstone.callbacks.timer import parse_duration

    return parse_duration(value, "Trainer(max_time")


def resolve_fast_dev_run(value: Any) -> int:
    """Return the number of batches ``fast_dev_run`` asks for (0 = off).

    Raises:
        MisconfigurationException: for negative numbers or other types.
    """
    if value is False or value is None:
        return 0
    if value is True:
        return 1
    if isinstance(value, int) and value >= 0:
        return value
    raise MisconfigurationException(
        f"Trainer(fast_dev_run={value!r}) is invalid; pass True, False, or an int >= 0 (batches to run)."
    )
