"""Checks that need a CUDA GPU. They are not part of the CPU test suite (which must never skip):
run them on a machine with a GPU with ``.venv/bin/python -m pytest gpu_checks``."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from models import BoringModel, make_trainer


def test_cuda_placement_and_16_mixed(tmp_path: Path) -> None:
    seen: list[tuple[torch.device, torch.dtype]] = []
    grad_norms: list[float] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            out = self(batch)
            seen.append((batch.device, out.dtype))
            return self.loss(out.float())

        def on_before_optimizer_step(self, optimizer: object) -> None:
            # The gradients are unscaled before this hook (Lightning's order), so they are not ~65536x too big.
            grad_norms.append(float(torch.cat([p.grad.flatten() for p in self.parameters()]).norm()))

    model = Model()
    trainer = make_trainer(
        tmp_path, accelerator="gpu", devices=1, precision="16-mixed", max_steps=5, limit_val_batches=0
    )
    trainer.fit(model)
    assert trainer.device == torch.device("cuda", 0)
    assert all(device.type == "cuda" and dtype == torch.float16 for device, dtype in seen)
    finite = [norm for norm in grad_norms if math.isfinite(norm)]  # the scaler may skip an overflowing step
    assert finite and all(norm < 1000 for norm in finite)
    assert model.layer.weight.device.type == "cpu"  # moved back at teardown
    assert trainer.global_step == 5
