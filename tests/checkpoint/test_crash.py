"""A writer process SIGKILLed at random moments never leaves a broken checkpoint behind.

A child process saves ~200 MB checkpoints in a loop through ``CheckpointManager`` (commit, retention). The
parent kills it with SIGKILL -- sometimes while the temporary file is being written, sometimes at a random
later moment (fsync, rename, retention) -- and then checks that every ``*.ckpt`` in the directory verifies
and loads, that the run index lists exactly those, that the folder holds nothing else, that no temporary
file is visible as ``*.ckpt``, and that ``sweep_stale_temps`` removes the leftovers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import stepstone
from stepstone.checkpoint import RunIndex, load_file, sweep_stale_temps, verify_file
from stepstone.checkpoint.commit import is_temp_name

CHILD = """
import sys, torch
from stepstone.checkpoint import CheckpointManager, KeepLatest

manager = CheckpointManager(sys.argv[1], retention=KeepLatest(2))
step = manager.latest_step() or 0
tensors = [torch.empty(25_000_000) for _ in range(2)]  # 2 x 100 MB
while True:
    step += 1
    for tensor in tensors:
        tensor.fill_(float(step))
    print(f"writing {step}", flush=True)
    manager.save(step, {"step": step, "a": tensors[0], "b": tensors[1]})
"""


def _child_env() -> dict[str, str]:
    # The child must import this very stepstone (installed or not).
    source_root = str(Path(stepstone.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")])}


def _kill_during_a_save(directory: Path, rng: random.Random, mid_write: bool) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory)], stdout=subprocess.PIPE, env=_child_env(), text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("writing"), line
        deadline = time.monotonic() + 10
        if mid_write:  # kill while the temporary file is being written
            while not any(".tmp-" in name for name in os.listdir(directory)) and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.03))
        else:  # once a save has completed, kill anywhere (write, fsync, rename, index, retention)
            line = child.stdout.readline()
            assert line.startswith("writing"), line
            time.sleep(rng.uniform(0, 1.0))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def _check_directory(directory: Path) -> bool:
    """Every visible checkpoint is intact; returns whether a temporary file was left behind."""
    names = os.listdir(directory)
    checkpoints = sorted(n for n in names if n.endswith(".ckpt"))
    assert not any(is_temp_name(n) for n in checkpoints)
    for name in checkpoints:
        record = verify_file(directory / name)
        state = load_file(directory / name)
        assert record.step == state["step"]
        assert bool(state["a"].eq(float(state["step"])).all()) and bool(
            state["b"].eq(float(state["step"])).all()
        )
    assert [n for n in names if n not in checkpoints and not is_temp_name(n)] == []  # nothing but checkpoints
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged index or trailer would warn
        indexed = RunIndex(directory).entries()
    assert [r.name for r in indexed] == sorted(checkpoints, key=lambda n: int(n.split("=")[1].split(".")[0]))
    leftovers = [n for n in names if is_temp_name(n)]
    removed = sweep_stale_temps(directory)
    assert sorted(os.path.basename(p) for p in removed) == sorted(leftovers)
    assert not any(is_temp_name(n) for n in os.listdir(directory))
    return bool(leftovers)


@pytest.mark.timeout(120)
def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path: Path, serializer: str) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"crash test seed: {seed}")
    interrupted_writes = 0
    rounds = (
        4 if serializer == "fast" else 2
    )  # the child inherits STEPSTONE_SERIALIZER; the reference path is
    for round_number in range(rounds):  # the same commit protocol, so half the rounds keep the suite quick
        _kill_during_a_save(tmp_path, rng, mid_write=round_number % 2 == 0)
        interrupted_writes += _check_directory(tmp_path)
    assert interrupted_writes >= 1, "no kill landed during a write: the test proved nothing"
    assert any(n.endswith(".ckpt") for n in os.listdir(tmp_path)), "no save ever completed"
