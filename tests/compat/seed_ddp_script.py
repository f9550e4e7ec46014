"""The seed page's "Manual saving with distributed training" snippet, verbatim, as a script for torchrun.

Usage: ``torchrun --nproc-per-node=2 seed_ddp_script.py OUT_DIR`` (writes ``OUT_DIR/example.ckpt``). The model
is the one the single-process snippets use (tests/compat/test_seed_page.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, as pytest's pythonpath does

from compat.test_seed_page import MyLightningModule
from stepstone import Trainer


def main() -> None:
    os.chdir(sys.argv[1])
    hparams = {"lr": 0.1}
    # --- the page's snippet, verbatim (plus max_epochs: the page's default of 1000 epochs is slow here) ---
    trainer = Trainer(strategy="ddp", max_epochs=2)
    model = MyLightningModule(hparams)
    trainer.fit(model)

    # Saves only on the main process
    # Handles strategy-specific saving logic like XLA, FSDP, DeepSpeed etc.
    trainer.save_checkpoint("example.ckpt")
    # --- end of the snippet ---
    new_model = MyLightningModule.load_from_checkpoint(checkpoint_path="example.ckpt")
    assert new_model.hparams["hparams"] == hparams
    for name, value in model.state_dict().items():
        assert torch.equal(new_model.state_dict()[name], value), name
    print(f"rank {trainer.global_rank} of {trainer.world_size}: ok")


if __name__ == "__main__":
    main()
