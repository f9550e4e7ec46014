"""numpy is not a dependency (of stepstone, nor of torch): training, saving and resuming must not need it.

Each test runs a real program in a subprocess where ``import numpy`` fails (a ``sitecustomize`` puts None in
``sys.modules['numpy']``; torch itself imports numpy optionally and still imports).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from strategies.script_runs import run_script

SCRIPT = Path(__file__).with_name("without_numpy_script.py")


def _numpy_blocked(tmp_path: Path) -> dict[str, str]:
    """The environment of a process where ``import numpy`` fails (the source under test stays on the path)."""
    blocker = tmp_path / "no_numpy"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['numpy'] = None\n")
    path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.timeout(120)
def test_one_process_fits_saves_loads_resumes_and_runs_the_cli_without_numpy(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "out")],
        env={**os.environ, **_numpy_blocked(tmp_path)},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["numpy_blocked"]
    assert result["loaded_hparams"] == {"hidden": 4, "lr": 0.1} and result["loaded_matches"]
    # Resumed from last.ckpt (RNG, shuffling, worker seeding without numpy) = the uninterrupted run.
    assert result["resumed_step"] == result["straight_step"] == 8
    assert result["resumed_matches_straight"]
    assert result["cli"] == {"verify": 0, "ls": 0, "show": 0, "diff": 0, "export": 1}
    # Only the optional safetensors export needs numpy (safetensors does), and it says how to get it.
    assert not result["exported"]
    assert "needs the safetensors and numpy packages: pip install 'stepstone[safetensors]'" in done.stderr


@pytest.mark.timeout(120)
def test_ddp_fit_saves_and_resumes_without_numpy(tmp_path: Path) -> None:
    # 2 ranks on gloo: ModelCheckpoint's setup and every save exchange pickled objects between the ranks.
    zero, one = run_script(tmp_path, 4, "fit_resume", 2, env_extra=_numpy_blocked(tmp_path))
    assert not zero["numpy_loaded"] and not one["numpy_loaded"]
    names = sorted(p.name for p in (tmp_path / "ckpts").glob("*.ckpt"))
    assert names == ["epoch=0-rank_metric=0.ckpt", "epoch=1-rank_metric=0.ckpt", "last.ckpt"]
    assert zero["global_step"] == one["global_step"] == 4
    for rank in (zero, one):
        # Resumed from the epoch-0 file: the same weights and random stream as the uninterrupted run.
        assert rank["draws"] == {1: rank["straight_draws"][1]}
        for name, value in rank["straight"].items():
            assert torch.equal(rank["weights"][name], value)
            assert torch.equal(zero["weights"][name], one["weights"][name])
    assert (tmp_path / "manual.ckpt").is_file()
