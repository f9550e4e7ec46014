"""Run by the callback tests under torchrun (2 gloo ranks); each rank writes what it saw to ``out/rank<N>.pt``.

``early_stopping``: each rank logs its own val_loss. Rank 0's keeps improving, rank 1's never does after the
first epoch: rank 1 alone would stop, and so every rank must stop at the same epoch.
``timer_rank<N>``: only rank N's clock says the time budget is spent; rank 0's decides for both.
``save_on_exception``: every rank raises at global step 3; ModelCheckpoint(save_on_exception=True) saves once
(rank 0 writes) and every rank re-raises. Last, because a failed fit leaves the process group.
"""

from __future__ import annotations

import os
import sys
import types
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import stepstone as L
import stepstone.callbacks.timer as timer_module
from stepstone.callbacks import EarlyStopping, ModelCheckpoint, Timer
from stepstone.strategies import DDPStrategy


class PerRank(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        epoch = self.current_epoch
        value = 1.0 - 0.1 * epoch if self.global_rank == 0 else 1.0 + 0.1 * epoch
        self.log("val_loss", torch.tensor(value))  # no sync_dist: each rank sees its own

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Boom(Exception):
    pass


class FailsAtStep3(PerRank):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == 3:
            raise Boom(f"rank {self.global_rank} failed")
        return super().training_step(batch, batch_idx)


def run_save_on_exception(out: Path) -> None:
    folder = out / "exception-ckpts"
    callback = ModelCheckpoint(dirpath=folder, save_on_exception=True, save_last=True)
    trainer = L.Trainer(
        strategy=DDPStrategy(timeout=timedelta(seconds=30)),
        accelerator="cpu",
        devices=2,
        max_epochs=3,
        callbacks=[callback],
        default_root_dir=str(out),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        trainer.fit(FailsAtStep3(), DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=4))
        raised = None
    except Boom as error:
        raised = (str(error), getattr(error, "__notes__", []))
    seen = {
        "raised": raised,
        "files": sorted(os.listdir(folder)),
        "last_model_path": callback.last_model_path,
    }
    torch.save(seen, out / f"save_on_exception-rank{trainer.global_rank}.pt")


def run(out: Path, scenario: str) -> None:
    data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4)
    stopper = EarlyStopping("val_loss", patience=2)
    callbacks: list[L.Callback] = [stopper]
    if scenario.startswith("timer_rank"):
        callbacks = [Timer(duration={"hours": 1})]
        if int(scenario.removeprefix("timer_rank")) == int(os.environ["RANK"]):
            later = iter(range(0, 10**9, 3600))  # every reading an hour after the last: out of time at once
            timer_module.time = types.SimpleNamespace(monotonic=lambda: float(next(later)))  # type: ignore[assignment]
    torch.manual_seed(0)
    trainer = L.Trainer(
        strategy=DDPStrategy(timeout=timedelta(seconds=30)),
        accelerator="cpu",
        devices=2,
        max_epochs=10,
        callbacks=callbacks,
        default_root_dir=str(out),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(PerRank(), data, data)
    seen = {
        "current_epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "stopped_epoch": stopper.stopped_epoch,
        "wait_count": stopper.wait_count,
    }
    torch.save(seen, out / f"{scenario}-rank{trainer.global_rank}.pt")


def main(out: Path) -> None:
    """Every scenario, one after the other, in the same two processes (one torchrun start for all)."""
    real_time = timer_module.time
    for scenario in ("early_stopping", "timer_rank0", "timer_rank1"):
        run(out, scenario)
        timer_module.time = real_time
    run_save_on_exception(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
