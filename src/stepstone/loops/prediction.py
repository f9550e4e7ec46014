"""The predict loop."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from stepstone.loops.batches import iterate_batches
from stepstone.loops.evaluation import capture_modes, restore_modes
from stepstone.trainer.hooks import step_arguments

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["run_prediction"]


def run_prediction(
    trainer: Trainer, loaders: Sequence[Iterable[Any]], limits: Sequence[int | float], keep: bool
) -> list[Any] | None:
    """Run ``predict_step`` over ``loaders``.

    Args:
        trainer: the Trainer.
        loaders: the dataloaders.
        limits: how many batches of each loader to run.
        keep: whether to collect and return the predictions.

    Returns:
        The predictions: a list per batch for one dataloader, a list of such lists for several; None if not kept.
    """
    hooks = trainer._hooks
    step = trainer.lightning_module.predict_step
    several = len(loaders) > 1
    collected: list[list[Any]] = []
    modes = capture_modes(trainer.lightning_module)
    hooks.module("on_predict_model_eval")
    context = torch.inference_mode() if trainer.inference_mode else torch.no_grad()
    try:
        with context:
            hooks.both("on_predict_start")
            hooks.both("on_predict_epoch_start")
            for dl_idx, (loader, limit) in enumerate(zip(loaders, limits, strict=True)):
                collected.append(_run_loader(trainer, step, loader, limit, dl_idx if several else None, keep))
            hooks.both("on_predict_epoch_end")
            hooks.both("on_predict_end")
    finally:
        restore_modes(modes)  # as Lightning: the module's (and submodules') modes come back after predict
    if not keep:
        return None
    return collected if several else collected[0]


def _run_loader(
    trainer: Trainer, step: Any, loader: Iterable[Any], limit: int | float, dl_idx: int | None, keep: bool
) -> list[Any]:
    hooks = trainer._hooks
    extra: tuple[int, ...] = () if dl_idx is None else (dl_idx,)
    outputs: list[Any] = []
    for batch_idx, batch, _ in iterate_batches(loader, 0, limit):
        batch = trainer._transfer_batch(batch, dl_idx or 0)
        hooks.callbacks("on_predict_batch_start", batch, batch_idx, *extra)
        hooks.module("on_predict_batch_start", batch, batch_idx, *extra)
        with trainer._placement.forward_context():
            output = hooks.step("predict_step", *step_arguments(step, batch, batch_idx, dl_idx))
        hooks.callbacks("on_predict_batch_end", output, batch, batch_idx, *extra)
        hooks.module("on_predict_batch_end", output, batch, batch_idx, *extra)
        if keep:
            outputs.append(output)
    return outputs
