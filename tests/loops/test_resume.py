"""Exact resume: train straight vs. train, stop, resume in a new process — the final checkpoints are identical.

The interrupted runs stop right after writing a checkpoint (like a crash) at epoch boundaries, mid-epoch,
inside an accumulation window, right after a validation and after the very last batch of the run; one fresh process (per scenario) resumes from each
checkpoint with every generator disturbed first. Weights, optimizer and scheduler state, loop counters, logged
metrics and the generators' final states must all be bitwise equal (``torch.equal``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from resume_harness import differences, run

HARNESS = Path(__file__).parents[1] / "resume_harness.py"

# name -> (scenario, interruption points [hook, n]); each epoch has 6 batches and validates after batches 3 and 6.
SCENARIOS: dict[str, tuple[dict[str, Any], list[list[Any]]]] = {
    "shuffled": (
        {"shuffle": True, "accumulate": 1, "workers": 0},
        [["batch", 4], ["validation", 1], ["epoch", 1], ["batch", 8], ["batch", 12]],
    ),
    "unshuffled-accumulating": (
        {"shuffle": False, "accumulate": 3, "workers": 0},
        [["batch", 4], ["batch", 6], ["validation", 2], ["batch", 12]],
    ),
    # Random per-sample augmentation (torch, python, numpy draws) in 2 worker processes: the workers' generators
    # must continue too. Batch 3 is odd (the next batch comes from worker 1) and inside an accumulation window.
    "workers-augmented-accumulating": (
        {"shuffle": True, "accumulate": 2, "workers": 2, "augment": True},
        [["batch", 3], ["validation", 1], ["epoch", 1], ["batch", 8]],
    ),
    # Persistent workers (they keep their generators across epochs), prefetch_factor 3, a user worker_init_fn,
    # drop_last (5 batches an epoch).
    "persistent-workers-augmented": (
        {
            "shuffle": True,
            "accumulate": 1,
            "workers": 2,
            "augment": True,
            "persistent": True,
            "drop_last": True,
        },
        [["batch", 3], ["validation", 1], ["epoch", 1], ["batch", 7], ["batch", 10]],
    ),
    # An unsized IterableDataset with state_dict/load_state_dict and augmentation in 2 workers: each worker's
    # copy is put back at its position (no replay); the loop fetches one batch ahead of training here.
    "iterable-workers-augmented": (
        {"shuffle": False, "accumulate": 1, "workers": 2, "iterable": True},
        [["batch", 3], ["epoch", 1], ["batch", 8]],
    ),
    # A loader that resumes itself, and no validation: a run resumed after the very last batch has nothing left
    # to run, yet its final checkpoint carries the generators, the loader's state and the epoch's data state on.
    "stateful-loader-without-validation": (
        {"shuffle": False, "accumulate": 1, "workers": 0, "stateful": True, "no_val": True},
        [["batch", 4], ["epoch", 1], ["batch", 6], ["batch", 12]],
    ),
}


def load(path: Path) -> dict[str, Any]:
    checkpoint: dict[str, Any] = torch.load(path, weights_only=True)
    return checkpoint


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_resuming_in_a_new_process_equals_the_uninterrupted_run(tmp_path: Path, name: str) -> None:
    scenario, points = SCENARIOS[name]
    root = str(tmp_path / "root")
    straight = tmp_path / "straight.ckpt"
    run(scenario, root, str(straight))
    resumes = []
    for i, point in enumerate(points):
        mid = tmp_path / f"mid-{i}.ckpt"
        run(scenario, root, None, stop=[point, str(mid)])
        resumes.append([str(mid), str(tmp_path / f"resumed-{i}.ckpt")])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"scenario": scenario, "root": root, "resumes": resumes}))
    subprocess.run([sys.executable, str(HARNESS), str(spec)], check=True, timeout=120, capture_output=True)
    expected = load(straight)
    assert expected["global_step"] > 0
    for point, (mid, resumed) in zip(points, resumes, strict=True):
        # ["batch", <the last>] stops right after the last optimizer step: the resumed run has no batch left.
        assert 0 < load(Path(mid))["global_step"] <= expected["global_step"]
        assert differences(expected, load(Path(resumed))) == [], f"resumed from {point}"


def test_resuming_a_finished_run_in_a_new_process_writes_the_same_checkpoint(tmp_path: Path) -> None:
    # Nothing is left to train, yet the run goes on with the checkpoint's generators and data state.
    scenario = {"shuffle": True, "accumulate": 1, "workers": 0}
    root = str(tmp_path / "root")
    finished, again = tmp_path / "finished.ckpt", tmp_path / "again.ckpt"
    run(scenario, root, str(finished))
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"scenario": scenario, "root": root, "resumes": [[str(finished), str(again)]]})
    )
    subprocess.run([sys.executable, str(HARNESS), str(spec)], check=True, timeout=120, capture_output=True)
    assert differences(load(finished), load(again)) == []


def test_the_scenarios_cover_mid_accumulation_and_validation_points(tmp_path: Path) -> None:
    scenario, _ = SCENARIOS["unshuffled-accumulating"]
    root = str(tmp_path / "root")
    mid = tmp_path / "mid.ckpt"
    run(scenario, root, None, stop=[["batch", 4], str(mid)])
    state = load(mid)["stepstone"]
    assert (
        state["loop"]["tail"] == "validate"
    )  # saved in on_train_batch_end: that batch's validation is pending
    assert set(state["accumulation"]["grads"]) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    run(scenario, root, None, stop=[["validation", 2], str(mid)])
    state = load(mid)["stepstone"]
    assert state["loop"]["tail"] == "after_validation"
    assert "accumulation" not in state  # at an optimizer-step boundary there is nothing to carry over


def test_the_comparison_sees_a_resume_that_forgets_the_generators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stepstone.loops.fit as fit

    scenario = {"shuffle": True, "accumulate": 1, "workers": 0}
    root = str(tmp_path / "root")
    run(scenario, root, str(tmp_path / "straight.ckpt"))
    run(scenario, root, None, stop=[["batch", 4], str(tmp_path / "mid.ckpt")])
    monkeypatch.setattr(fit, "restore_rng", lambda state: None)
    run(scenario, root, str(tmp_path / "resumed.ckpt"), resume=str(tmp_path / "mid.ckpt"))
    found = differences(load(tmp_path / "straight.ckpt"), load(tmp_path / "resumed.ckpt"))
    assert ".state_dict.net.0.weight: tensors differ" in found


def test_the_comparison_sees_a_resume_without_the_worker_generators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stepstone.loops.worker_rng as worker_rng

    monkeypatch.setattr(worker_rng, "_CAPTURE", False)
    scenario = {"shuffle": True, "accumulate": 1, "workers": 2, "augment": True}
    root = str(tmp_path / "root")
    run(scenario, root, str(tmp_path / "straight.ckpt"))
    run(scenario, root, None, stop=[["batch", 3], str(tmp_path / "mid.ckpt")])
    run(scenario, root, str(tmp_path / "resumed.ckpt"), resume=str(tmp_path / "mid.ckpt"))
    found = differences(load(tmp_path / "straight.ckpt"), load(tmp_path / "resumed.ckpt"))
    assert ".state_dict.net.0.weight: tensors differ" in found
