"""Deliberate difference: ModelCheckpoint sees the whole-epoch mean after a mid-epoch resume.

A consequence of (7) ``whole_epoch_mean_after_mid_epoch_resume``: the epoch mean that reaches
``callback_metrics`` is also what a ModelCheckpoint monitors or formats into a file name, so the scores it
records and the names it writes carry stepstone's whole-epoch mean where Lightning's carry the mean of the
batches after the resume. The predicate recomputes both means from the configuration and checks them.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from compat.differential.deliberate_resume import epoch_keys, number_same, resumed_epoch_means
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

    Explains, in a run whose ``callback_metrics`` differ only by (7), for a callback that monitors an epoch-mean
    key or formats one into its file name: a score (``current_score``, ``best_model_score``, ``kth_value``) that
    is Lightning's after-resume mean vs stepstone's whole-epoch mean; a path or ``best_k_models`` whose names
    differ only by those means rendered (and a ``-vN`` suffix) and whose scores differ only by them; a file
    written after the resume that exists in each framework under its own such name.
    """
    if (d.run, _WHOLE_EPOCH_MEAN) not in ctx.explained:
        return False
    means = resumed_epoch_means(ctx, d.run)
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
