"""Validation of the Trainer's arguments: each check names the argument, the value and the fix."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from stepstone.errors import MisconfigurationException

if TYPE_CHECKING:
    from stepstone.profilers import Profiler

__all__ = [
    "check_barebones",
    "check_bool",
    "check_clipping",
    "check_int",
    "check_limit",
    "check_val_check_interval",
    "resolve_fast_dev_run",
    "resolve_max_epochs",
    "resolve_max_time",
    "resolve_overfit_batches",
    "resolve_plugins",
    "resolve_profiler",
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
    number: int | float = value  # not a bool (rejected above)
    if isinstance(number, float) and number > 1.0 and number.is_integer():
        number = int(number)  # Lightning reads 10.0 as 10 batches
    if isinstance(number, int):
        if number < 0:
            raise MisconfigurationException(
                f"Trainer({name}={number}) is invalid; a number of batches must be >= 0 (0 disables the loop)."
            )
        return number
    if not 0.0 <= number <= 1.0:  # also NaN
        example = max(int(number), 1) if math.isfinite(number) else 10
        raise MisconfigurationException(
            f"Trainer({name}={number}) is invalid; a fraction must be in [0.0, 1.0]. To run a fixed number of "
            f"batches pass an int, e.g. {name}={example}."
        )
    return number


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
    number: int | float = value  # not a bool (rejected above)
    if isinstance(number, float) and number > 1.0 and number.is_integer():
        number = int(number)  # Lightning reads 10.0 as every 10 batches
    if isinstance(number, int) and number < 1:
        raise MisconfigurationException(
            f"Trainer(val_check_interval={number}) is invalid; an int must be >= 1. To disable validation, pass "
            "limit_val_batches=0."
        )
    if isinstance(number, float) and not 0.0 < number <= 1.0:
        raise MisconfigurationException(
            f"Trainer(val_check_interval={number}) is invalid; a float must be in (0.0, 1.0]. To validate every "
            "N batches pass an int."
        )
    return number


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


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool.

    Raises:
        MisconfigurationException: naming ``name`` and ``value``.
    """
    if not isinstance(value, bool):
        raise MisconfigurationException(f"Trainer({name}={value!r}) is invalid; pass True or False.")
    return value


def resolve_overfit_batches(value: Any) -> int | float:
    """Validate ``overfit_batches``: 0 (off, the default), an int number of batches or a fraction in [0.0, 1.0].

    Raises:
        MisconfigurationException: for negative numbers, fractions above 1.0 or other types.
    """
    return check_limit("overfit_batches", value)


# barebones: (argument, the feature it switches off).
_BAREBONES_OFF = (
    ("enable_checkpointing", "Checkpointing"),
    ("logger", "Logging"),
    ("enable_progress_bar", "The progress bar"),
    ("log_every_n_steps", "Logging"),
    ("enable_model_summary", "Model summary"),
    ("num_sanity_val_steps", "Sanity checking"),
    ("fast_dev_run", "Development run"),
    ("detect_anomaly", "Anomaly detection"),
    ("profiler", "Profiling"),
)


def check_barebones(**given: Any) -> None:
    """Lightning's ``barebones=True`` check: every feature that costs speed is off, asking for one is an error.

    Args:
        **given: the Trainer arguments ``barebones`` switches off (``enable_checkpointing``, ``logger``, ...).

    Raises:
        MisconfigurationException: one of them asks for its feature (an explicit off, such as False, 0 or None,
            is accepted; for ``profiler`` only None).
    """
    for name, feature in _BAREBONES_OFF:
        value = given[name]
        allowed = value is None if name == "profiler" else _is_off(value)
        if not allowed:
            raise MisconfigurationException(
                f"Trainer(barebones=True, {name}={value!r}) is invalid: {feature} can impact raw speed so it is "
                f"disabled in barebones mode. Remove {name}={value!r} or pass barebones=False."
            )


def _is_off(value: Any) -> bool:
    return value is None or (isinstance(value, (bool, int)) and not value)


def resolve_profiler(value: Any) -> Profiler:
    """``profiler=``: None (no profiling), ``"simple"`` or a :class:`~stepstone.profilers.Profiler`.

    Returns:
        The profiler (a :class:`~stepstone.profilers.PassThroughProfiler` for None).

    Raises:
        MisconfigurationException: another string or type.
    """
    from stepstone.profilers import PassThroughProfiler, Profiler, SimpleProfiler

    if value is None:
        return PassThroughProfiler()
    if isinstance(value, Profiler):
        return value
    if isinstance(value, str) and value.lower() == "simple":
        return SimpleProfiler()
    raise MisconfigurationException(
        f"Trainer(profiler={value!r}) is invalid; pass None, 'simple' or a stepstone.profilers.Profiler instance "
        "(e.g. SimpleProfiler(filename='perf'))."
    )


def check_clipping(value: Any, algorithm: Any) -> tuple[float | None, str | None]:
    """Validate ``gradient_clip_val`` (a number >= 0 or None) and ``gradient_clip_algorithm``.

    Returns:
        The value as a float (or None) and the algorithm lowercased (None stays None, meaning ``"norm"``).

    Raises:
        MisconfigurationException: naming the argument and the value.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        raise MisconfigurationException(
            f"Trainer(gradient_clip_val={value!r}) is invalid; pass a number >= 0 (or None for no clipping)."
        )
    if algorithm is not None and (
        not isinstance(algorithm, str) or algorithm.lower() not in ("norm", "value")
    ):
        raise MisconfigurationException(
            f"Trainer(gradient_clip_algorithm={algorithm!r}) is invalid; pass 'norm' or 'value'."
        )
    # As in Lightning, an unset algorithm stays None (clipping then defaults to "norm").
    return (float(value) if value is not None else None), (
        algorithm.lower() if algorithm is not None else None
    )


def resolve_plugins(plugins: Any) -> bool:
    """Whether the plugins ask for asynchronous checkpointing (the only plugin supported).

    Raises:
        MisconfigurationException: any other plugin.
    """
    from stepstone.plugins import AsyncCheckpointIO

    items = list(plugins) if isinstance(plugins, (list, tuple)) else [] if plugins is None else [plugins]
    unsupported = [item for item in items if not isinstance(item, AsyncCheckpointIO)]
    if unsupported:
        raise MisconfigurationException(
            f"Trainer(plugins={plugins!r}) is not supported: the only plugin is "
            "stepstone.plugins.AsyncCheckpointIO(); remove the others."
        )
    return bool(items)
