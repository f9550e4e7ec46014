"""Run by the callback tests under torchrun (2 gloo ranks); each rank writes what it saw to ``out/rank<N>.pt``.

``early_stopping``: each rank logs its own val_loss. Rank 0's keeps improving, rank 1's never does after the
first epoch: rank 1 alone would stop, and so every rank must stop at the same epoch.
``timer_rank<N>``: only rank N's clock says the time budget is spent; rank 0's decides for both.
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
from stepstone.callbacks import EarlyStopping, Timer
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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
