"""LearningRateMonitor: log each optimizer's learning rate (and optionally momentum, weight decay) to the loggers.

Names, steps and intervals are Lightning's: ``lr-<OptimizerClass>`` (``-1``, ``-2`` for further optimizers of
the same class, ``/pg1``, ``/pg2`` or ``/<group name>`` per parameter group, a scheduler's ``name`` instead of
``lr-<OptimizerClass>``), logged at the loggers' step axis (``trainer.fit_loop`` batches that stepped).
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.optim import Optimizer
from typing_extensions import override

import stepstone
from stepstone.callbacks.callback import Callback
from stepstone.errors import MisconfigurationException

if TYPE_CHECKING:
    from stepstone.core.optimizers import SchedulerConfig

__all__ = ["LearningRateMonitor"]


class LearningRateMonitor(Callback):
    """Log the learning rate of every optimizer while training (Lightning's callback).

    Optimizers with a scheduler are logged when their scheduler's ``interval`` comes (``"step"``: at the start
    of each batch the loggers record, i.e. every ``log_every_n_steps``; ``"epoch"``: at each epoch start);
    optimizers without one are logged at both. ``logging_interval`` forces one interval for all.

    Args:
        logging_interval: ``None`` (each scheduler's own interval), ``"step"`` or ``"epoch"``.
        log_momentum: also log ``<name>-momentum`` (``betas[0]`` for Adam-like optimizers, else ``momentum``,
            0 when the optimizer has neither).
        log_weight_decay: also log ``<name>-weight_decay``.

    Raises:
        MisconfigurationException: ``logging_interval`` is not None, ``"step"`` or ``"epoch"``.
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
    ) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationException(
                f"LearningRateMonitor(logging_interval={logging_interval!r}) is invalid; pass 'step', 'epoch' or "
                "None (each scheduler's own interval)."
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}

    @override
    def on_train_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Check that there is a logger and fix the logged names.

        Raises:
            MisconfigurationException: the Trainer has no logger.
        """
        # fast_dev_run drops the loggers; Lightning keeps a do-nothing logger there, so that is no error.
        if not trainer.loggers and not trainer.fast_dev_run:
            raise MisconfigurationException(
                "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger: pass "
                "Trainer(logger=True) (a CSVLogger) or another logger, or remove the callback."
            )
        if self.log_momentum and _lacks(trainer, "momentum") and _lacks(trainer, "betas"):
            warnings.warn(
                "You have set log_momentum=True, but some optimizers do not have momentum. This will log a value 0 "
                "for the momentum.",
                RuntimeWarning,
                stacklevel=2,
            )
        scheduler_names, seen, counts = _scheduler_names(trainer.lr_scheduler_configs)
        optimizer_names, _ = _optimizer_names(trainer.optimizers, seen, counts)
        names = [name for group in (*scheduler_names, *optimizer_names) for name in group]
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}

    @override
    def on_train_batch_start(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Log the step-interval values when the loggers record this batch."""
        if self.logging_interval != "epoch" and _logs_this_step(trainer):
            self._log(trainer, "step" if self.logging_interval is None else "any")

    @override
    def on_train_epoch_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Log the epoch-interval values."""
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    def _log(self, trainer: stepstone.Trainer, interval: str) -> None:
        stats = self._extract_stats(trainer, interval)
        if not stats:
            return
        # Visible to callbacks (e.g. a ModelCheckpoint monitoring "lr-SGD"), as in Lightning.
        trainer.callback_metrics.update({k: torch.tensor(v, device=trainer.device) for k, v in stats.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=trainer.fit_loop.batches_that_stepped)

    def _extract_stats(self, trainer: stepstone.Trainer, interval: str) -> dict[str, float]:
        """The values due at ``interval`` (``"step"``, ``"epoch"`` or ``"any"``), recorded in :attr:`lrs`."""
        stats: dict[str, float] = {}
        configs = trainer.lr_scheduler_configs
        scheduler_names, seen, counts = _scheduler_names(configs)
        self._remap_keys(scheduler_names)
        for names, config in zip(scheduler_names, configs, strict=True):
            if interval in (config.interval, "any"):
                stats.update(self._optimizer_stats(config.scheduler.optimizer, names))
        optimizer_names, unscheduled = _optimizer_names(trainer.optimizers, seen, counts)
        self._remap_keys(optimizer_names)
        for optimizer, names in zip(unscheduled, optimizer_names, strict=True):
            stats.update(self._optimizer_stats(optimizer, names))
        return stats

    def _remap_keys(self, names: list[list[str]], token: str = "/pg1") -> None:
        """Keep an optimizer's history when it grows from one parameter group (``lr-X``) to several (``lr-X/pg1``)."""
        for group in names:
            for name in group:
                old = name.replace(token, "")
                if token in name and old in self.lrs:
                    self.lrs[name] = self.lrs.pop(old)
                else:
                    self.lrs.setdefault(name, [])

    def _optimizer_stats(self, optimizer: Optimizer, names: list[str]) -> dict[str, float]:
        stats: dict[str, float] = {}
        betas = "betas" in optimizer.defaults
        for group, name in zip(optimizer.param_groups, names, strict=True):
            stats[name] = group["lr"]
            self.lrs[name].append(group["lr"])
            if self.log_momentum:
                momentum = group["betas"][0] if betas else group.get("momentum", 0)
                stats[f"{name}-momentum"] = momentum
                self.last_momentum_values[f"{name}-momentum"] = momentum
            if self.log_weight_decay:
                stats[f"{name}-weight_decay"] = group["weight_decay"]
                self.last_weight_decay_values[f"{name}-weight_decay"] = group["weight_decay"]
        return stats


