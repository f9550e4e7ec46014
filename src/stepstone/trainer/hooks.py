"""Calling hooks on callbacks and on the LightningModule, in Lightning's order, cheaply.

The training loop calls a dozen hooks per batch. Most callbacks override few of them, so the callbacks that
override each hook are found once per run; a batch then costs one dict lookup per hook, not a Python call
per callback per hook.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from stepstone.callbacks.callback import Callback
from stepstone.core.hooks import ModelHooks
from stepstone.core.module import LightningModule
from stepstone.strategies import is_fsdp
from stepstone.strategies.ddp import DDPStrategy

if TYPE_CHECKING:
    from stepstone.profilers import Profiler
    from stepstone.trainer.trainer import Trainer

__all__ = ["HookRunner", "is_overridden", "step_arguments"]


def _empty_body() -> None:
    """A docstring and nothing else."""


# ModelHooks whose default body is empty: not calling them is the same as calling them.
_NOOP_HOOKS = frozenset(
    name
    for name, value in vars(ModelHooks).items()
    if callable(value)
    and getattr(value, "__code__", None) is not None
    and value.__code__.co_code == _empty_body.__code__.co_code
)


@functools.lru_cache(maxsize=256)
def _takes_batch_idx(function: Callable[..., Any]) -> bool:
    try:
        spec = inspect.getfullargspec(function)
    except TypeError:
        return True
    args = spec.args[1:] if inspect.ismethod(function) or spec.args[:1] == ["self"] else spec.args
    return "batch_idx" in args or spec.varargs is not None or len(args) >= 2


def step_arguments(
    step: Callable[..., Any], batch: Any, batch_idx: int, dataloader_idx: int | None
) -> tuple[Any, ...]:
    """The positional arguments for a ``*_step`` method, as Lightning builds them.

    ``batch_idx`` is passed only when the method can take it (a ``batch_idx`` parameter, ``*args``, or at least
    two parameters), so ``def training_step(self, batch)`` works; ``dataloader_idx`` only when given (several
    evaluation dataloaders).
    """
    function = getattr(step, "__func__", step)
    args: tuple[Any, ...] = (batch, batch_idx) if _takes_batch_idx(function) else (batch,)
    return args if dataloader_idx is None else (*args, dataloader_idx)


def is_overridden(name: str, instance: object, parent: type) -> bool:
    """Whether ``type(instance)`` (or the instance itself) defines ``name`` differently from ``parent``.

    A hook set to None (``model.val_dataloader = None``) is not overridden: Lightning's way to switch one off.
    """
    if getattr(instance, name, None) is None:
        return False
    if name in getattr(instance, "__dict__", {}):
        return True
    own = getattr(type(instance), name, None)
    base = getattr(parent, name, None)
    return own is not None and own is not base


class HookRunner:
    """Dispatches hooks for one Trainer.

    Args:
        trainer: the Trainer whose callbacks and module receive the hooks.
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self._cache: dict[tuple[str, bool | None], list[Callback]] = {}
        self._module_overrides: dict[str, bool] = {}
        # Set only for a recording profiler: the unprofiled path costs one ``is None`` test per hook.
        self.profiler: Profiler | None = None

    def reset(self) -> None:
        """Forget which callbacks and module override which hooks (call when either changes)."""
        self._cache.clear()
        self._module_overrides.clear()

    def _targets(self, name: str, monitoring: bool | None) -> Sequence[Callback]:
        key = (name, monitoring)
        found = self._cache.get(key)
        if found is None:
            found = [
                cb
                for cb in self._trainer.callbacks
                if is_overridden(name, cb, Callback)
                and (monitoring is None or getattr(cb, "_monitors_metrics", False) is monitoring)
            ]
            self._cache[key] = found
        return found

    def callbacks(self, name: str, *args: Any, monitoring: bool | None = None) -> None:
        """Call ``callback.name(trainer, module, *args)`` on every callback that overrides it.

        Args:
            name: the hook.
            *args: the hook's arguments after ``trainer`` and ``pl_module``.
            monitoring: None for all callbacks, True/False for only those that do / do not monitor metrics
                (Lightning runs metric-monitoring callbacks after the module in ``on_train_epoch_end``).
        """
        targets = self._targets(name, monitoring)
        if not targets:
            return
        trainer = self._trainer
        module = trainer._model
        # Written straight into __dict__: nn.Module.__setattr__ costs microseconds per call, per hook, per batch.
        state = module.__dict__
        previous = state.get("_current_fx_name")
        state["_current_fx_name"] = name
        profiler = self.profiler
        try:
            for callback in targets:
                if profiler is None:
                    getattr(callback, name)(trainer, module, *args)
                else:
                    with profiler.profile(f"[Callback]{callback.state_key}.{name}"):
                        getattr(callback, name)(trainer, module, *args)
        finally:
            state["_current_fx_name"] = previous

    def overrides(self, name: str) -> bool:
        """Whether the attached module overrides hook ``name`` (cached per run)."""
        found = self._module_overrides.get(name)
        if found is None:
            found = self._module_overrides[name] = is_overridden(name, self._trainer._model, LightningModule)
        return found

    def module(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``module.name(*args, **kwargs)`` with ``self.log`` attributed to hook ``name``; returns its result.

        Hooks whose default does nothing are skipped when the module does not override them.
        """
        if name in _NOOP_HOOKS and not self.overrides(name):
            return None
        module = self._trainer._model
        state = module.__dict__
        previous = state.get("_current_fx_name")
        state["_current_fx_name"] = name
        profiler = self.profiler
        try:
            if profiler is None:
                return getattr(module, name)(*args, **kwargs)
            with profiler.profile(f"[LightningModule]{type(module).__name__}.{name}"):
                return getattr(module, name)(*args, **kwargs)
        finally:
            state["_current_fx_name"] = previous

    def training_step(self, *args: Any) -> Any:
        """``module.training_step(*args)``, through the DDP/FSDP wrapper when there is one (so backward syncs)."""
        strategy = self._trainer._strategy
        if strategy is None or strategy.model is None:
            return self.module("training_step", *args)
        return self._through(strategy, "training_step", args)

    def step(self, name: str, *args: Any) -> Any:
        """``module.<name>(*args)`` for an evaluation/prediction step; under FSDP through the strategy.

        A sharded module's parameters are gathered only around calls FSDP hooks; the strategy registers the
        step as such a call. Other strategies evaluate the module directly.
        """
        strategy = self._trainer._strategy
        if not is_fsdp(strategy) or strategy._module is None:
            return self.module(name, *args)
        return self._through(strategy, name, args)

    def _through(self, strategy: DDPStrategy, name: str, args: tuple[Any, ...]) -> Any:
        # As ``module`` does: the hook's name is current while it runs (self.log reads it).
        state = self._trainer._model.__dict__
        previous = state.get("_current_fx_name")
        state["_current_fx_name"] = name
        profiler = self.profiler
        try:
            if profiler is None:
                return strategy.call(name, *args)
            with profiler.profile(f"[Strategy]{type(strategy).__name__}.{name}"):
                return strategy.call(name, *args)
        finally:
            state["_current_fx_name"] = previous

    def both(self, name: str, *args: Any) -> Any:
        """Callbacks first, then the module (Lightning's order for most hooks); returns the module's result."""
        self.callbacks(name, *args)
        return self.module(name, *args)

    def datamodule(self, name: str, *args: Any) -> None:
        """Call a hook on the attached datamodule, if there is one."""
        datamodule = self._trainer.datamodule
        if datamodule is None:
            return
        if self.profiler is None:
            getattr(datamodule, name)(*args)
            return
        with self.profiler.profile(f"[LightningDataModule]{type(datamodule).__name__}.{name}"):
            getattr(datamodule, name)(*args)
