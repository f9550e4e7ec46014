"""The Lightning side of ``bench_async.py --lightning``; runs in ``benchmarks/.venv-lightning``.

``python _lightning_async.py TENSORS KIND MATMULS STEPS EVERY REPEATS ROOT``: the model, step work (KIND
``sleep``: 10 ms sleeps; ``cpu``: MATMULS 192x192 matmuls) and checkpoint schedule of bench_async.py, run by
Lightning 2.6.6: a warm-up fit, then REPEATS x (no checkpoints, ``trainer.save_checkpoint`` sync through
ModelCheckpoint, ``AsyncCheckpointIO``). Prints one JSON line per fit: mode, fit time and the time each
checkpointing ``on_train_batch_end`` blocked the loop.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO

STEP_S = 0.010


class Model(L.LightningModule):
    """bench_async's model: big checkpointed buffers, a tiny trained layer; steps sleep or compute."""

    def __init__(self, tensors: int, kind: str, matmuls: int) -> None:
        super().__init__()
        for i in range(tensors):
            self.register_buffer(f"big{i}", torch.ones(16 * 1024 * 1024))
        self.layer = torch.nn.Linear(4, 1)
        self.kind, self.matmuls = kind, matmuls
        self.work = torch.randn(192, 192)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.kind == "sleep":
            time.sleep(STEP_S)
        else:
            result = self.work
            for _ in range(self.matmuls):
                result = torch.tanh(result @ self.work)
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.layer.parameters(), lr=0.01)


class Timed(ModelCheckpoint):
    """Records how long each checkpointing ``on_train_batch_end`` blocked the loop."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stalls: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        before = self._last_global_step_saved
        start = time.perf_counter()
        super().on_train_batch_end(trainer, *args)
        if self._last_global_step_saved != before:
            self.stalls.append(time.perf_counter() - start)


def fit(model: Model, mode: str, steps: int, every: int, root: str) -> dict[str, Any]:
    """One fit; ``mode`` is none / sync / async (AsyncCheckpointIO)."""
    directory = os.path.join(root, mode)
    shutil.rmtree(directory, ignore_errors=True)
    timed = Timed(dirpath=directory, every_n_train_steps=every, save_top_k=1)
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=[] if mode == "none" else [timed],
        enable_checkpointing=mode != "none",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=directory,
        accelerator="cpu",
        devices=1,
        plugins=[AsyncCheckpointIO()] if mode == "async" else None,
    )
    batches = torch.utils.data.DataLoader(torch.randn(steps * 8, 4), batch_size=8)  # type: ignore[arg-type]
    os.sync()
    start = time.perf_counter()
    trainer.fit(model, batches)
    return {"mode": mode, "fit_s": time.perf_counter() - start, "stalls": timed.stalls}


def main(argv: list[str]) -> int:
    """Run the fits (see the module docstring) and print one JSON line each."""
    tensors, kind, matmuls, steps, every, repeats, root = argv
    torch.set_num_threads(1)
    fit(Model(int(tensors), kind, int(matmuls)), "async", 5, 2, root)  # warm-up
    for _ in range(int(repeats)):
        for mode in ("none", "sync", "async"):
            model = Model(int(tensors), kind, int(matmuls))
            print(json.dumps(fit(model, mode, int(steps), int(every), root)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
