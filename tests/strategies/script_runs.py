"""Running ``trainer_ddp_script.py`` the way the distributed Trainer tests need: under torchrun, plain, or spawn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from stepstone.strategies import find_free_port

SCRIPT = Path(__file__).with_name("trainer_ddp_script.py")


def run_script(
    out: Path,
    batch_size: int,
    scenario: str,
    ranks: int,
    torchrun: bool = True,
    returncode: int = 0,
    kind: str = "ddp",
    env_extra: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run the script for ``scenario`` on ``ranks`` processes and return what each surviving rank saw.

    ``returncode`` other than 0: the expected exit status; the combined output is returned instead.
    ``env_extra``: environment variables to set (or replace) in the processes.
    """
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env.update(env_extra or {})
    env["OMP_NUM_THREADS"] = "1"
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={ranks}",
            f"--master_port={find_free_port()}",
        ]
        if ranks > 1 and torchrun
        else [sys.executable]
    )
    done = subprocess.run(
        [*launcher, str(SCRIPT), str(out), str(batch_size), scenario, kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == returncode, done.stdout[-3000:] + done.stderr[-3000:]
    if returncode:
        return [{"output": done.stdout + done.stderr}]
    # A rank that died writes nothing.
    files = [out / f"rank{rank}.pt" for rank in range(ranks)]
    return [torch.load(file, weights_only=False) for file in files if file.exists()]
