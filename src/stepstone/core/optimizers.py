"""``configure_optimizers``: every return form Lightning accepts, and the scheduler configuration."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from stepstone.errors import MisconfigurationException

__all__ = ["LightningOptimizer", "SchedulerConfig", "parse_optimizers", "resolve_clipping"]

_SCHEDULER_KEYS = {"scheduler", "interval", "frequency", "monitor", "strict", "name", "reduce_on_plateau"}


@dataclass
class SchedulerConfig:
    """One learning-rate scheduler and when it steps (Lightning's ``lr_scheduler`` dict)."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None
    reduce_on_plateau: bool = False


class LightningOptimizer:
    """Wraps an optimizer so that its steps go through the Trainer (hooks, step counting, gradient scaling).

    Attribute access is forwarded to the wrapped optimizer (``param_groups``, ``state``, ...).

    Args:
        optimizer: the torch optimizer.
        step_fn: called as ``step_fn(optimizer, closure, kwargs)`` instead of ``optimizer.step``; None steps directly.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        step_fn: Callable[[Optimizer, Callable[[], Any] | None, dict[str, Any]], Any] | None = None,
    ) -> None:
        self._optimizer = optimizer
        self._step_fn = step_fn

    @property
    def optimizer(self) -> Optimizer:
        """The wrapped torch optimizer."""
        return self._optimizer

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this wrapper lacks. While copy/pickle rebuild it, ``_optimizer`` is not set
        # yet: reading it through ``self`` would recurse forever. Dunders (``__setstate__``, ...) are the
        # wrapper's own protocol, never the optimizer's.
        optimizer = self.__dict__.get("_optimizer")
        if optimizer is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(optimizer, name)

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Take an optimizer step (running ``closure`` first, if given).

        Returns:
            What the optimizer's ``step`` returned (the closure's loss, for closure-based optimizers).
        """
        if self._step_fn is not None:
            return self._step_fn(self._optimizer, closure, kwargs)
        return (
            self._optimizer.step(closure, **kwargs) if closure is not None else self._optimizer.step(**kwargs)
        )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the wrapped optimizer."""
        self._optimizer.zero_grad(set_to_none=set_to_none)


def _scheduler_config(item: Any, monitor: str | None) -> SchedulerConfig:
    if isinstance(item, Mapping):
        unknown = set(item) - _SCHEDULER_KEYS
        if unknown:
            raise MisconfigurationException(
                f"configure_optimizers: unknown keys {sorted(unknown)} in the lr_scheduler dict; valid keys are "
                f"{sorted(_SCHEDULER_KEYS)}."
            )
        if "scheduler" not in item:
            raise MisconfigurationException(
                "configure_optimizers: the lr_scheduler dict must have a 'scheduler' key, e.g. "
                "{'scheduler': StepLR(optimizer, 10), 'interval': 'epoch'}."
            )
        config = SchedulerConfig(**{k: v for k, v in item.items() if k != "reduce_on_plateau"})
        config.monitor = config.monitor or monitor
        explicit_plateau = item.get("reduce_on_plateau")
    else:
        config = SchedulerConfig(scheduler=item, monitor=monitor)
        explicit_plateau = None
    _check_scheduler_api(config.scheduler)
    if config.interval not in ("step", "epoch"):
        raise MisconfigurationException(
            f"configure_optimizers: lr_scheduler interval={config.interval!r} is invalid; use 'step' or 'epoch'."
        )
    if not isinstance(config.frequency, int) or config.frequency < 1:
        raise MisconfigurationException(
            f"configure_optimizers: lr_scheduler frequency={config.frequency!r} is invalid; use an int >= 1."
        )
    config.reduce_on_plateau = (
        isinstance(config.scheduler, ReduceLROnPlateau)
        if explicit_plateau is None
        else bool(explicit_plateau)
    )
    if config.reduce_on_plateau and config.monitor is None:
        raise MisconfigurationException(
            "configure_optimizers: a ReduceLROnPlateau scheduler needs a metric to monitor; return "
            "{'optimizer': opt, 'lr_scheduler': {'scheduler': sched, 'monitor': 'val_loss'}}."
        )
    return config


def _check_scheduler_api(scheduler: Any) -> None:
    missing = [
        name
        for name in ("step", "state_dict", "load_state_dict")
        if not callable(getattr(scheduler, name, None))
    ]
    if missing:
        raise MisconfigurationException(
            f"configure_optimizers returned a learning-rate scheduler of type {type(scheduler).__name__} without "
            f"{', '.join(missing)}; return a torch.optim.lr_scheduler object (or one with step/state_dict/"
            "load_state_dict), or override LightningModule.lr_scheduler_step for a custom scheduler."
        )


def _from_dict(item: Mapping[str, Any]) -> tuple[Optimizer, list[SchedulerConfig]]:
    unknown = set(item) - {"optimizer", "lr_scheduler", "monitor"}
    if unknown:
        warnings.warn(
            f"configure_optimizers returned a dict with unsupported keys {sorted(unknown)}; they are ignored "
            "(valid keys: 'optimizer', 'lr_scheduler', 'monitor').",
            RuntimeWarning,
            stacklevel=4,
        )
    if "optimizer" not in item:
        raise MisconfigurationException(
            f"configure_optimizers returned a dict without an 'optimizer' key (keys: {sorted(item)}); return "
            "{'optimizer': opt} or {'optimizer': opt, 'lr_scheduler': sched}."
        )
    scheduler = item.get("lr_scheduler")
    monitor = item.get("monitor")
    schedulers = [] if scheduler is None else [_scheduler_config(scheduler, monitor)]
    return item["optimizer"], schedulers


def parse_optimizers(returned: Any) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    """Normalize what ``configure_optimizers`` returned.

    Accepted (as in Lightning): None; an optimizer; a list/tuple of optimizers; two lists
    ``([optimizers], [schedulers])``; a dict with ``optimizer`` and optional ``lr_scheduler`` (object or config
    dict) and ``monitor``; a list/tuple of such dicts.

    Args:
        returned: the value returned by ``configure_optimizers``.

    Returns:
        The optimizers and the scheduler configurations.

    Raises:
        MisconfigurationException: for any other shape, naming what was received.
    """
    if returned is None:
        return [], []
    optimizers, schedulers = _split_returned(returned)
    _check_optimizers(optimizers, schedulers)
    return optimizers, schedulers


def _split_returned(returned: Any) -> tuple[list[Any], list[SchedulerConfig]]:
    """The optimizers (not yet checked) and scheduler configurations of each shape Lightning accepts."""
    if isinstance(returned, Optimizer):
        return [returned], []
    if isinstance(returned, Mapping):
        optimizer, configs = _from_dict(returned)
        return [optimizer], configs
    if isinstance(returned, Sequence) and len(returned) == 2 and isinstance(returned[0], Sequence):
        raw = returned[1] if isinstance(returned[1], Sequence) else [returned[1]]
        return list(returned[0]), [_scheduler_config(s, None) for s in raw]
    if isinstance(returned, Sequence) and all(isinstance(x, Mapping) for x in returned) and returned:
        optimizers: list[Any] = []
        schedulers: list[SchedulerConfig] = []
        for item in returned:
            opt, scheds = _from_dict(item)
            optimizers.append(opt)
            schedulers.extend(scheds)
        return optimizers, schedulers
    if isinstance(returned, Sequence) and all(isinstance(x, Optimizer) for x in returned):
        return list(returned), []
    raise MisconfigurationException(
        f"configure_optimizers returned {type(returned).__name__} ({returned!r:.80}); return an optimizer, a "
        "list of optimizers, ([optimizers], [schedulers]), or {'optimizer': ..., 'lr_scheduler': ...}."
    )


def _check_optimizers(optimizers: list[Any], schedulers: list[SchedulerConfig]) -> None:
    """Every optimizer is a torch optimizer and every scheduler steps one of them."""
    bad = [o for o in optimizers if not isinstance(o, Optimizer)]
    if bad:
        raise MisconfigurationException(
            f"configure_optimizers returned {type(bad[0]).__name__} where a torch.optim.Optimizer was expected."
        )
    for config in schedulers:
        owner = getattr(config.scheduler, "optimizer", None)
        if owner is not None and not any(owner is opt for opt in optimizers):
            raise MisconfigurationException(
                f"configure_optimizers returned a {type(config.scheduler).__name__} attached to an optimizer that "
                "is not among the returned optimizers; build the scheduler on one of them."
            )


def resolve_clipping(
    value: float | None, algorithm: str | None, trainer_value: float | None, trainer_algorithm: str | None
) -> tuple[float, str]:
    """The clipping value and algorithm for ``clip_gradients``: explicit arguments, else the Trainer's (Lightning).

    Returns:
        ``(value, algorithm)``; a value of 0 means no clipping.

    Raises:
        MisconfigurationException: an argument conflicts with the Trainer's setting, or the algorithm is unknown.
    """
    if value is None:
        value = trainer_value or 0.0
    elif trainer_value is not None and trainer_value != value:
        raise MisconfigurationException(
            f"Trainer(gradient_clip_val={trainer_value!r}) and clip_gradients(gradient_clip_val={value!r}) "
            "disagree; set only one of them."
        )
    if algorithm is None:
        algorithm = trainer_algorithm or "norm"
    else:
        algorithm = algorithm.lower()
        if trainer_algorithm is not None and trainer_algorithm != algorithm:
            raise MisconfigurationException(
                f"Trainer(gradient_clip_algorithm={trainer_algorithm!r}) and clip_gradients(gradient_clip_algorithm="
                f"{algorithm!r}) disagree; set only one of them."
            )
    if algorithm not in ("norm", "value"):
        raise MisconfigurationException(
            f"clip_gradients(gradient_clip_algorithm={algorithm!r}) is invalid; use 'norm' or 'value'."
        )
    return value, algorithm
