"""stepstone's exact-resume entries of a checkpoint (``checkpoint["stepstone"]``): what Lightning does not store.

Lightning's keys (weights, optimizers, schedulers, loop counters, callback state) decide most of the future of
training; these entries decide the rest: the generators' states, where the epoch's data comes from, the
gradients of an unfinished accumulation window, the epoch's partial logged-metric accumulators and the latest
logged values. All of it is weights_only-safe.

``trainer.should_stop`` is deliberately not stored: it asks the run that set it to stop, and a run resumed from
a file written after it was set trains on (as in Lightning), its callbacks deciding afresh.

Accumulation rule: a checkpoint written inside an accumulation window (``accumulate_grad_batches > 1``, the
window's optimizer step not taken yet) also stores the gradients accumulated so far, so a resume from it
is exact wherever it was written (``trainer.save_checkpoint`` anywhere, a time trigger). Checkpoints at
optimizer-step boundaries (step triggers, preemption) have none to store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from stepstone.strategies.collectives import all_gather_object
from stepstone.trainer.rng import capture_rng

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["dump_resume_state", "load_resume_state"]


def _accumulated_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The gradients of an unfinished accumulation window (empty at an optimizer-step boundary)."""
    loop = trainer.fit_loop
    accumulate = trainer.accumulate_grad_batches
    module = trainer.lightning_module
    processed = loop.batch_progress.current.processed
    if accumulate <= 1 or not module.automatic_optimization or loop.batch_progress.is_last_batch:
        return {}
    if processed % accumulate == 0:
        return {}
    return {name: p.grad.detach() for name, p in module.named_parameters() if p.grad is not None}


def dump_resume_state(trainer: Trainer) -> dict[str, Any]:
    """The exact-resume entries for ``checkpoint["stepstone"]``.

    Args:
        trainer: the Trainer writing the checkpoint.

    Returns:
        ``{"loop", "data", "metrics", ["accumulation"], ["preempted"]}``; under DDP ``loop`` also
        holds ``rng_per_rank`` (every rank's generators, gathered: every rank must be dumping).
    """
    loop = trainer.fit_loop
    hub = trainer._metrics
    loader = trainer._train_loader
    rng = capture_rng()
    state: dict[str, Any] = {
        "loop": {
            "rng": rng,
            "tail": loop.tail,
            "epoch_state": loop.data.epoch_state,
            "loader_state": loop.data.loader_state(loader),
            # The worker processes' generators after the last consumed batch (None without workers).
            "workers": loop.data.workers.state_dict(),
        },
        # Informational: the loop counters (checkpoint["loops"]) are what positions the resume.
        "data": {
            "epoch": loop.epoch_progress.current.processed,
            "batch": loop.batch_progress.current.processed,
        },
        "validation_has_run": bool(trainer._validation_has_run),
        "metrics": {
            "train": hub.train_results.state_dict(),
            "callback_metrics": dict(hub.callback_metrics),
            "logged_metrics": dict(hub.logged_metrics),
            "progress_bar": dict(hub.progress_bar),
        },
    }
    if trainer.world_size > 1:
        # Every rank's generators (each rank draws its own dropout masks, augmentations...), in rank order, so
        # that each rank of a resumed run continues its own sequence. A no-op list of one without a group.
        per_rank = all_gather_object(rng, what="gather the ranks' RNG states for the checkpoint")
        if len(per_rank) == trainer.world_size:
            state["loop"]["rng_per_rank"] = per_rank
        if isinstance(loader, DataLoader) and loader.num_workers > 0:
            # Each rank has its own workers (same num_workers on every rank, so every rank gathers).
            workers = all_gather_object(
                state["loop"]["workers"],
                what="gather the ranks' DataLoader worker RNG states for the checkpoint",
            )
            if len(workers) == trainer.world_size:
                state["loop"]["workers_per_rank"] = workers
    grads = _accumulated_grads(trainer)
    if grads:
        state["accumulation"] = {"grads": grads}
    if trainer._preemption.saving:
        state["preempted"] = True
    return state


def load_resume_state(trainer: Trainer, state: dict[str, Any]) -> None:
    """Restore what :func:`dump_resume_state` stored (after the loops, optimizers and schedulers are restored).

    Args:
        trainer: the Trainer about to continue training.
        state: ``checkpoint["stepstone"]``; a checkpoint without the entries (Lightning's, or written by
            ``validate``/weights only) leaves the trainer as Lightning would.
    """
    loop_state = state.get("loop")
    if not isinstance(loop_state, dict):
        return
    loop = trainer.fit_loop
    per_rank = loop_state.get("rng_per_rank")
    if isinstance(per_rank, list) and len(per_rank) == trainer.world_size:
        # This rank's own generators; at another world size every rank takes rank 0's (as Lightning does).
        loop_state = {**loop_state, "rng": per_rank[trainer.global_rank]}
    workers = loop_state.get("workers_per_rank")
    if isinstance(workers, list) and len(workers) == trainer.world_size:
        loop_state = {**loop_state, "workers": workers[trainer.global_rank]}
    loop.resume_exactly(loop_state)
    trainer._validation_has_run = bool(state.get("validation_has_run", False))
    hub = trainer._metrics
    metrics = state.get("metrics") or {}
    hub.callback_metrics.update(metrics.get("callback_metrics") or {})
    hub.logged_metrics.update(metrics.get("logged_metrics") or {})
    hub.progress_bar.update(metrics.get("progress_bar") or {})
    if loop._resume_batch is not None:
        # Mid-epoch: the epoch's means continue from the saved partial sums.
        hub.train_results.load_state_dict(metrics.get("train") or [])
    grads = (state.get("accumulation") or {}).get("grads") or {}
    if grads:
        device = trainer._placement.device
        for name, param in trainer.lightning_module.named_parameters():
            if name in grads:
                param.grad = grads[name].to(device=device, dtype=param.dtype).clone()
