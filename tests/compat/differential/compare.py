"""Field-by-field comparison of what a user observes under Lightning 2.6.6 and under stepstone.

Every difference is reported unless one of the named predicates in :data:`DELIBERATE` explains it; each
predicate covers one documented, deliberate stepstone behaviour and only the observation it causes, in the
situation where it causes it. Nothing else is filtered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compat.differential import deliberate_checkpoint_decisions as decisions
from compat.differential import deliberate_last as last
from compat.differential import deliberate_resume as resume
from compat.differential.configs import Config
from compat.differential.difference import (
    MISSING,
    Context,
    Difference,
    file_kind,
    same,
)
from compat.differential.program import Observation

RUN_ORDER = ["fit", "validate_best", "test_best", "continue", "stop", "resume_file", "resume_mid"]
_SCALARS = [
    "ckpt_path",
    "global_step",
    "current_epoch",
    "optimizer_steps",
    "sanity_runs",
    "val_runs",
    "metrics_at_start",
    "callback_metrics",
    "returned",
]
_CHECKPOINT_FIELDS = [
    "dirpath",
    "best_model_path",
    "best_model_score",
    "kth_best_model_path",
    "kth_value",
    "last_model_path",
    "current_score",
    "best_k_models",
]


def _error_type(obs: Observation) -> str | None:
    err = obs.get("error")
    return None if err is None else str(err).split(":", 1)[0]


def _compare_files(run: str, lf: dict[str, Any], sf: dict[str, Any]) -> list[Difference]:
    diffs = []
    for rel in sorted(lf.keys() | sf.keys()):
        a, b = lf.get(rel, MISSING), sf.get(rel, MISSING)
        if a == MISSING or b == MISSING:
            field = "files.only_in_stepstone" if a == MISSING else "files.only_in_lightning"
            diffs.append(Difference(run, field, rel, a, b, file_kind(rel)))
        elif a != b:
            diffs.append(Difference(run, "files.content", rel, a, b, file_kind(rel)))
    return diffs


def _compare_trained(run: str, a: list[Any], b: list[Any]) -> list[Difference]:
    batches_a, batches_b = [t[:2] for t in a], [t[:2] for t in b]
    if batches_a != batches_b:
        return [Difference(run, "trained.batches", "", batches_a, batches_b)]
    diffs = []
    for (epoch, idx, ids_a), (_, _, ids_b) in zip(a, b, strict=True):
        if ids_a != ids_b:
            diffs.append(Difference(run, "trained.ids", f"{epoch},{idx}", ids_a, ids_b))
    return diffs


def _compare_checkpoints(run: str, a: list[Observation], b: list[Observation]) -> list[Difference]:
    diffs = []
    for i, (ca, cb) in enumerate(zip(a, b, strict=False)):
        for field in _CHECKPOINT_FIELDS:
            if not same(ca[field], cb[field]):
                diffs.append(Difference(run, f"checkpoint.{field}", str(i), ca[field], cb[field]))
    if len(a) != len(b):
        diffs.append(Difference(run, "checkpoint.count", "", len(a), len(b)))
    return diffs


def compare_run(run: str, a: Observation, b: Observation) -> list[Difference]:
    """Differences between Lightning's (``a``) and stepstone's (``b``) observation of one run."""
    ea, eb = _error_type(a), _error_type(b)
    if ea != eb:
        # One raised and the other did not (or another type): everything after is a consequence.
        return [Difference(run, "error", "", a.get("error"), b.get("error"))]
    diffs = [
        Difference(run, f, "", a.get(f, MISSING), b.get(f, MISSING))
        for f in _SCALARS
        if not same(a.get(f, MISSING), b.get(f, MISSING))
    ]
    if "trained" in a:
        diffs += _compare_trained(run, a["trained"], b["trained"])
    diffs += _compare_checkpoints(run, a.get("checkpoints", []), b.get("checkpoints", []))
    diffs += _compare_files(run, a.get("files", {}), b.get("files", {}))
    if not same(a.get("weights"), b.get("weights")):
        diffs.append(Difference(run, "weights", "", a.get("weights"), b.get("weights")))
    return diffs


Predicate = Callable[[Difference, Context], bool]
DELIBERATE: dict[str, Predicate] = {
    "last_refreshed_every_trigger": last.last_refreshed,
    "last_at_final_trigger": last.last_at_final_trigger,
    "mid_epoch_resume_data": resume.mid_epoch_data,
    "mid_epoch_resume_weights": resume.mid_epoch_weights,
    "pending_validation_after_resume": resume.pending_validation,
    "pending_validation_in_checkpoint_decisions": decisions.pending_validation_decisions,
    "restored_metrics_on_resume": resume.restored_metrics,
    "monitored_key_found_after_resume": resume.monitor_found_after_resume,
    "whole_epoch_mean_after_mid_epoch_resume": resume.whole_epoch_mean,
    "whole_epoch_mean_in_checkpoints": decisions.checkpoint_epoch_mean,
    "finished_epoch_end_in_checkpoint_decisions": decisions.finished_epoch_end_decisions,
    "full_epoch_after_epoch_end_restart": resume.epoch_end_restart_batches,
    "full_epoch_after_epoch_end_restart_consequences": resume.epoch_end_restart_consequences,
    "metrics_file_after_resume": resume.metrics_file_after_resume,
    "restored_metrics_in_checkpoint_decisions": last.restored_metric_decisions,
    "last_path_of_same_trigger": last.last_path_of_trigger,
    "no_dangling_last_link": last.no_dangling_last,
    # (5) "a failed save raises" is not exercised: the program never makes a save fail.
}


def explain(d: Difference, ctx: Context) -> str | None:
    """The name of the deliberate difference that explains ``d``, or None."""
    for name, predicate in DELIBERATE.items():
        if predicate(d, ctx):
            return name
    return None


def compare(
    config: Config, lightning: dict[str, Observation], stepstone: dict[str, Observation]
) -> list[Difference]:
    """Unexplained differences between two :func:`~compat.differential.program.run_flow` results.

    Args:
        config: the configuration both ran.
        lightning: Lightning 2.6.6's observations.
        stepstone: stepstone's observations.

    Returns:
        Every difference no predicate in :data:`DELIBERATE` explains, in run order.
    """
    unexplained: list[Difference] = []
    runs = [r for r in RUN_ORDER if r in lightning or r in stepstone]
    for run in runs:
        if run not in lightning or run not in stepstone:
            unexplained.append(Difference(run, "ran", "", run in lightning, run in stepstone))
            continue
        used: set[tuple[str, str]] = set()
        for d in compare_run(run, lightning[run], stepstone[run]):
            ctx = Context(config, lightning, stepstone, frozenset(used))
            name = explain(d, ctx)
            if name is None:
                unexplained.append(d)
            else:
                used.add((run, name))
    return unexplained
