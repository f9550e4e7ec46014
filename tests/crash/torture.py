"""The kill torture harness: a training child is SIGKILLed at random moments, the directory checked after each.

Used by ``test_torture.py`` (a bounded number of kills in the suite) and runnable on its own for long runs::

    STEPSTONE_TORTURE_KILLS=500 .venv/bin/python -m pytest tests/crash -q -s

The invariant checked after every kill (``check_directory``):

- every ``*.ckpt`` under its final name verifies (no partial file ever carries a final name);
- every checkpoint the run index lists exists, verifies and loads, and the folder holds nothing but checkpoints
  and hidden temporaries (of the write the kill interrupted);
- at most ``top_k`` committed top-k files plus one (the file the run resumed from, or the one a kill
  caught between committing a newer file and deleting the one it replaces), ``last*`` not counted;
- the next child, started with ``ckpt_path="last"``, resumes from the newest committed step.

Children are forked from a zygote that imported torch and stepstone once, so a kill costs a restore and a
few saves, not an interpreter start (3 s).
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stepstone
from stepstone.checkpoint import RunIndex, load_file, verify_file
from stepstone.checkpoint.commit import is_temp_name
from stepstone.errors import CheckpointError

CHILD = Path(__file__).with_name("torture_child.py")


@dataclass
class TortureConfig:
    """What to torture.

    Args:
        kills: how many SIGKILLs.
        top_k: ModelCheckpoint's save_top_k.
        features: model width (``features**2 * 4`` bytes of weights).
        max_delay_s: kills land uniformly in ``[0, max_delay_s]`` after the child reports its start.
        checkpoint: extra ModelCheckpoint arguments (e.g. an async option).
        seed: the random seed of the kill moments.
    """

    kills: int = 50
    top_k: int = 2
    features: int = 1024
    max_delay_s: float = 0.4
    checkpoint: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class TortureReport:
    """What a torture run saw."""

    kills: int = 0
    violations: list[str] = field(default_factory=list)
    temps_left: int = 0  # kills that caught a save mid-write (a temporary file was left)
    resumes: int = 0  # children that resumed from a checkpoint
    max_step: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line of figures."""
        return (
            f"kills tried: {self.kills}, invariant violations: {len(self.violations)}, kills mid-write: "
            f"{self.temps_left}, resumes: {self.resumes}, newest step: {self.max_step}, {self.seconds:.1f} s"
        )


def _child_env() -> dict[str, str]:
    source_root = str(Path(stepstone.__file__).resolve().parent.parent)  # the child imports this stepstone
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def _spawn(directory: Path, config: TortureConfig, log: Any) -> subprocess.Popen[str]:
    arguments = json.dumps(
        {"top_k": config.top_k, "features": config.features, "checkpoint": config.checkpoint}
    )
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env=_child_env(),
        text=True,
    )


def _read_line(zygote: subprocess.Popen[str], prefix: str, timeout_s: float) -> int:
    """The number after ``prefix`` on the zygote's next output line."""
    assert zygote.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(zygote.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"the torture child printed no {prefix!r} line within {timeout_s} s")
    line = zygote.stdout.readline()
    if not line.startswith(prefix + " "):
        raise RuntimeError(f"the torture child failed (see children.log): expected {prefix!r}, got {line!r}")
    return int(line.split()[1])


def _start_child(zygote: subprocess.Popen[str]) -> tuple[int, int]:
    """Fork a training child: ``(pid, the step it resumed from)``."""
    assert zygote.stdin is not None
    zygote.stdin.write("go\n")
    zygote.stdin.flush()
    pid = _read_line(zygote, "pid", timeout_s=60)
    return pid, _read_line(zygote, "start", timeout_s=60)


def _kill_child(zygote: subprocess.Popen[str], pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    status = _read_line(zygote, "exit", timeout_s=30)  # the zygote reaped it
    if status != -signal.SIGKILL:
        raise RuntimeError(f"the torture child ended with status {status} before the kill (see children.log)")


def _stop(zygote: subprocess.Popen[str]) -> None:
    if zygote.stdin is not None:
        zygote.stdin.close()  # EOF: the zygote exits
    try:
        zygote.wait(timeout=30)
    except subprocess.TimeoutExpired:
        zygote.kill()
        zygote.wait()
    if zygote.stdout is not None:
        zygote.stdout.close()


def _step_of(directory: Path, name: str) -> int | None:
    try:
        record = verify_file(directory / name)
    except CheckpointError as error:
        raise AssertionError(f"{name} is under its final name but does not verify: {error}") from None
    return record.step


def check_directory(directory: Path, top_k: int) -> tuple[list[str], int]:
    """Check the invariant after a kill.

    Args:
        directory: the checkpoint directory.
        top_k: ModelCheckpoint's save_top_k.

    Returns:
        ``(violations, newest committed step or -1)``.
    """
    violations: list[str] = []
    names = sorted(os.listdir(directory))
    final = [n for n in names if n.endswith(".ckpt") and not is_temp_name(n)]
    steps: dict[str, int] = {}
    for name in final:
        try:
            steps[name] = _step_of(directory, name) or 0
        except AssertionError as error:
            violations.append(str(error))
    others = [n for n in names if n not in final and not is_temp_name(n)]
    if others:
        violations.append(f"the folder holds files that are neither checkpoints nor temporaries: {others}")
    listed: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged trailer would only warn while scanning
        try:
            listed = {record.name for record in RunIndex(directory).entries()}
        except Warning as warning:
            violations.append(f"the index scan warned: {warning}")
    for name in sorted(listed):
        if name not in steps:
            violations.append(f"the index lists {name}, which is missing or does not verify")
            continue
        try:
            state = load_file(directory / name)
        except CheckpointError as error:
            violations.append(f"{name} is listed and verifies but does not load: {error}")
            continue
        if state["global_step"] != steps[name]:
            violations.append(f"{name}: trailer step {steps[name]} != global_step {state['global_step']}")
    top = [n for n in final if not n.startswith("last")]
    if len(top) > top_k + 1:
        violations.append(f"{len(top)} top-k files ({top}) for save_top_k={top_k} (+1 allowed)")
    return violations, max(steps.values(), default=-1)


def run_torture(directory: Path, config: TortureConfig) -> TortureReport:
    """Kill a training child ``config.kills`` times and check the invariant after each kill.

    Args:
        directory: an empty directory for the checkpoints (and the children's stderr log).
        config: what to torture.

    Returns:
        The report; ``report.violations`` is empty when every invariant held.
    """
    rng, report, started = random.Random(config.seed), TortureReport(), time.monotonic()
    ckpts = directory / "ckpts"
    ckpts.mkdir()
    expected_start = 0
    with open(directory / "children.log", "w") as log:
        zygote = _spawn(ckpts, config, log)
        try:
            for kill in range(config.kills):
                pid, start = _start_child(zygote)
                report.resumes += start > 0
                if start != expected_start:
                    report.violations.append(
                        f"kill {kill}: resumed from step {start}, the newest committed step is {expected_start}"
                    )
                time.sleep(rng.uniform(0, config.max_delay_s))
                _kill_child(zygote, pid)
                report.kills += 1
                report.temps_left += any(is_temp_name(n) for n in os.listdir(ckpts))
                violations, newest = check_directory(ckpts, config.top_k)
                report.violations += [f"kill {kill}: {v}" for v in violations]
                expected_start = max(newest, 0)
                report.max_step = max(report.max_step, newest)
        finally:
            _stop(zygote)
    report.seconds = time.monotonic() - started
    return report