def _logs_this_step(trainer: stepstone.Trainer) -> bool:
    """Lightning's ``should_update_logs`` seen before a training batch: the loggers record the coming step."""
    every = trainer.log_every_n_steps
    if every == 0:
        return False
    return (trainer.fit_loop.batches_that_stepped + 1) % every == 0 or trainer.should_stop


def _lacks(trainer: stepstone.Trainer, key: str) -> bool:
    """Whether some optimizer (through its scheduler, when there are schedulers) has no default ``key``."""
    if trainer.lr_scheduler_configs:
        return any(key not in c.scheduler.optimizer.defaults for c in trainer.lr_scheduler_configs)
    return any(key not in optimizer.defaults for optimizer in trainer.optimizers)


def _scheduler_names(
    configs: list[SchedulerConfig],
) -> tuple[list[list[str]], list[Optimizer], Counter[type[Optimizer]]]:
    """Per scheduler, the names of its optimizer's groups; also the optimizers seen and their class counts."""
    names: list[list[str]] = []
    seen: list[Optimizer] = []
    counts: Counter[type[Optimizer]] = Counter()
    for config in configs:
        optimizer = config.scheduler.optimizer
        base = config.name if config.name is not None else f"lr-{type(optimizer).__name__}"
        names.append(_group_names(optimizer, base, seen, counts, named=config.name is not None))
    return names, seen, counts


def _optimizer_names(
    optimizers: list[Any], seen: list[Optimizer], counts: Counter[type[Optimizer]]
) -> tuple[list[list[str]], list[Optimizer]]:
    """Names of the optimizers no scheduler covers, and those optimizers."""
    names, unscheduled = [], []
    for optimizer in optimizers:
        optimizer = getattr(
            optimizer, "optimizer", optimizer
        )  # a wrapper (LightningOptimizer) holds the real one
        if any(optimizer is other for other in seen):
            continue
        names.append(_group_names(optimizer, f"lr-{type(optimizer).__name__}", seen, counts, named=False))
        unscheduled.append(optimizer)
    return names, unscheduled


def _group_names(
    optimizer: Optimizer, base: str, seen: list[Optimizer], counts: Counter[type[Optimizer]], named: bool
) -> list[str]:
    """``base`` with Lightning's class-count suffix (``-1``...) and one entry per parameter group.

    Raises:
        MisconfigurationException: two parameter groups of ``optimizer`` share a ``name``.
    """
    seen.append(optimizer)
    cls = type(optimizer)
    if not named:  # a scheduler's own name does not count towards the class's numbering
        counts[cls] += 1
    groups = optimizer.param_groups
    group_keys = [group.get("name", f"pg{i}") for i, group in enumerate(groups, start=1)]
    duplicates = {key for key in group_keys if group_keys.count(key) > 1}
    if duplicates:
        raise MisconfigurationException(
            "A single `Optimizer` cannot have multiple parameter groups with identical `name` values. "
            f"{base} has duplicated parameter group names {duplicates}; give each group its own 'name'."
        )
    if counts[cls] > 1:
        base = f"{base}-{counts[cls] - 1}"
    if len(groups) > 1:
        return [f"{base}/{group.get('name', f'pg{i}')}" for i, group in enumerate(groups, start=1)]
    return [f"{base}/{group['name']}" if group.get("name") else base for group in groups]
