"""The children of the kill torture test: each trains forever with ModelCheckpoint, saving at every step.

Run as ``python torture_child.py DIR CONFIG_JSON``: a zygote that imports torch and stepstone once (3 s),
then forks one training child per "go" line on stdin and prints ``pid <pid>``; the child resumes with
``ckpt_path="last"`` and prints ``start <global_step>`` once training starts; the parent SIGKILLs it at a
random moment and the zygote prints ``exit <status>``. Forking is safe here: the zygote never runs torch
code, so no thread pool exists yet. CONFIG_JSON holds ``top_k``, ``checkpoint`` (extra ModelCheckpoint
arguments, e.g. ``{"async_save": true}``) and ``features`` (``features**2 * 4`` bytes of weights).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import stepstone as L
from stepstone.callbacks import ModelCheckpoint


class Wide(L.LightningModule):
    """One square linear layer: big enough that each save takes measurable time."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(features, features)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        loss = self.layer(x).pow(2).mean()
        self.log("train_loss", loss)  # noisy: top-k keeps replacing files
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=1e-4)


class Report(L.Callback):
    """Tells the parent which step training (re)starts from."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"start {trainer.global_step}", flush=True)


def train(directory: str, config: dict[str, Any]) -> None:
    """One training child: resume from "last" and train until killed."""
    torch.set_num_threads(1)
    features = int(config["features"])
    data = TensorDataset(torch.randn(64, features, generator=torch.Generator().manual_seed(0)))
    checkpoint = ModelCheckpoint(
        dirpath=directory,
        monitor="train_loss",
        save_top_k=int(config["top_k"]),
        save_last=True,
        every_n_train_steps=1,
        **config.get("checkpoint", {}),
    )
    trainer = L.Trainer(
        max_steps=10**9,
        callbacks=[checkpoint, Report()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=directory,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no checkpoint yet, starting from scratch" on the first run
        trainer.fit(Wide(features), DataLoader(data, batch_size=8, shuffle=True), ckpt_path="last")


def main() -> None:
    directory, config = sys.argv[1], json.loads(sys.argv[2])
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))])  # imports torch._dynamo (2 s) once, here
    assert threading.active_count() == 1, "the zygote must not fork with threads running"
    for line in sys.stdin:
        if line.strip() != "go":
            break
        pid = os.fork()
        if pid == 0:
            try:
                train(directory, config)
            except BaseException:
                traceback.print_exc()
            os._exit(3)  # training never ends by itself: reaching here is a failure
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
