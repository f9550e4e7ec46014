"""Checks of a run's configuration that need the model or the data, and the console reports of a run."""

from __future__ import annotations

import math
import sys
import warnings
from typing import TYPE_CHECKING, Any

from stepstone.core.module import LightningModule
from stepstone.errors import MisconfigurationException
from stepstone.trainer.hooks import is_overridden

if TYPE_CHECKING:
    from stepstone.trainer.state import TrainerFn
    from stepstone.trainer.trainer import Trainer

__all__ = [
    "check_data_arguments",
    "check_fit_methods",
    "check_optimization",
    "check_sync_batchnorm",
    "print_results",
    "val_check_batch",
    "warn_eval_modules",
]


def check_fit_methods(module: LightningModule) -> None:
    """Raise unless ``module`` defines what fit needs (``training_step`` and ``configure_optimizers``)."""
    if not is_overridden("training_step", module, LightningModule):
        raise MisconfigurationException(
            "No `training_step()` method defined: the Trainer needs training_step, configure_optimizers and "
            "training data to fit."
        )
    if not is_overridden("configure_optimizers", module, LightningModule):
        raise MisconfigurationException(
            "No `configure_optimizers()` method defined: return an optimizer from it, e.g. "
            "torch.optim.Adam(self.parameters(), lr=1e-3)."
        )


def check_optimization(trainer: Trainer, module: LightningModule) -> None:
    """Raise for optimizer settings that do not fit the module's optimization mode (Lightning's rules)."""
    if module.automatic_optimization and len(trainer.optimizers) > 1:
        raise MisconfigurationException(
            "configure_optimizers returned several optimizers, which needs manual optimization: set "
            "self.automatic_optimization = False and step them in training_step (self.optimizers())."
        )
    if not module.automatic_optimization and trainer.accumulate_grad_batches != 1:
        raise MisconfigurationException(
            f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) is not supported with manual "
            "optimization; accumulate in training_step yourself or use automatic optimization."
        )
    if not module.automatic_optimization and trainer.gradient_clip_val:
        raise MisconfigurationException(
            f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) is not supported with manual optimization; "
            "call self.clip_gradients(optimizer, gradient_clip_val=...) in training_step instead."
        )


def val_check_batch(trainer: Trainer) -> int | float:
    """After how many training batches validation runs (``inf``: at the end of an unsized epoch).

    Raises:
        MisconfigurationException: an int interval longer than the epoch, or a fraction of unsized data.
    """
    interval, batches = trainer.val_check_interval, trainer.num_training_batches
    if isinstance(interval, int):
        if trainer.check_val_every_n_epoch is not None and not math.isinf(batches) and interval > batches:
            raise MisconfigurationException(
                f"Trainer(val_check_interval={interval}) must be <= the number of training batches ({batches}). "
                "To validate across epochs every N batches, pass check_val_every_n_epoch=None; to disable "
                "validation, pass limit_val_batches=0."
            )
        return interval
    if math.isinf(batches):
        if interval != 1.0:
            raise MisconfigurationException(
                f"Trainer(val_check_interval={interval}) is a fraction, but the training data has no length; "
                "pass an int number of batches."
            )
        return math.inf
    return max(1, int(batches * interval))


def warn_eval_modules(module: LightningModule) -> None:
    """Warn (as Lightning 2.2+ does) about submodules left in eval mode at the start of training."""
    in_eval = [name or type(module).__name__ for name, sub in module.named_modules() if not sub.training]
    if in_eval:
        warnings.warn(
            f"Found {len(in_eval)} module(s) in eval mode at the start of training ({', '.join(in_eval[:5])}"
            f"{', ...' if len(in_eval) > 5 else ''}). They stay in eval mode; if that is not intended, call "
            "model.train() before fit.",
            UserWarning,
            stacklevel=7,
        )


def check_data_arguments(fn: TrainerFn, dataloaders: Any, datamodule: Any) -> None:
    """Raise when both dataloaders and a datamodule are given to validate/test/predict."""
    if dataloaders is not None and datamodule is not None:
        raise MisconfigurationException(
            f"trainer.{fn.value}() received both dataloaders and a datamodule; pass one of them."
        )


def print_results(stage: str, results: list[dict[str, float]]) -> None:
    """The metrics of ``validate``/``test``, per dataloader."""
    for idx, metrics in enumerate(results):
        header = f"{stage} metrics" + (f" (dataloader {idx})" if len(results) > 1 else "")
        print(header, file=sys.stderr)
        for key, value in sorted(metrics.items()):
            print(f"  {key:<30} {value:.6g}", file=sys.stderr)


def check_sync_batchnorm(trainer: Trainer) -> None:
    """Before DDP wraps the module: torch's SyncBatchNorm runs only on GPUs (DDP would refuse it on CPU).

    Raises:
        MisconfigurationException: ``sync_batchnorm=True`` on a device that is not CUDA.
    """
    device = trainer._placement.device
    if trainer._sync_batchnorm and device.type != "cuda":
        raise MisconfigurationException(
            f"Trainer(sync_batchnorm=True) needs CUDA devices: torch's SyncBatchNorm layers only work with GPU "
            f"modules, and this run is on {device.type!r}. Pass sync_batchnorm=False, or accelerator='gpu'."
        )
