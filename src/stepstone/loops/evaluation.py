"""The evaluation loop: validation (inside fit, ``validate`` and the sanity check) and test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from stepstone.core.module import LightningModule
from stepstone.core.results import MetricMeta
from stepstone.loops.batches import iterate_batches
from stepstone.trainer.hooks import is_overridden, step_arguments

if TYPE_CHECKING:
    from stepstone.loops.progress import BatchProgress
    from stepstone.trainer.trainer import Trainer

__all__ = ["capture_modes", "restore_modes", "run_evaluation"]


def capture_modes(module: torch.nn.Module) -> list[tuple[torch.nn.Module, bool]]:
    """The train/eval mode of ``module`` and each of its submodules."""
    return [(sub, sub.training) for sub in module.modules()]


def restore_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    """Give every submodule back the mode :func:`capture_modes` saw (frozen parts stay in eval mode)."""
    for sub, training in modes:
        sub.training = training


def _per_loader(logged: dict[str, tuple[MetricMeta, torch.Tensor]], count: int) -> list[dict[str, float]]:
    """Split logged metrics by the dataloader they were logged for (epoch-hook metrics belong to every loader)."""
    results: list[dict[str, float]] = [{} for _ in range(count)]
    for key, (meta, value) in logged.items():
        for idx in range(count):
            if meta.dataloader_idx is None or meta.dataloader_idx == idx:
                results[idx][key] = float(value.item())
    return results


def _run_loader(
    trainer: Trainer,
    name: str,
    loader: Iterable[Any],
    limit: int | float,
    dl_idx: int | None,
    progress: BatchProgress | None,
) -> None:
    hooks = trainer._hooks
    hub = trainer._metrics
    step = getattr(trainer.lightning_module, f"{name}_step")
    extra: tuple[int, ...] = () if dl_idx is None else (dl_idx,)
    sanity = trainer.sanity_checking
    for batch_idx, batch, is_last in iterate_batches(loader, 0, limit):
        batch = trainer._transfer_batch(batch, dl_idx or 0)
        hub.current_batch = batch
        if progress is not None:
            progress.is_last_batch = is_last
            progress.increment("ready")
        hooks.callbacks(f"on_{name}_batch_start", batch, batch_idx, *extra)
        hooks.module(f"on_{name}_batch_start", batch, batch_idx, *extra)
        if progress is not None:
            progress.increment("started")
        with trainer._placement.forward_context():
            output = hooks.step(f"{name}_step", *step_arguments(step, batch, batch_idx, dl_idx))
        if progress is not None:
            progress.increment("processed")
        hooks.callbacks(f"on_{name}_batch_end", output, batch, batch_idx, *extra)
        hooks.module(f"on_{name}_batch_end", output, batch, batch_idx, *extra)
        hub.current_batch = None
        if progress is not None:
            progress.increment("completed")
        if not sanity:
            hub.flush_eval_step(name, dl_idx or 0)


def run_evaluation(
    trainer: Trainer,
    name: str,
    loaders: Sequence[Iterable[Any]],
    limits: Sequence[int | float],
    log_step: int | None,
    inference_mode: bool,
    progress: BatchProgress | None = None,
) -> list[dict[str, float]]:
    """Run ``validation`` or ``test`` over ``loaders`` with Lightning's hook order.

    Args:
        trainer: the Trainer.
        name: ``"validation"`` or ``"test"``.
        loaders: the dataloaders.
        limits: how many batches of each loader to run.
        log_step: the step the epoch metrics are logged at; None logs nothing (sanity check).
        inference_mode: run under ``torch.inference_mode`` (else ``torch.no_grad``). Validation inside fit
            uses ``no_grad``, as Lightning does, so tensors created there (lazy layers, caches) stay usable for
            training.
        progress: the batch counters to advance (the fit loop's validation progress), if any.

    Returns:
        For each dataloader, the metrics logged at the end of the evaluation (as floats).
    """
    hooks = trainer._hooks
    hub = trainer._metrics
    module = trainer.lightning_module
    modes = capture_modes(module)
    hub.eval_results.reset()
    if progress is not None:
        progress.current.reset()
    trainer._evaluating = True
    hooks.module(f"on_{name}_model_eval")
    context: contextlib.AbstractContextManager[Any] = (
        torch.inference_mode() if inference_mode else torch.no_grad()
    )
    try:
        with context:
            hooks.both(f"on_{name}_start")
            hooks.both(f"on_{name}_epoch_start")
            several = len(loaders) > 1
            for dl_idx, (loader, limit) in enumerate(zip(loaders, limits, strict=True)):
                hub.eval_dataloader_idx = dl_idx if several else None
                _run_loader(trainer, name, loader, limit, dl_idx if several else None, progress)
                # Lightning publishes each loader's epoch values when it ends: on_*_epoch_end already sees them.
                hub.publish_epoch(hub.eval_results)
            hub.eval_dataloader_idx = None
            hooks.both(f"on_{name}_epoch_end")
            logged = hub.epoch_outputs(hub.eval_results)
            if log_step is not None:
                hub.send({key: value for key, (_, value) in logged.items()}, step=log_step)
            hooks.both(f"on_{name}_end")
    finally:
        hub.eval_dataloader_idx = None
        trainer._evaluating = False
        # Lightning 2.2+: an overridden on_*_model_train decides; otherwise each submodule gets its mode back.
        if is_overridden(f"on_{name}_model_train", module, LightningModule):
            hooks.module(f"on_{name}_model_train")
        else:
            restore_modes(modes)
    return _per_loader(logged, len(loaders))
