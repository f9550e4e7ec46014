"""A training script the DDP Trainer tests run under torchrun (2 ranks) and as one process.

Usage: ``python trainer_ddp_script.py OUT_DIR BATCH_SIZE SCENARIO [KIND]`` (``KIND``: ``ddp`` (default),
``ddp_async`` (background saves), ``ddp_options`` (use_distributed_sampler=False), ``fsdp_full`` or ``fsdp_sharded``: FSDP on as many processes as started) (``SCENARIO``: ``single``, ``fit``, ``first_epoch`` then ``resume``,
``rank0_save``, ``preempt`` then ``auto``, ``fit_resume`` (fit, then resume in the same processes), or ``launch``: run with plain ``python``, the Trainer starts rank 1; ``spawn``: ddp_spawn).
Each rank writes ``OUT_DIR/rank<N>.pt`` with what it saw; the tests compare them.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, TensorDataset

import stepstone as L
from stepstone.callbacks import ModelCheckpoint
from stepstone.strategies import CollectiveError, DDPStrategy, FSDPStrategy


class Linear(L.LightningModule):
    """SGD on a linear regression: DDP over 2 ranks x batch b must equal 1 process x batch 2b."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.draws: dict[int, float] = {}

    def on_train_epoch_start(self) -> None:
        # Each rank's own random stream: a resumed rank must continue its own, not rank 0's.
        self.draws[self.current_epoch] = torch.rand(1).item()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, sync_dist=True)
        # Differs per rank: checkpoint names formatted from it must still agree (rank 0's wins).
        self.log("rank_metric", float(self.global_rank), on_epoch=True, on_step=False)
        self.log("synced_rank", float(self.global_rank), on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(16, 1, generator=generator)
    return TensorDataset(x, y)


class SaveOnRankZeroOnly(L.Callback):
    """The classic mistake: ``trainer.save_checkpoint`` under ``if trainer.is_global_zero``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            trainer.save_checkpoint(self.path)


class PreemptRankOne(L.Callback):
    """Only rank 1 receives the preemption signal, after the third optimizer step."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_rank == 1 and trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)


class KillRankOneInSave(L.Callback):
    """Rank 1 dies (SIGKILL) in the middle of the second checkpoint, after its data was gathered."""

    def on_save_checkpoint(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_rank == 1 and trainer.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def _strategy(scenario: str, kind: str) -> Any:
    if kind.startswith("fsdp_"):  # fsdp_full / fsdp_sharded, on as many processes as were started
        return FSDPStrategy(state_dict_type=kind.removeprefix("fsdp_"), timeout=timedelta(seconds=30))
    return {"single": "auto", "launch": "ddp", "spawn": "ddp_spawn"}.get(
        scenario, DDPStrategy(timeout=timedelta(seconds=30))
    )


def _devices(scenario: str, kind: str) -> Any:
    if kind.startswith("fsdp_"):
        return int(os.environ.get("WORLD_SIZE", "1"))
    return "auto" if scenario == "single" else 2


def _trainer(out: Path, scenario: str, checkpoint: ModelCheckpoint, max_epochs: int, kind: str) -> L.Trainer:
    callbacks: list[L.Callback] = [checkpoint]
    if scenario == "rank0_save":
        callbacks.append(SaveOnRankZeroOnly(out / "rank0-only.ckpt"))
    if scenario == "kill_in_save":
        callbacks.append(KillRankOneInSave())
    if scenario == "preempt":
        callbacks.append(PreemptRankOne())
    return L.Trainer(
        strategy=_strategy(scenario, kind),
        accelerator="cpu",
        devices=_devices(scenario, kind),
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=str(out),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=kind != "ddp_options",
    )


def _checkpoint(out: Path, kind: str) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=str(out / "ckpts"),
        filename="{epoch}-{rank_metric:.0f}",
        save_top_k=-1,
        save_last=True,
        async_save=kind == "ddp_async",  # rank 0 writes in the background
    )


def _full(value: torch.Tensor) -> torch.Tensor:
    # An FSDP parameter is a DTensor: gathered (every rank runs this in the same order).
    return (value.full_tensor() if isinstance(value, DTensor) else value).detach().clone()


def main(out: Path, batch_size: int, scenario: str, kind: str) -> None:
    model = Linear()
    torch.manual_seed(100 + int(os.environ.get("RANK", "0")))  # different random streams per rank
    loader = DataLoader(_data(), batch_size=batch_size, shuffle=False)
    val = None if scenario == "rank0_save" else DataLoader(_data(), batch_size=batch_size)
    seen: dict[str, Any] = {}
    checkpoint = _checkpoint(out, kind)
    if scenario == "first_epoch":
        trainer = _trainer(out, scenario, checkpoint, 1, kind)
        trainer.fit(model, loader, val)
    elif scenario in ("preempt", "auto"):
        # Preempted at step 3 (exit 75 on every rank), then resumed by a new run with ckpt_path="auto".
        trainer = _trainer(out, scenario, checkpoint, 2, kind)
        trainer.fit(model, loader, val, ckpt_path="auto" if scenario == "auto" else None)
    elif scenario == "fit_resume":
        # Two epochs, then a new Trainer and model resume from the epoch-0 checkpoint in the same processes.
        trainer = _trainer(out, scenario, checkpoint, 2, kind)
        trainer.fit(model, loader, val)
        seen.update(straight={k: _full(v) for k, v in model.state_dict().items()}, straight_draws=model.draws)
        model, checkpoint = Linear(), _checkpoint(out / "resumed", kind)
        trainer = _trainer(out / "resumed", scenario, checkpoint, 2, kind)
        trainer.fit(model, loader, val, ckpt_path=str(out / "ckpts" / "epoch=0-rank_metric=0.ckpt"))
        seen["global_step"] = trainer.global_step
    elif scenario == "resume":
        # A new run (processes, Trainer, model) resumes on every rank from the epoch-0 checkpoint.
        trainer = _trainer(out, scenario, checkpoint, 2, kind)
        trainer.fit(model, loader, val, ckpt_path=str(out / "ckpts" / "epoch=0-rank_metric=0.ckpt"))
    else:
        trainer = _trainer(out, scenario, checkpoint, 2, kind)
        try:
            trainer.fit(model, loader, val)
        except CollectiveError as exc:
            seen["error"] = str(exc)
    seen.update(
        rank=trainer.global_rank,
        local_rank=trainer.local_rank,
        world_size=trainer.world_size,
        num_devices=trainer.num_devices,
        is_global_zero=trainer.is_global_zero,
        weights={k: _full(v) for k, v in model.state_dict().items()},
        metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
        train_batches=trainer.num_training_batches,
        best_model_path=checkpoint.best_model_path,
        draws=dict(model.draws),
        sampler=type(getattr(trainer.train_dataloader, "sampler", None)).__name__,
        numpy_loaded=sys.modules.get("numpy") is not None,
    )
    if scenario in ("spawn", "fit"):  # a second run in the same processes (spawn: on new ones)
        seen["validate"] = trainer.validate(model, val, verbose=False)
    if "error" not in seen:
        trainer.save_checkpoint(out / "manual.ckpt")
    if scenario == "fit":  # a path per rank, saved twice: rank 0's is written, rank 0 warns once
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                trainer.save_checkpoint(out / f"manual-rank{trainer.global_rank}.ckpt")
        seen["save_warnings"] = [str(w.message) for w in caught if "different paths" in str(w.message)]
    torch.save(seen, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "ddp")
