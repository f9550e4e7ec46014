"""Resumable loop counters, stored in checkpoints under ``loops`` in Lightning's layout.

Each counter has a ``total`` (over the whole run) and a ``current`` (since the last reset: per epoch for
batches) with the stages ready -> started -> processed -> completed. A checkpoint written between two stages
says exactly where the loop was, so a resume can continue from there; keeping Lightning's key names lets
Lightning read stepstone checkpoints and stepstone read Lightning's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from typing_extensions import override

__all__ = [
    "BatchProgress",
    "EpochProgress",
    "OptimizerProgress",
    "Progress",
    "Tracker",
    "fit_loop_state",
    "loops_state",
    "restore_fit_loop",
]


@dataclass
class Tracker:
    """Counts of one thing at each stage."""

    ready: int = 0
    started: int = 0
    processed: int = 0
    completed: int = 0

    def reset(self) -> None:
        self.ready = self.started = self.processed = self.completed = 0


@dataclass
class Progress:
    """A ``total`` and a ``current`` tracker moved together."""

    total: Tracker = field(default_factory=Tracker)
    current: Tracker = field(default_factory=Tracker)

    def increment(self, stage: str) -> None:
        setattr(self.total, stage, getattr(self.total, stage) + 1)
        setattr(self.current, stage, getattr(self.current, stage) + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"total": asdict(self.total), "current": asdict(self.current)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("total", "current"):
            tracker = getattr(self, name)
            for stage, value in state.get(name, {}).items():
                if hasattr(tracker, stage):
                    setattr(tracker, stage, int(value))


@dataclass
class EpochProgress(Progress):
    """Epochs of the fit loop; ``current.completed`` is the Trainer's ``current_epoch``."""


@dataclass
class BatchProgress(Progress):
    """Batches of one epoch (``current`` resets each epoch)."""

    is_last_batch: bool = False

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "is_last_batch": self.is_last_batch}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.is_last_batch = bool(state.get("is_last_batch", False))


@dataclass
class OptimizerProgress:
    """Optimizer steps and zero_grad calls; ``step.total.completed`` is the ``global_step``."""

    step: Progress = field(default_factory=Progress)
    zero_grad: Progress = field(default_factory=Progress)

    def state_dict(self) -> dict[str, Any]:
        step = self.step.state_dict()
        # Lightning's optimizer-step tracker has only ready/completed.
        for part in step.values():
            part.pop("started", None)
            part.pop("processed", None)
        zero = self.zero_grad.state_dict()
        for part in zero.values():  # Lightning's zero_grad tracker has ready/started/completed
            part.pop("processed", None)
        return {"optimizer": {"step": step, "zero_grad": zero}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        optimizer = state.get("optimizer", {})
        self.step.load_state_dict(optimizer.get("step", {}))
        self.zero_grad.load_state_dict(optimizer.get("zero_grad", {}))


def _eval_loop_state(batch_progress: BatchProgress) -> dict[str, Any]:
    return {"state_dict": {}, "batch_progress": batch_progress.state_dict()}


def _ready_completed(progress: Progress) -> dict[str, Any]:
    """A Progress state with only ``ready``/``completed`` (Lightning's scheduler and optimizer-step trackers)."""
    state = progress.state_dict()
    for part in state.values():
        part.pop("started", None)
        part.pop("processed", None)
    return state


def fit_loop_state(
    epoch: EpochProgress,
    batch: BatchProgress,
    scheduler: Progress,
    optim: OptimizerProgress,
    manual_steps: Progress,
    batches_that_stepped: int,
    val_batch: BatchProgress,
) -> dict[str, Any]:
    """The fit loop's state in Lightning 2.x's layout (``trainer.fit_loop.state_dict()``)."""
    return {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": batches_that_stepped},
        "epoch_loop.batch_progress": batch.state_dict(),
        "epoch_loop.scheduler_progress": _ready_completed(scheduler),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": optim.state_dict(),
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": _ready_completed(manual_steps),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": val_batch.state_dict(),
        "epoch_progress": epoch.state_dict(),
    }


def loops_state(fit_loop_state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``loops`` entry: the fit loop's state plus (empty) validate/test/predict loop states."""
    return {
        "fit_loop": fit_loop_state,
        "validate_loop": _eval_loop_state(BatchProgress()),
        "test_loop": _eval_loop_state(BatchProgress()),
        "predict_loop": {"state_dict": {}, "batch_progress": Progress().state_dict()},
    }


def restore_fit_loop(
    fit: dict[str, Any],
    epoch: EpochProgress,
    batch: BatchProgress,
    scheduler: Progress,
    optim: OptimizerProgress,
    manual_steps: Progress,
    val_batch: BatchProgress,
) -> int:
    """Load the fit-loop counters from ``fit_loop_state``'s layout; returns ``_batches_that_stepped``."""
    epoch.load_state_dict(fit.get("epoch_progress", {}))
    batch.load_state_dict(fit.get("epoch_loop.batch_progress", {}))
    scheduler.load_state_dict(fit.get("epoch_loop.scheduler_progress", {}))
    optim.load_state_dict(fit.get("epoch_loop.automatic_optimization.optim_progress", {}))
    manual_steps.load_state_dict(fit.get("epoch_loop.manual_optimization.optim_step_progress", {}))
    val_batch.load_state_dict(fit.get("epoch_loop.val_loop.batch_progress", {}))
    return int(fit.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", 0))
