"""The resume facts the deliberate-difference predicates share."""

from __future__ import annotations

from compat.differential import configs
from compat.differential.difference import Context, resume_step


def test_resume_step_is_the_file_as_the_run_found_it_not_as_the_run_left_it() -> None:
    # resume_file resumed from checkpoints/best.ckpt (global_step 2 after "stop"), then overwrote it at step 3.
    stop = {"files": {"checkpoints/best.ckpt": {"epoch": 1, "global_step": 2}}}
    resumed = {
        "ckpt_path": "checkpoints/best.ckpt",
        "files": {"checkpoints/best.ckpt": {"epoch": 1, "global_step": 3}},
    }
    observed = {"stop": stop, "resume_file": resumed}
    ctx = Context(configs.generate(0), observed, observed, frozenset())
    assert resume_step(ctx, "resume_file") == 2


def test_resume_step_of_a_file_saved_between_runs_is_read_from_the_run_itself() -> None:
    fit = {"files": {}}
    resumed = {
        "ckpt_path": "manual/final.ckpt",
        "files": {"manual/final.ckpt": {"epoch": 2, "global_step": 6}},
    }
    observed = {"fit": fit, "continue": resumed}
    ctx = Context(configs.generate(0), observed, observed, frozenset())
    assert resume_step(ctx, "continue") == 6
    assert resume_step(ctx, "fit") is None
