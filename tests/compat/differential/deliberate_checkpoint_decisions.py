"""Deliberate differences of a resumed run's metrics that reach ModelCheckpoint's decisions.

(7, consequence) The whole-epoch mean after a mid-epoch resume is also what a ModelCheckpoint monitors or
formats into a file name, so the scores it records and the names it writes carry stepstone's whole-epoch mean
where Lightning's carry the mean of the batches after the resume (the predicate recomputes both means from the
configuration and checks them). (3, consequence) The pending validation's metric is there for a trigger
before Lightning's first validation of the resumed run.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from compat.differential.configs import VAL_KEY, Config
from compat.differential.deliberate_resume import (
    epoch_keys,
    finished_epoch_end,
    number_same,
    resumed_epoch_means,
    steps_per_epoch,
)
from compat.differential.difference import Context, Difference, is_dir_of, resume_step, uses_any

_WHOLE_EPOCH_MEAN = "whole_epoch_mean_after_mid_epoch_resume"
_SCORES = {"checkpoint.current_score", "checkpoint.best_model_score", "checkpoint.kth_value"}
_PATHS = {"checkpoint.best_model_path", "checkpoint.kth_best_model_path", "checkpoint.last_model_path"}
_NUMBER = re.compile(r"\d+\.\d+")
_VERSION = re.compile(r"-v\d+(?=\.ckpt$)")


def _rendered(text: str, expected: float) -> bool:
    """Whether ``text`` (a number in a file name) is ``expected`` as some format precision renders it."""
    decimals = len(text.split(".", 1)[1])
    return not math.isnan(expected) and abs(float(text) - expected) <= 0.5 * 10**-decimals + 1e-6


def names_match(lightning: Any, stepstone: Any, after: float, whole: float) -> bool:
    """Whether two checkpoint names differ only where a number renders ``after`` (Lightning) and ``whole``
    (stepstone), at least once, and in a ``-vN`` suffix (stepstone's name may collide with an earlier run's)."""
    if not isinstance(lightning, str) or not isinstance(stepstone, str):
        return False
    name_l, name_s = _VERSION.sub("", lightning), _VERSION.sub("", stepstone)
    if _NUMBER.split(name_l) != _NUMBER.split(name_s):
        return False
    pairs = [(a, b) for a, b in zip(_NUMBER.findall(name_l), _NUMBER.findall(name_s), strict=True) if a != b]
    return bool(pairs) and all(_rendered(a, after) and _rendered(b, whole) for a, b in pairs)


def _best_k_match(lightning: Any, stepstone: Any, means: tuple[float, float], monitored: bool) -> bool:
    if not isinstance(lightning, dict) or not isinstance(stepstone, dict) or len(lightning) != len(stepstone):
        return False
    after, whole = means
    for path_l, score_l in lightning.items():
        path_s = path_l if path_l in stepstone else None
        if path_s is None:
            paired = [p for p in stepstone if names_match(path_l, p, after, whole)]
            path_s = paired[0] if len(paired) == 1 else None
        if path_s is None:
            return False
        score_s = stepstone[path_s]
        if score_l != score_s and not (monitored and _scores_match(score_l, score_s, means)):
            return False
    return True


def _scores_match(lightning: Any, stepstone: Any, means: tuple[float, float]) -> bool:
    return number_same(lightning, means[0]) and number_same(stepstone, means[1])


def _paired_file(d: Difference, ctx: Context, means: tuple[float, float]) -> bool:
    """A file only in one framework whose twin (same epoch/global_step, written after the resume) is only in
    the other, under the name with the other mean."""
    mine = d.lightning if d.field == "files.only_in_lightning" else d.stepstone
    step = resume_step(ctx, d.run)
    if not isinstance(mine, dict) or step is None or mine.get("global_step", -1) < step:
        return False
    other = ctx.stepstone[d.run] if d.field == "files.only_in_lightning" else ctx.lightning[d.run]
    theirs = ctx.lightning[d.run] if d.field == "files.only_in_lightning" else ctx.stepstone[d.run]
    twins = [
        rel
        for rel, info in other.get("files", {}).items()
        if info == mine
        and rel not in theirs.get("files", {})
        and os.path.dirname(rel) == os.path.dirname(d.key)
    ]
    after, whole = means
    if d.field == "files.only_in_lightning":
        return any(names_match(d.key, rel, after, whole) for rel in twins)
    return any(names_match(rel, d.key, after, whole) for rel in twins)


def checkpoint_epoch_mean(d: Difference, ctx: Context) -> bool:
    """(7, consequence) ModelCheckpoint monitors and names files with the whole-epoch mean after a mid-epoch resume.

    Explains, in a run whose ``callback_metrics`` differ only by (7) or that trained past the resumed epoch (whose
    mean stays the logged epoch mean until the next epoch's end), for a callback that monitors an epoch-mean
    key or formats one into its file name: a score (``current_score``, ``best_model_score``, ``kth_value``) that
    is Lightning's after-resume mean vs stepstone's whole-epoch mean; a path or ``best_k_models`` whose names
    differ only by those means rendered (and a ``-vN`` suffix) and whose scores differ only by them; a file
    written after the resume that exists in each framework under its own such name.
    """
    if (d.run, _WHOLE_EPOCH_MEAN) in ctx.explained:
        means = resumed_epoch_means(ctx, d.run)
    else:  # the run trained past the resumed epoch: its mean was current until the next epoch's end
        means = resumed_epoch_means(ctx, d.run, ended_inside=False)
    keys = epoch_keys(ctx.config)
    users = [c for c in ctx.config["checkpoints"] if uses_any(c, keys)]
    if means is None or not users:
        return False
    if d.field.startswith("checkpoint.") and d.key.isdigit():
        index = int(d.key)
        if index >= len(ctx.config["checkpoints"]) or ctx.config["checkpoints"][index] not in users:
            return False
        monitored = ctx.config["checkpoints"][index]["monitor"] in keys
        if d.field in _SCORES:
            return monitored and _scores_match(d.lightning, d.stepstone, means)
        if d.field in _PATHS:
            return names_match(d.lightning, d.stepstone, *means)
        if d.field == "checkpoint.best_k_models":
            return _best_k_match(d.lightning, d.stepstone, means, monitored)
        return False
    if d.field in ("files.only_in_lightning", "files.only_in_stepstone") and d.key.endswith(".ckpt"):
        in_folder = any(is_dir_of(c, os.path.dirname(d.key)) for c in users)
        return in_folder and d.kind != "manual" and _paired_file(d, ctx, means)
    return False


def _early_save(ctx: Context, run: str, checkpoint: Config, step: int, bound: float) -> bool:
    """Whether stepstone saved a file (only it has) in ``checkpoint``'s folder after the resumed ``step`` and no
    later than ``bound`` (the step up to which Lightning lacks the key stepstone already had)."""
    files_l = ctx.lightning[run].get("files", {})
    return any(
        isinstance(info, dict)
        and step < info.get("global_step", -1) <= bound
        and rel not in files_l
        and rel.endswith(".ckpt")
        and is_dir_of(checkpoint, os.path.dirname(rel))
        for rel, info in ctx.stepstone[run].get("files", {}).items()
    )


def _links_to_own_saves(d: Difference, ctx: Context, step: int) -> bool:
    """Whether ``d`` is a last link that differs only in its target, each framework's target a file written after
    the resumed ``step`` that only that framework has (the differently decided save the link follows)."""
    a, b = d.lightning, d.stepstone
    if not isinstance(a, dict) or not isinstance(b, dict) or "link" not in a or "link" not in b:
        return False
    if {k: v for k, v in a.items() if k != "link"} != {k: v for k, v in b.items() if k != "link"}:
        return False
    folder = os.path.dirname(d.key)
    files_l, files_s = ctx.lightning[d.run].get("files", {}), ctx.stepstone[d.run].get("files", {})
    target_l, target_s = os.path.join(folder, str(a["link"])), os.path.join(folder, str(b["link"]))
    only_l = target_l in files_l and target_l not in files_s
    only_s = target_s in files_s and target_s not in files_l
    return (
        only_l
        and only_s
        and all(
            files[t].get("global_step", -1) > step for files, t in ((files_l, target_l), (files_s, target_s))
        )
    )


def _callback_or_its_file(d: Difference, ctx: Context, users: list[Config], step: int) -> bool:
    """Whether ``d`` is an attribute of one of the callbacks ``users`` or a checkpoint file in a folder of one of
    them written after the resumed ``step`` (a top-k file only one framework has, or a last link to such files)."""
    if d.field.startswith("checkpoint.") and d.field != "checkpoint.dirpath" and d.key.isdigit():
        index = int(d.key)
        return index < len(ctx.config["checkpoints"]) and ctx.config["checkpoints"][index] in users
    if not d.key.endswith(".ckpt") or d.kind == "manual":
        return False
    in_folder = any(is_dir_of(c, os.path.dirname(d.key)) for c in users)
    if d.field in ("files.only_in_lightning", "files.only_in_stepstone"):
        info = d.lightning if d.field == "files.only_in_lightning" else d.stepstone
        return in_folder and isinstance(info, dict) and info.get("global_step", -1) > step
    return d.field == "files.content" and d.kind == "last" and in_folder and _links_to_own_saves(d, ctx, step)


def pending_validation_decisions(d: Difference, ctx: Context) -> bool:
    """(3, consequence) A checkpoint trigger soon after a resume sees the pending validation's metric.

    stepstone runs the interrupted epoch's validation right after the resume (3), so the validation key is in
    ``callback_metrics`` before Lightning's first validation of the resumed run; a trigger in between saves a
    top-k file (Lightning skips it: the monitored key is missing) or formats the key into the name (Lightning
    writes 0), and later top-k decisions follow from that one. Explains, in a run where (3) explained
    ``val_runs`` and Lightning did not start with the key, the attributes of a callback that monitors it or
    formats it into its names, and files in its folder written after the resume (and a last link that differs
    only by pointing at such a file in each), when stepstone saved there (a file only it has) no later than
    Lightning's first validation (a trigger at that step's batch end comes before that validation).
    """
    step = resume_step(ctx, d.run)
    if step is None or (d.run, "pending_validation_after_resume") not in ctx.explained:
        return False
    if VAL_KEY in (ctx.lightning[d.run].get("metrics_at_start") or []):
        return False
    runs_l = ctx.lightning[d.run].get("val_runs") or []
    first_val = runs_l[0][0] if runs_l else math.inf
    users = [
        c
        for c in ctx.config["checkpoints"]
        if uses_any(c, {VAL_KEY}) and _early_save(ctx, d.run, c, step, first_val)
    ]
    return _callback_or_its_file(d, ctx, users, step)


def _monitoring_trigger_within(checkpoint: Config, keys: set[str], step: int, bound: int) -> bool:
    """Whether ``checkpoint`` monitors one of ``keys`` and its step trigger fires after ``step``, no later than
    ``bound``: a top-k decision there (whose file a later, better save may have replaced) has the key only in
    stepstone."""
    every = checkpoint["every_n_train_steps"] or 0
    monitored = checkpoint["monitor"] in keys and checkpoint["save_top_k"] != 0
    return monitored and every > 0 and any(s % every == 0 for s in range(step + 1, bound + 1))


def finished_epoch_end_decisions(d: Difference, ctx: Context) -> bool:
    """(4, 7, consequence) A checkpoint trigger after a resume from an epoch's last batch sees that epoch's mean.

    Resumed from a file written once epoch ``k``'s last batch was done, stepstone finishes epoch ``k``'s end
    first and publishes its whole-epoch means (from the restored partial sums); Lightning skips that epoch end
    and has no epoch mean until epoch ``k + 1`` ends. A trigger in between saves a top-k file scored with that
    mean (a NaN mean scores as the worst value, as in Lightning) or formats it into the name, where Lightning
    skips the save (the monitored key is missing) or writes 0; later top-k decisions follow from that one.
    Explains, in a run that :func:`~compat.differential.deliberate_resume.finished_epoch_end` matches and that
    Lightning did not start with the epoch-mean keys, the attributes of a callback that monitors one or formats
    one into its names, and files in its folder written after the resume (and a last link that differs only by
    pointing at such a file in each), when stepstone saved there (a file only it has) no later than the last
    step of Lightning's first epoch after the resume, or the callback monitors the key and its step trigger
    fires in that span (the file of that decision may be gone, replaced by a later, better save).
    """
    step, keys = resume_step(ctx, d.run), epoch_keys(ctx.config)
    if step is None or not keys or keys & set(ctx.lightning[d.run].get("metrics_at_start") or []):
        return False
    if not finished_epoch_end(ctx, d.run):
        return False
    bound = step + steps_per_epoch(ctx.config)
    users = [
        c
        for c in ctx.config["checkpoints"]
        if uses_any(c, keys)
        and (_early_save(ctx, d.run, c, step, bound) or _monitoring_trigger_within(c, keys, step, bound))
    ]
    return _callback_or_its_file(d, ctx, users, step)
