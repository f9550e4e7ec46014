"""Kill torture: a training run SIGKILLed at random moments never loses or corrupts a committed checkpoint.

Sync and async saves, 50 kills each. ``STEPSTONE_TORTURE_KILLS`` sets the number of kills per mode (run
500+ with ``-s`` to see the figures); ``STEPSTONE_TORTURE_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from crash.torture import TortureConfig, run_torture

KILLS = int(os.environ.get("STEPSTONE_TORTURE_KILLS", "50"))
MODES: dict[str, dict[str, Any]] = {"sync": {}, "async": {"async_save": True}}  # extra ModelCheckpoint args


@pytest.mark.timeout(max(120, 3 * KILLS))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_sigkill_torture_keeps_every_committed_checkpoint(tmp_path: Path, mode: str) -> None:
    seed = int(os.environ.get("STEPSTONE_TORTURE_SEED", random.randrange(2**32)))
    report = run_torture(tmp_path, TortureConfig(kills=KILLS, seed=seed, checkpoint=MODES[mode]))
    print(f"torture {mode} (seed {seed}): {report.summary()}")
    assert report.violations == [], "\n".join(report.violations[:20])
    assert report.kills == KILLS
    assert report.resumes >= KILLS // 2, "too few children got far enough to save: the test proved little"
    assert report.temps_left >= 1, "no kill landed during a write: the test proved little"
