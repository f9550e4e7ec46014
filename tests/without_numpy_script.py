"""One process, numpy blocked: fit, save, load, resume and the ``stepstone ckpt`` commands (see test_without_numpy).

Usage: ``python without_numpy_script.py OUT_DIR`` with ``import numpy`` failing; prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import stepstone as L
from stepstone.callbacks import ModelCheckpoint
from stepstone.cli import main as cli


class Net(L.LightningModule):
    def __init__(self, hidden: int = 3, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Sequential(nn.Linear(2, hidden), nn.Linear(hidden, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _fit(out: Path, epochs: int, ckpt_path: str | None = None) -> tuple[L.Trainer, Net]:
    # Shuffled by the restored torch generator; a worker process seeded through seed_everything(workers=True).
    data = DataLoader(
        TensorDataset(torch.randn(8, 2, generator=torch.Generator().manual_seed(0))),
        batch_size=2,
        shuffle=True,
        num_workers=1,
    )
    model = Net(hidden=4)
    trainer = L.Trainer(
        max_epochs=epochs,
        default_root_dir=str(out),
        callbacks=[ModelCheckpoint(dirpath=str(out / "ckpts"), save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, model


def main(out: Path) -> None:
    try:
        import numpy  # noqa: F401
    except ImportError:
        blocked = True
    else:
        blocked = False
    L.seed_everything(3, workers=True, verbose=False)
    straight_trainer, straight = _fit(out / "straight", 2)
    L.seed_everything(3, workers=True, verbose=False)
    trainer, _ = _fit(out / "run", 1)
    trainer.save_checkpoint(out / "manual.ckpt")
    loaded = Net.load_from_checkpoint(out / "manual.ckpt")
    resumed_trainer, resumed = _fit(out / "run", 2, ckpt_path="last")
    ckpts = out / "run" / "ckpts"
    codes = {
        "verify": cli(["ckpt", "verify", str(ckpts)]),
        "ls": cli(["ckpt", "ls", str(ckpts)]),
        "show": cli(["ckpt", "show", str(out / "manual.ckpt")]),
        "diff": cli(
            ["ckpt", "diff", str(ckpts / "last.ckpt"), str(out / "straight" / "ckpts" / "last.ckpt")]
        ),
        "export": cli(["ckpt", "export", str(out / "manual.ckpt"), str(out / "manual.safetensors")]),
    }
    result = {
        "numpy_blocked": blocked and sys.modules.get("numpy") is None,
        "loaded_hparams": dict(loaded.hparams),
        "loaded_matches": all(
            torch.equal(v, trainer.lightning_module.state_dict()[k]) for k, v in loaded.state_dict().items()
        ),
        "resumed_step": resumed_trainer.global_step,
        "resumed_matches_straight": all(
            torch.equal(v, straight.state_dict()[k]) for k, v in resumed.state_dict().items()
        ),
        "straight_step": straight_trainer.global_step,
        "cli": codes,
        "exported": os.path.exists(out / "manual.safetensors"),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
