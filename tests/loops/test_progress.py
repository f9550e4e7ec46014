"""Resumable loop counters: Lightning's ``loops`` layout, and continuing exactly where a snapshot was taken.

Snapshots here are built in memory with ``dump_checkpoint`` (no file, no checkpoint engine) and restored in
``on_fit_start``, where the Trainer itself restores a checkpoint (after ``configure_optimizers``, before training).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import stepstone as L
from models import FEATURES, BoringModel, make_trainer
from stepstone.loops.progress import BatchProgress, EpochProgress, OptimizerProgress, Progress, loops_state
from stepstone.trainer.checkpoint_io import dump_checkpoint, restore_model_state, restore_training_state

_TRACKER = {"ready", "started", "processed", "completed"}


def _data() -> DataLoader[torch.Tensor]:
    # Identical batches: a resumed run re-reads the loader from its start (as Lightning does with a plain
    # DataLoader), so only identical batches make "straight" and "resumed" runs comparable weight for weight.
    return DataLoader(torch.full((16, FEATURES), 0.5), batch_size=4)


class Model(BoringModel):
    def __init__(self) -> None:
        super().__init__(lr=0.1)
        self.trained: list[tuple[int, int]] = []
        self.epoch_starts: list[int] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        self.trained.append((self.current_epoch, batch_idx))
        return super().training_step(batch, batch_idx)

    def on_train_epoch_start(self) -> None:
        self.epoch_starts.append(self.current_epoch)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Snapshot(L.Callback):
    def __init__(self, hook: str, when: Any) -> None:
        self.hook, self.when = hook, when
        self.checkpoint: dict[str, Any] | None = None

    def _maybe(self, trainer: L.Trainer) -> None:
        if self.checkpoint is None and not trainer.sanity_checking and self.when(trainer):
            self.checkpoint = copy.deepcopy(dump_checkpoint(trainer))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.hook == "on_train_batch_end":
            self._maybe(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.hook == "on_validation_end":
            self._maybe(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.hook == "on_train_epoch_end":
            self._maybe(trainer)


class Restore(L.Callback):
    def __init__(self, checkpoint: dict[str, Any]) -> None:
        self.checkpoint = checkpoint

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restore_model_state(trainer, self.checkpoint, "<memory>")
        restore_training_state(trainer, self.checkpoint, "<memory>")


def _straight_and_resumed(tmp_path: Path, snapshot: Snapshot, **kwargs: Any) -> tuple[Any, ...]:
    base = {"max_epochs": 3, "num_sanity_val_steps": 0, **kwargs}
    torch.manual_seed(0)
    straight = Model()
    initial = copy.deepcopy(straight.state_dict())
    trainer = make_trainer(tmp_path, callbacks=[snapshot], **base)
    trainer.fit(straight, _data(), _data())
    assert snapshot.checkpoint is not None

    resumed = Model()
    resumed.load_state_dict(initial)  # overwritten by the snapshot anyway
    trainer2 = make_trainer(tmp_path, callbacks=[Restore(snapshot.checkpoint)], **base)
    trainer2.fit(resumed, _data(), _data())
    return straight, trainer, resumed, trainer2


def _assert_same_end(straight: Model, trainer: L.Trainer, resumed: Model, trainer2: L.Trainer) -> None:
    assert trainer2.global_step == trainer.global_step
    assert trainer2.current_epoch == trainer.current_epoch
    assert trainer2.fit_loop.batches_that_stepped == trainer.fit_loop.batches_that_stepped
    assert trainer2.fit_loop.state_dict() == trainer.fit_loop.state_dict()
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert trainer2.optimizers[0].param_groups[0]["lr"] == trainer.optimizers[0].param_groups[0]["lr"]


def test_state_dict_has_lightnings_layout(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(BoringModel())
    state = trainer.fit_loop.state_dict()
    assert set(state) == {
        "state_dict",
        "epoch_loop.state_dict",
        "epoch_loop.batch_progress",
        "epoch_loop.scheduler_progress",
        "epoch_loop.automatic_optimization.state_dict",
        "epoch_loop.automatic_optimization.optim_progress",
        "epoch_loop.manual_optimization.state_dict",
        "epoch_loop.manual_optimization.optim_step_progress",
        "epoch_loop.val_loop.state_dict",
        "epoch_loop.val_loop.batch_progress",
        "epoch_progress",
    }
    full = dict.fromkeys(_TRACKER, 2)
    assert state["epoch_progress"] == {"total": full, "current": full}
    batches = state["epoch_loop.batch_progress"]
    assert batches["total"] == dict.fromkeys(_TRACKER, 8)
    assert batches["current"] == dict.fromkeys(_TRACKER, 4)
    assert batches["is_last_batch"] is True
    optim = state["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    assert optim["step"]["total"] == {"ready": 8, "completed": 8}
    assert optim["zero_grad"]["total"] == {"ready": 8, "started": 8, "completed": 8}
    assert state["epoch_loop.scheduler_progress"]["total"] == {"ready": 0, "completed": 0}
    assert state["epoch_loop.manual_optimization.optim_step_progress"]["total"] == {
        "ready": 0,
        "completed": 0,
    }
    assert state["epoch_loop.state_dict"] == {"_batches_that_stepped": 8}
    assert state["epoch_loop.val_loop.batch_progress"]["current"] == dict.fromkeys(_TRACKER, 1)


def test_checkpoint_loops_entry(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(BoringModel())
    loops = dump_checkpoint(trainer)["loops"]
    assert set(loops) == {"fit_loop", "validate_loop", "test_loop", "predict_loop"}
    assert loops["fit_loop"] == trainer.fit_loop.state_dict()
    assert loops == loops_state(trainer.fit_loop.state_dict())
    assert set(loops["validate_loop"]) == {"state_dict", "batch_progress"}


def test_resume_mid_epoch_from_on_train_batch_end(tmp_path: Path) -> None:
    snapshot = Snapshot("on_train_batch_end", lambda t: t.global_step == 6)
    straight, trainer, resumed, trainer2 = _straight_and_resumed(tmp_path, snapshot)
    # Lightning's example: a snapshot after step 6 of 4-batch epochs continues at (1, 2).
    assert resumed.trained == [(1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
    assert resumed.epoch_starts == [2]  # the resumed epoch is continued, not started again
    _assert_same_end(straight, trainer, resumed, trainer2)


def test_resume_at_the_end_of_an_epoch(tmp_path: Path) -> None:
    snapshot = Snapshot("on_train_epoch_end", lambda t: t.current_epoch == 0)
    straight, trainer, resumed, trainer2 = _straight_and_resumed(tmp_path, snapshot)
    assert resumed.trained == [(1, i) for i in range(4)] + [(2, i) for i in range(4)]
    assert resumed.epoch_starts == [1, 2]
    _assert_same_end(straight, trainer, resumed, trainer2)


def test_resume_from_a_mid_epoch_validation(tmp_path: Path) -> None:
    snapshot = Snapshot("on_validation_end", lambda t: t.global_step == 2)
    straight, trainer, resumed, trainer2 = _straight_and_resumed(tmp_path, snapshot, val_check_interval=2)
    assert resumed.trained[:2] == [(0, 2), (0, 3)]
    _assert_same_end(straight, trainer, resumed, trainer2)


def test_resume_inside_an_accumulation_window(tmp_path: Path) -> None:
    # Saved after batch 0 of a 2-batch window: the window's optimizer step is still ahead.
    snapshot = Snapshot("on_train_batch_end", lambda t: t.fit_loop.total_batch_idx == 4)
    _, trainer, resumed, trainer2 = _straight_and_resumed(tmp_path, snapshot, accumulate_grad_batches=2)
    assert resumed.trained[0] == (1, 1)
    assert trainer2.global_step == trainer.global_step == 6
    assert trainer2.fit_loop.batches_that_stepped == trainer.fit_loop.batches_that_stepped == 6


def test_resume_past_max_epochs_does_not_train(tmp_path: Path) -> None:
    snapshot = Snapshot("on_train_epoch_end", lambda t: t.current_epoch == 2)
    _, _, resumed, trainer2 = _straight_and_resumed(tmp_path, snapshot)
    assert resumed.trained == [] and trainer2.current_epoch == 3


def test_load_a_lightning_mid_epoch_state() -> None:
    # What Lightning 2.x writes when ModelCheckpoint(every_n_train_steps=6) saves in on_train_batch_end of
    # batch 1 of epoch 1 (4 batches per epoch): processed is one ahead of completed, the epoch is running.
    def tracker(ready: int, started: int, processed: int, completed: int) -> dict[str, int]:
        return {"ready": ready, "started": started, "processed": processed, "completed": completed}

    lightning_state = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": 5},
        "epoch_loop.batch_progress": {
            "total": tracker(6, 6, 6, 5),
            "current": tracker(2, 2, 2, 1),
            "is_last_batch": False,
        },
        "epoch_loop.scheduler_progress": {
            "total": {"ready": 0, "completed": 0},
            "current": {"ready": 0, "completed": 0},
        },
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {
                "step": {"total": {"ready": 6, "completed": 6}, "current": {"ready": 2, "completed": 2}},
                "zero_grad": {"total": tracker(6, 6, 0, 6), "current": tracker(2, 2, 0, 2)},
            }
        },
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": {
            "total": {"ready": 0, "completed": 0},
            "current": {"ready": 0, "completed": 0},
        },
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": {
            "total": tracker(0, 0, 0, 0),
            "current": tracker(0, 0, 0, 0),
            "is_last_batch": False,
        },
        "epoch_progress": {"total": tracker(2, 2, 1, 1), "current": tracker(2, 2, 1, 1)},
    }
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer._model = BoringModel()
    trainer.num_training_batches = 4
    loop = trainer.fit_loop
    loop.load_state_dict(lightning_state)
    assert loop.current_epoch == 1
    assert loop.global_step == 6
    assert loop._resume_batch == 2
    assert loop.batches_that_stepped == 6  # the batch saved in on_train_batch_end is counted (Lightning 2.5+)
    assert loop.batch_progress.current.completed == 2


def test_progress_trackers() -> None:
    progress = Progress()
    progress.increment("ready")
    progress.increment("ready")
    progress.increment("completed")
    assert progress.state_dict() == {
        "total": {"ready": 2, "started": 0, "processed": 0, "completed": 1},
        "current": {"ready": 2, "started": 0, "processed": 0, "completed": 1},
    }
    other = Progress()
    other.load_state_dict(progress.state_dict())
    assert other == progress
    progress.current.reset()
    assert progress.current.ready == 0 and progress.total.ready == 2

    batch = BatchProgress()
    batch.is_last_batch = True
    copy_ = BatchProgress()
    copy_.load_state_dict(batch.state_dict())
    assert copy_.is_last_batch

    optim = OptimizerProgress()
    optim.step.increment("ready")
    restored = OptimizerProgress()
    restored.load_state_dict(optim.state_dict())
    assert restored.step.total.ready == 1

    epoch = EpochProgress()
    epoch.load_state_dict({"total": {"completed": 3, "unknown": 9}})  # unknown stages are ignored
    assert epoch.total.completed == 3


@pytest.mark.parametrize("manual", [False, True])
def test_global_step_source(tmp_path: Path, manual: bool) -> None:
    class Manual(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = not manual

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            if not manual:
                return super().training_step(batch, batch_idx)
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.loss(self(batch)))
            opt.step()
            opt.step()  # two steps per batch
            return None

    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(Manual())
    assert trainer.global_step == (8 if manual else 4)
