"""Where logged values go: ``callback_metrics``, the progress bar and the loggers (Lightning's rules).

The LightningModule's ``self.log`` lands in :meth:`MetricsHub.log`. Which defaults apply depends on the hook
that is running (``trainer._current_fx``): per-step in training-batch hooks, per-epoch in evaluation and
epoch hooks; logging from hooks where Lightning forbids it raises.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from stepstone.core.results import MetricMeta, Results, extract_batch_size, resolve_meta, to_metric_tensor
from stepstone.errors import MisconfigurationException

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["MetricsHub"]

# hook name -> (default on_step, default on_epoch, is a batch-level hook); epoch-level hooks allow only on_epoch.
_TRAIN_BATCH = (True, False, True)
_TRAIN_EPOCH = (False, True, False)
_EVAL_BATCH = (False, True, True)
_EVAL_EPOCH = (False, True, False)
_HOOK_DEFAULTS: dict[str, tuple[bool, bool, bool]] = {
    **dict.fromkeys(
        (
            "training_step",
            "on_train_batch_start",
            "on_train_batch_end",
            "on_before_backward",
            "backward",
            "on_after_backward",
            "on_before_optimizer_step",
            "optimizer_step",
            "configure_gradient_clipping",
            "clip_gradients",
            "on_before_zero_grad",
            "optimizer_zero_grad",
        ),
        _TRAIN_BATCH,
    ),
    **dict.fromkeys(("on_train_start", "on_train_epoch_start", "on_train_epoch_end"), _TRAIN_EPOCH),
    **dict.fromkeys(
        (
            "validation_step",
            "test_step",
            "on_validation_batch_start",
            "on_validation_batch_end",
            "on_test_batch_start",
            "on_test_batch_end",
        ),
        _EVAL_BATCH,
    ),
    **dict.fromkeys(
        (
            "on_validation_start",
            "on_validation_epoch_start",
            "on_validation_epoch_end",
            "on_test_start",
            "on_test_epoch_start",
            "on_test_epoch_end",
        ),
        _EVAL_EPOCH,
    ),
}


def _scalars(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.item()) for k, v in metrics.items()}


class MetricsHub:
    """Collects ``self.log`` calls and publishes them (one per Trainer).

    Where values go, as in Lightning: ``callback_metrics`` gets every step value logged in training and every
    epoch value (evaluation step values are not monitorable); ``logged_metrics`` and ``progress_bar`` get the
    ``name_step``/``name_epoch`` keys of metrics logged with ``logger=True``/``prog_bar=True``, whether or not a
    logger is attached; the loggers get training step values every ``log_every_n_steps`` optimizer steps,
    evaluation step values after each evaluation batch, and epoch values at each epoch end. Nothing is published
    during the sanity check.
    """

    def __init__(
        self, trainer: Trainer, sync: Callable[[torch.Tensor, str], torch.Tensor] | None = None
    ) -> None:
        self._trainer = trainer
        self.train_results = Results(sync)
        self.eval_results = Results(sync)
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, torch.Tensor] = {}
        self.progress_bar: dict[str, torch.Tensor] = {}
        self._pending_step_log: dict[str, torch.Tensor] = {}
        self.eval_dataloader_idx: int | None = None  # set when an evaluation has several dataloaders
        self.eval_steps_seen: dict[tuple[str, int], int] = {}  # evaluation step axis per (loop, dataloader)
        self.current_batch: Any = None
        self._warned_no_logger = False

    # --- recording ----------------------------------------------------------------------------------
    def log(self, fx: str | None, name: str, value: Any, **flags: Any) -> None:
        """Record one ``self.log`` call made from hook ``fx`` (flags are ``self.log``'s keyword arguments).

        Raises:
            MisconfigurationException: logging is not allowed in ``fx``, ``on_step=True`` in an epoch-level hook,
                a ``/dataloader_idx_`` name, or an invalid value or flag.
        """
        if fx not in _HOOK_DEFAULTS:
            raise MisconfigurationException(
                f"You can't call self.log({name!r}, ...) inside `{fx}`; log from training_step, validation_step, "
                "test_step or the batch/epoch hooks (e.g. on_train_epoch_end, on_validation_epoch_end)."
            )
        if "/dataloader_idx_" in name:
            raise MisconfigurationException(
                f"self.log({name!r}): the name must not contain '/dataloader_idx_'; the Trainer adds that suffix "
                "itself when an evaluation has several dataloaders."
            )
        default_step, default_epoch, batch_level = _HOOK_DEFAULTS[fx]
        meta = resolve_meta(
            name,
            default_on_step=default_step,
            default_on_epoch=default_epoch,
            on_step=flags.get("on_step"),
            on_epoch=flags.get("on_epoch"),
            prog_bar=flags.get("prog_bar", False),
            logger=flags.get("logger"),
            reduce_fx=flags.get("reduce_fx", "mean"),
            sync_dist=flags.get("sync_dist", False),
            fx=fx,
            dataloader_idx=self.eval_dataloader_idx if self._trainer._evaluating else None,
            add_dataloader_idx=flags.get("add_dataloader_idx", True),
        )
        if meta.on_step and not batch_level:
            raise MisconfigurationException(
                f"You can't self.log({name!r}, on_step=True) inside `{fx}`: it runs once per epoch. Use "
                "on_step=False (the default there), or log from a step or batch hook."
            )
        if flags.get("logger") and not self._trainer.loggers and not self._warned_no_logger:
            self._warned_no_logger = True
            warnings.warn(
                f"self.log({name!r}, ..., logger=True) was called but the Trainer has no logger; pass "
                "Trainer(logger=...) to record it, or drop logger=True.",
                UserWarning,
                stacklevel=3,
            )
        if flags.get("rank_zero_only") and not self._trainer.is_global_zero:
            return
        tensor = to_metric_tensor(name, value)
        batch_size = flags.get("batch_size")
        if batch_size is None:
            batch_size = (
                extract_batch_size(self.current_batch) if batch_level and meta.on_epoch else None
            ) or 1
        results = self.eval_results if self._trainer._evaluating else self.train_results
        metric = results.log(meta, tensor, int(batch_size))
        if meta.on_step and metric.step_value is not None:
            self._publish_step(meta, metric.step_value)
        if not batch_level:
            # Values logged in epoch-level hooks are final at once: callbacks that run right after
            # (ModelCheckpoint in on_train_epoch_end) must see them.
            epoch_value = results.epoch_value(metric)
            if epoch_value is not None:
                self._publish_epoch(meta, epoch_value)

    # --- publishing ---------------------------------------------------------------------------------
    def _publish_step(self, meta: MetricMeta, value: torch.Tensor) -> None:
        trainer = self._trainer
        if trainer.sanity_checking:
            return
        key = meta.forked_key("step")
        if not trainer._evaluating:
            self.callback_metrics[meta.key] = value
            self.callback_metrics[key] = value
        if meta.prog_bar:
            self.progress_bar[key] = value
        if meta.logger:
            self.logged_metrics[key] = value
            self._pending_step_log[key] = value

    def _publish_epoch(self, meta: MetricMeta, value: torch.Tensor) -> str | None:
        if self._trainer.sanity_checking:
            return None
        key = meta.forked_key("epoch")
        self.callback_metrics[meta.key] = value
        self.callback_metrics[key] = value
        if meta.prog_bar:
            self.progress_bar[key] = value
        if meta.logger:
            self.logged_metrics[key] = value
        return key

    def publish_epoch(self, results: Results) -> dict[str, torch.Tensor]:
        """Publish the epoch reductions of ``results``; returns those meant for loggers (by logged name)."""
        return {key: value for key, (_, value) in self.epoch_outputs(results).items()}

    def epoch_outputs(self, results: Results) -> dict[str, tuple[MetricMeta, torch.Tensor]]:
        """Publish the epoch reductions of ``results``; returns the logger-bound ones with their metadata."""
        out = {}
        for meta, value in results.epoch_values():
            key = self._publish_epoch(meta, value)
            if key is not None and meta.logger:
                out[key] = (meta, value)
        return out

    def flush_step(self, step: int, force: bool = False) -> None:
        """Send pending training step values to the loggers every ``log_every_n_steps`` optimizer steps."""
        if not self._pending_step_log:
            return
        every = self._trainer.log_every_n_steps
        if every > 0 and (force or (step + 1) % every == 0):
            self.send(self._pending_step_log, step)
        self._pending_step_log = {}

    def flush_eval_step(self, loop: str, dataloader_idx: int) -> None:
        """Send pending evaluation step values (Lightning: after every evaluation batch, on its own step axis)."""
        key = (loop, dataloader_idx)
        seen = self.eval_steps_seen.get(key, 0)
        self.eval_steps_seen[key] = seen + 1
        if self._pending_step_log and self._trainer.log_every_n_steps > 0:
            self.send(self._pending_step_log, seen, add_epoch=False)
        self._pending_step_log = {}

    def send(self, metrics: dict[str, torch.Tensor], step: int, add_epoch: bool = True) -> None:
        """Hand ``metrics`` to every logger (global rank 0 only), with the current ``epoch`` added."""
        trainer = self._trainer
        if not metrics or not trainer.loggers or not trainer.is_global_zero:
            return
        scalars = _scalars(metrics)
        if add_epoch:
            scalars.setdefault(
                "epoch", trainer.current_epoch
            )  # an int, as Lightning logs it (CSV "0", not "0.0")
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            logger.save()  # after every log_metrics, as Lightning: a file logger's rows reach the disk now

    def reset_all(self) -> None:
        """Forget every published value (after the sanity check, as Lightning does)."""
        self.callback_metrics.clear()
        self.logged_metrics.clear()
        self.progress_bar.clear()
        self._pending_step_log.clear()
        self.train_results.reset()
        self.eval_results.reset()

    def progress_bar_scalars(self) -> dict[str, float]:
        """The progress-bar metrics as Python floats."""
        return _scalars(self.progress_bar)
