"""The seed page's distributed snippet under torchrun with 2 CPU processes: one file, loadable on every rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stepstone.strategies import find_free_port

SCRIPT = Path(__file__).with_name("seed_ddp_script.py")


@pytest.mark.timeout(120)
def test_manual_saving_with_distributed_training_saves_one_checkpoint(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={find_free_port()}",
        str(SCRIPT),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Both ranks ran (devices="auto" took the 2 processes torchrun started) and loaded the same file.
    assert "rank 0 of 2: ok" in done.stdout and "rank 1 of 2: ok" in done.stdout
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["example.ckpt"]
