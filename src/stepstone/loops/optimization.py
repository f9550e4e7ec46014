"""One training batch: the training step, backward, and (every ``accumulate_grad_batches``) the optimizer step.

Automatic optimization follows Lightning's order: ``training_step`` runs inside the closure handed to
``optimizer.step`` (so closure-based optimizers such as LBFGS work); gradients are zeroed at the first batch of
an accumulation window, after the training step and before backward; the loss is divided by
``accumulate_grad_batches`` before backward; ``on_before_optimizer_step`` and clipping run after the closure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from stepstone.errors import MisconfigurationException
from stepstone.trainer.hooks import step_arguments

if TYPE_CHECKING:
    from stepstone.loops.fit import FitLoop

__all__ = ["run_automatic", "run_manual"]


def _loss_of(output: Any) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """The loss and the other entries of what ``training_step`` returned (automatic optimization)."""
    if output is None:
        return None, {}
    extra: dict[str, Any] = {}
    loss: Any
    if isinstance(output, torch.Tensor):
        loss = output
    elif isinstance(output, Mapping):
        loss = output.get("loss")
        if loss is None:
            raise MisconfigurationException(
                f"training_step returned a dict without a 'loss' (keys: {sorted(output)}); in automatic "
                "optimization a returned dict must hold the loss tensor under 'loss' (return None to skip a batch)."
            )
        extra = {k: v for k, v in output.items() if k != "loss"}
    else:
        raise MisconfigurationException(
            f"training_step returned {type(output).__name__}; in automatic optimization it must return a loss "
            "Tensor, a dict with a 'loss' Tensor, or None (to skip the batch)."
        )
    if not isinstance(loss, torch.Tensor):
        raise MisconfigurationException(
            f"training_step returned a loss of type {type(loss).__name__}; it must be a torch.Tensor computed "
            "from the model's outputs (so that backward can reach the parameters)."
        )
    if not loss.requires_grad:
        raise MisconfigurationException(
            "training_step returned a loss that does not require grad, so backward cannot reach any parameter. "
            "Compute the loss from the model's outputs (not under torch.no_grad() and not with .item()/.detach())."
        )
    return loss, extra


def run_automatic(loop: FitLoop, batch: Any, batch_idx: int, accumulating: bool) -> dict[str, Any]:
    """Run one batch of automatic optimization.

    Returns:
        Lightning's ``outputs`` for ``on_train_batch_end``: ``{"loss": <detached loss / accumulate_grad_batches>,
        **other returned entries}``, or ``{}`` when ``training_step`` returned None.

    Raises:
        MisconfigurationException: an invalid ``training_step`` return value, or an ``optimizer_step`` override
            that never ran the closure.
    """
    trainer = loop.trainer
    hooks = trainer._hooks
    module = trainer.lightning_module
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    accumulate = trainer.accumulate_grad_batches
    first_in_window = batch_idx % accumulate == 0
    step_args = step_arguments(module.training_step, batch, batch_idx, None)
    result: dict[str, dict[str, Any]] = {}

    def closure() -> torch.Tensor | None:
        # Optimizers may call the closure with grad disabled (their step runs under no_grad); a ``with``
        # costs far less per step than decorating a fresh closure with torch.enable_grad() every batch.
        with torch.enable_grad(), trainer._placement.forward_context():
            output = hooks.training_step(*step_args)
        loss, extra = _loss_of(output)
        if loss is not None and accumulate > 1:
            loss = loss / accumulate
        result["outputs"] = {} if loss is None else {"loss": loss.detach().clone(), **extra}
        if loss is None:
            loop.warn_none_step()
        if first_in_window and optimizer is not None:
            zero_grad = loop.optim_progress.zero_grad
            zero_grad.increment("ready")
            hooks.callbacks("on_before_zero_grad", optimizer)
            hooks.module("on_before_zero_grad", optimizer)
            zero_grad.increment("started")
            hooks.module("optimizer_zero_grad", trainer.current_epoch, batch_idx, optimizer)
            zero_grad.increment("completed")
        if loss is None:
            return None
        with torch.enable_grad():
            trainer._backward(loss)
        return loss

    if accumulating or optimizer is None:
        closure()
        if optimizer is None and not accumulating:
            loop.optim_progress.step.increment("ready")
            loop.optim_progress.step.increment("completed")
        return result["outputs"]

    loop.optim_progress.step.increment("ready")
    hooks.module(
        "optimizer_step", trainer.current_epoch, batch_idx, trainer._lightning_optimizers()[0], closure
    )
    loop.optim_progress.step.increment("completed")
    if "outputs" not in result:
        raise MisconfigurationException(
            "The optimizer closure was not run: an optimizer_step override must call "
            "optimizer.step(closure=optimizer_closure) (the closure runs training_step and backward)."
        )
    return result["outputs"]


def run_manual(loop: FitLoop, batch: Any, batch_idx: int) -> dict[str, Any]:
    """Run one batch of manual optimization: the user steps the optimizers inside ``training_step``.

    Returns:
        Lightning's ``outputs``: the returned dict (its ``loss`` detached), ``{"loss": <detached tensor>}``, or ``{}``.
    """
    trainer = loop.trainer
    module = trainer.lightning_module
    with trainer._placement.forward_context():
        output = trainer._hooks.training_step(*step_arguments(module.training_step, batch, batch_idx, None))
    if output is None:
        return {}
    if isinstance(output, torch.Tensor):
        return {"loss": output.detach()}
    if isinstance(output, Mapping):
        outputs = dict(output)
        if isinstance(outputs.get("loss"), torch.Tensor):
            outputs["loss"] = outputs["loss"].detach()
        return outputs
    raise MisconfigurationException(
        f"training_step returned {type(output).__name__}; with manual optimization return None, a Tensor or a dict."
    )
