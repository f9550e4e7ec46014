"""One torchrun start (2 gloo ranks) of ``early_stopping_ddp_script.py`` shared by the callback tests."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from stepstone.strategies import find_free_port

SCRIPT = Path(__file__).with_name("early_stopping_ddp_script.py")


@functools.cache
def _run_all() -> Path:
    # A cached folder of results: every scenario runs once per test session, whichever test asks first.
    out = Path(tempfile.mkdtemp(prefix="stepstone-callbacks-ddp-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={find_free_port()}",
    ]
    done = subprocess.run(
        [*launcher, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def ddp_results(scenario: str) -> list[dict[str, Any]]:
    """What ranks 0 and 1 saw in ``scenario`` (``early_stopping``, ``timer_rank0|1``, ``save_on_exception``)."""
    out = _run_all()
    return [torch.load(out / f"{scenario}-rank{rank}.pt") for rank in (0, 1)]
