"""Deliberate differences of loops and metrics after a resume (epoch-end restart, restored metrics, mid-epoch data).

Each predicate explains one documented stepstone behaviour (README "Differences from Lightning") and only the
observations it causes, in the situation where it causes them.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from compat.differential.configs import TRAIN_KEY, VAL_KEY, Config
from compat.differential.difference import (
    MISSING,
    STARTS_FROM,
    Context,
    Difference,
    checkpoint_callbacks,
    file_kind,
    is_dir_of,
    resume_file,
    resume_step,
    same,
)
from compat.differential.program import Observation


def _natural_ids(ctx: Context, batch_idx: int) -> list[int]:
    bs = ctx.config["data"]["batch_size"]
    return list(range(batch_idx * bs, (batch_idx + 1) * bs))


def mid_epoch_data(d: Difference, ctx: Context) -> bool:
    """(2) A mid-epoch resume continues with the next unseen batch's data; Lightning re-iterates the loader.

    Explains ``trained.ids`` of the resumed epoch only: same batch index, stepstone trains batch ``b``'s
    samples, Lightning those of batch ``b - first`` (its loader restarted), shuffle off.
    """
    if d.field != "trained.ids" or resume_step(ctx, d.run) is None:
        return False
    trained = ctx.lightning[d.run]["trained"]
    first_epoch, first_idx = trained[0][0], trained[0][1]
    epoch, idx = (int(v) for v in d.key.split(","))
    return (
        first_idx > 0
        and epoch == first_epoch
        and d.stepstone == _natural_ids(ctx, idx)
        and d.lightning == _natural_ids(ctx, idx - first_idx)
    )


def mid_epoch_weights(d: Difference, ctx: Context) -> bool:
    """(2, consequence) Final weights differ because different samples were trained after a mid-epoch resume."""
    return d.field == "weights" and (d.run, "mid_epoch_resume_data") in ctx.explained


def pending_validation(d: Difference, ctx: Context) -> bool:
    """(3) An epoch interrupted before its validation runs that validation right after resume.

    Explains ``val_runs`` only when stepstone's list is Lightning's with one extra first entry at the
    resumed global_step.
    """
    step = resume_step(ctx, d.run)
    if d.field != "val_runs" or step is None or not isinstance(d.stepstone, list) or not d.stepstone:
        return False
    return d.stepstone[0][0] == step and d.stepstone[1:] == d.lightning


def nothing_ran(obs: Observation) -> bool:
    """No training batch and no validation ran (a sanity check may have: both frameworks drop its logged values
    when it ends, so it leaves nothing in ``callback_metrics``)."""
    return not obs.get("trained") and not obs.get("val_runs")


def restored_metrics(d: Difference, ctx: Context) -> bool:
    """(4) ``callback_metrics`` and ``current_score`` are restored on resume (Lightning starts without them).

    Explains: ``metrics_at_start`` (Lightning empty); final ``callback_metrics`` whose only difference is
    keys stepstone had restored at the start and that the resumed run never logged again, or epoch means it
    published finishing the interrupted epoch end (:func:`finished_epoch_end`); ``current_score``
    of a callback that Lightning left at None (no save after resume).
    """
    if resume_step(ctx, d.run) is None:
        return False
    if d.field == "metrics_at_start":
        return d.lightning == [] and isinstance(d.stepstone, list)
    if d.field == "checkpoint.current_score":
        return d.lightning is None
    if d.field == "callback_metrics" and isinstance(d.lightning, dict) and isinstance(d.stepstone, dict):
        extra = d.stepstone.keys() - d.lightning.keys()
        shared_equal = all(same(v, d.stepstone.get(k, MISSING)) for k, v in d.lightning.items())
        return shared_equal and extra <= _restored_keys(ctx, d.run, extra)
    return False


def finished_epoch_end(ctx: Context, run: str) -> bool:
    """Whether the resumed file was written after the last batch of its epoch ``k`` (both runs train the same
    batches, none or from batch 0 of epoch ``k + 1``): stepstone then finishes epoch ``k``'s end first (its
    validation and ``on_train_epoch_end``, publishing the epoch means), which Lightning skips."""
    info = resume_file(ctx, run)
    pairs = [list(t[:2]) for t in ctx.lightning[run].get("trained", [])]
    if info is None or not isinstance(info.get("epoch"), int):
        return False
    if pairs != [list(t[:2]) for t in ctx.stepstone[run].get("trained", [])]:
        return False
    return not pairs or pairs[0] == [info["epoch"] + 1, 0]


def _restored_keys(ctx: Context, run: str, extra: set[str]) -> set[str]:
    """Keys of stepstone's final ``callback_metrics`` that may come from the checkpoint (4) or from finishing
    the interrupted epoch end (its epoch means, and the validation metric of its pending validation (3)), so
    that Lightning's lack them."""
    lightning, stepstone = ctx.lightning[run], ctx.stepstone[run]
    same_sanity = lightning.get("sanity_runs") == stepstone.get("sanity_runs")
    if nothing_ran(lightning) and nothing_ran(stepstone) and same_sanity:
        return extra  # no step and no validation ran, so every value there came from the checkpoint
    restored = set(stepstone.get("metrics_at_start") or [])
    if finished_epoch_end(ctx, run):
        restored |= epoch_keys(ctx.config)
    runs_l, runs_s, step = lightning.get("val_runs"), stepstone.get("val_runs"), resume_step(ctx, run)
    if isinstance(runs_s, list) and runs_s and runs_s[0][0] == step and runs_s[1:] == runs_l:
        restored.add(VAL_KEY)  # logged by the pending validation (3), which Lightning does not run
    return restored


_MISSING_MONITOR = re.compile(r"ModelCheckpoint\(monitor='([^']+)'\)` could not find the monitored key")


def epoch_keys(config: Config) -> set[str]:
    """``callback_metrics`` keys that hold the training metric's epoch mean once an epoch has ended."""
    if not config["logging"]["train_on_epoch"]:
        return set()
    return {TRAIN_KEY, f"{TRAIN_KEY}_epoch"}


def monitor_found_after_resume(d: Difference, ctx: Context) -> bool:
    """(4, consequence) A ModelCheckpoint that checks its monitored key soon after a resume finds it.

    Lightning raises ``MisconfigurationException`` ("could not find the monitored key") when validation has run
    and the key is not in ``callback_metrics``; a resumed Lightning run starts with them empty and skips the end
    of an epoch whose last batch was done before the file was written. stepstone restores them (4) and finishes
    that epoch end (publishing the epoch means). Explains ``error`` when only Lightning raised that, in a resumed
    run, and stepstone had the key: restored at the start, or an epoch-mean key whose epoch ended at the resumed
    position (Lightning's first batch is batch 0 of the file's next epoch).
    """
    if d.field != "error" or d.stepstone is not None or resume_step(ctx, d.run) is None:
        return False
    match = _MISSING_MONITOR.search(str(d.lightning))
    if match is None:
        return False
    key = match.group(1)
    if key in (ctx.stepstone[d.run].get("metrics_at_start") or []):
        return True
    info = resume_file(ctx, d.run) or {}
    first = [list(t[:2]) for t in ctx.lightning[d.run].get("trained", [])[:1]]
    return key in epoch_keys(ctx.config) and first == [[info.get("epoch", -2) + 1, 0]]


def _epoch_mean(ctx: Context, epoch: int, indices: list[int]) -> float:
    """Mean of the training metric over batches ``indices`` of ``epoch`` of an uninterrupted run from epoch 0.

    The program logs ``train_table[global_step]``; inside epoch ``e`` batch ``i`` runs at global_step
    ``e * ceil(n / accumulate) + i // accumulate`` (the last, partial window steps with the epoch's last batch).
    """
    table, accumulate = ctx.config["train_table"], ctx.config["trainer"]["accumulate_grad_batches"]
    per_epoch = steps_per_epoch(ctx.config)
    values = [table[(epoch * per_epoch + i // accumulate) % len(table)] for i in indices]
    return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)


def number_same(observed: Any, expected: float) -> bool:
    if isinstance(observed, str):  # NaN and infinities are recorded as their repr
        return math.isnan(expected) and observed == "nan"
    return isinstance(observed, float) and same(observed, expected)


def whole_epoch_mean(d: Difference, ctx: Context) -> bool:
    """(7) After a mid-epoch resume, the epoch's mean covers the whole epoch (Lightning: only the batches after
    the resume), because stepstone restores the epoch's partial sums.

    Explains ``callback_metrics`` of a run resumed mid-epoch (Lightning's first batch is not batch 0) that ended
    inside that epoch, when only the epoch-mean keys differ, stepstone's value is the mean over every batch of
    the epoch so far and Lightning's the mean over the batches it trained after the resume (and stepstone's
    extra keys are restored ones, as (4) allows).
    """
    if (
        d.field != "callback_metrics"
        or not isinstance(d.lightning, dict)
        or not isinstance(d.stepstone, dict)
    ):
        return False
    means = resumed_epoch_means(ctx, d.run)
    extra = d.stepstone.keys() - d.lightning.keys()
    if means is None or not d.lightning.keys() <= d.stepstone.keys():
        return False
    if not extra <= _restored_keys(ctx, d.run, extra):
        return False
    differing = {k for k in d.lightning if not same(d.lightning[k], d.stepstone[k])}
    if not differing or not differing <= epoch_keys(ctx.config):
        return False
    after, whole = means
    return all(number_same(d.stepstone[k], whole) and number_same(d.lightning[k], after) for k in differing)


def resumed_epoch_means(ctx: Context, run: str, *, ended_inside: bool = True) -> tuple[float, float] | None:
    """The training metric's mean over the resumed epoch (Lightning's, stepstone's) in a run resumed mid-epoch.

    Returns None unless ``run`` resumed mid-epoch (Lightning's first batch is not batch 0), both frameworks
    trained the same batches (epoch, batch index) and the run ended inside that epoch (``ended_inside``) or
    trained past it (not ``ended_inside``: the resumed epoch's mean then stays the logged epoch mean until the
    next epoch's end, so ModelCheckpoint triggers in between score and name with it). Lightning's mean covers
    the batches trained after the resume, stepstone's every batch of the epoch so far (7).
    """
    pairs_l = [list(t[:2]) for t in ctx.lightning[run].get("trained", [])]
    pairs_s = [list(t[:2]) for t in ctx.stepstone[run].get("trained", [])]
    if resume_step(ctx, run) is None or not pairs_l or pairs_l != pairs_s or pairs_l[0][1] == 0:
        return None
    epoch = pairs_l[0][0]
    inside = [i for e, i in pairs_l if e == epoch]
    if (len(inside) == len(pairs_l)) != ended_inside:
        return None
    whole = _epoch_mean(ctx, epoch, list(range(inside[-1] + 1)))
    return _epoch_mean(ctx, epoch, inside), whole


def steps_per_epoch(config: Config) -> int:
    """Optimizer steps in one epoch: a last, partial accumulation window steps with the epoch's last batch."""
    return -(-_batches_per_epoch(config) // config["trainer"]["accumulate_grad_batches"])


def _batches_per_epoch(config: Config) -> int:
    """Training batches in one epoch (``limit_train_batches`` applied as the configurations use it)."""
    n_train, limit = config["data"]["n_train"], config["trainer"]["limit_train_batches"]
    if limit is None:
        return int(n_train)
    if isinstance(limit, int):
        return min(limit, int(n_train))
    return max(1, int(n_train * limit))


def _whole_epochs_from(pairs: list[list[int]], epoch: int, per_epoch: int) -> bool:
    """Whether ``pairs`` ([epoch, batch_idx]) are whole epochs from ``epoch`` on, batch 0 first (the last one may be
    cut short by ``max_steps``/``max_epochs``)."""
    expected = [epoch, 0]
    for pair in pairs:
        if list(pair) != expected:
            return False
        expected = [expected[0] + 1, 0] if expected[1] + 1 == per_epoch else [expected[0], expected[1] + 1]
    return True


def _epoch_end_restart(ctx: Context, run: str) -> bool:
    """Whether ``run`` shows Lightning's restart of iteration-based training after a finished epoch.

    Resumed (``max_steps`` set) from a file written once epoch ``k``'s last batch was done (after ``fit``, or in
    ``on_train_epoch_end``), Lightning first goes on with epoch ``k``'s batch counter: it trains no batch at all
    (when validation was due after that last batch, it skips it) or a single batch labelled ``batch_idx=n`` of
    an ``n``-batch epoch (the loader's first batch), and counts that as an epoch; then whole epochs follow.
    Without ``max_steps`` the same relabelled batch follows a file written in ``on_train_epoch_end`` (Lightning
    restarts an epoch it had not marked completed); only that one-batch shape is matched then.
    stepstone trains whole epochs from the next one, ``e``. Matches only when the file's ``epoch`` is ``k``,
    stepstone's batches are whole epochs from ``e`` (``k``, or ``k + 1`` for an ``on_train_epoch_end`` file,
    whose epoch is not completed yet) and Lightning's are ``[]`` or ``[[k, n]]`` followed by whole epochs from
    ``k + 1``; or, when ``k`` was the run's last epoch (``max_epochs``), stepstone trains nothing and Lightning
    only ``[[k, n]]``.
    """
    info = resume_file(ctx, run)
    if info is None or not isinstance(info.get("epoch"), int):
        return False
    lightning, stepstone = ctx.lightning[run], ctx.stepstone[run]
    pairs_l = [list(t[:2]) for t in lightning.get("trained", [])]
    pairs_s = [list(t[:2]) for t in stepstone.get("trained", [])]
    per_epoch, finished = _batches_per_epoch(ctx.config), info["epoch"]
    max_epochs = ctx.config["trainer"]["max_epochs"] + (
        ctx.config["flows"]["continue_extra"] if run == "continue" else 0
    )
    if not pairs_s and finished + 1 == max_epochs:
        # Epoch k was the last one: stepstone has nothing left to train, Lightning still trains its relabelled batch.
        return pairs_l == [[finished, per_epoch]]
    if not pairs_s or pairs_s[0] not in ([finished, 0], [finished + 1, 0]):
        return False
    if not _whole_epochs_from(pairs_s, pairs_s[0][0], per_epoch):
        return False
    iteration_based = ctx.config["trainer"]["max_steps"] != -1
    # Without max_steps only from an on_train_epoch_end file (its epoch not completed: stepstone goes on at k + 1).
    if pairs_l[:1] == [[finished, per_epoch]] and (iteration_based or pairs_s[0] == [finished + 1, 0]):
        return _whole_epochs_from(pairs_l[1:], finished + 1, per_epoch)
    if not iteration_based:
        return False
    counted = lightning.get("current_epoch")  # the empty epoch still counts (absent if the run raised)
    return _whole_epochs_from(pairs_l, finished + 1, per_epoch) and (counted is None or counted > finished)


def epoch_end_restart_batches(d: Difference, ctx: Context) -> bool:
    """(6) After resuming iteration-based training from an epoch's end, the next epoch trains all its batches.

    Lightning 2.6 trains none or one batch labelled ``batch_idx=n`` of an ``n``-batch epoch there (see
    :func:`_epoch_end_restart`, which states exactly what matches). Explains ``trained.batches``.
    """
    return d.field == "trained.batches" and _epoch_end_restart(ctx, d.run)


_TRAINING_CONSEQUENCES = {
    "global_step",
    "optimizer_steps",
    "current_epoch",
    "val_runs",
    "callback_metrics",
    "weights",
}


def epoch_end_restart_consequences(d: Difference, ctx: Context) -> bool:
    """(6, consequence) What training a different set of batches changes in that run.

    Explains the step/epoch counters, validation runs, final metrics and weights, and the checkpoint files
    (and the ModelCheckpoint attributes naming them) written from the resumed step on, in a run that
    :func:`_epoch_end_restart` matches; and an earlier top-k file that such a save replaced in stepstone
    (:func:`_evicted_by_later_save`).
    """
    if d.field in _TRAINING_CONSEQUENCES:
        return _epoch_end_restart(ctx, d.run)
    step = resume_step(ctx, d.run)
    if step is not None and _evicted_by_later_save(d, ctx, step):
        return _epoch_end_restart(ctx, d.run)
    if d.field.startswith("files.") and d.kind != "logger" and step is not None:
        written = [v for v in (d.lightning, d.stepstone) if isinstance(v, dict) and "global_step" in v]
        # From the resumed step on: validation after an accumulating batch of the epoch Lightning skipped saves
        # at that very step.
        return (
            bool(written)
            and all(v["global_step"] >= step for v in written)
            and _epoch_end_restart(ctx, d.run)
        )
    if d.field.startswith("checkpoint.") and d.field != "checkpoint.dirpath":
        return _epoch_end_restart(ctx, d.run)
    return False


_EXTRA_VALIDATION = ("pending_validation_after_resume", "full_epoch_after_epoch_end_restart_consequences")


def _evicted_by_later_save(d: Difference, ctx: Context, step: int) -> bool:
    """Whether ``d`` is a top-k file only Lightning still has, that stepstone had when the run started and
    replaced by a top-k save of the same folder from the resumed ``step`` on (``save_top_k`` keeps k files)."""
    if d.field != "files.only_in_lightning" or d.kind not in ("topk", "versioned"):
        return False
    dirpath = os.path.dirname(d.key)
    started = ctx.stepstone.get(STARTS_FROM.get(d.run, ""), {}).get("files", {})
    callbacks = [c for c in checkpoint_callbacks(ctx.config) if is_dir_of(c, dirpath)]
    if started.get(d.key) != d.lightning or not any(c["save_top_k"] > 0 for c in callbacks):
        return False
    files_l = ctx.lightning[d.run].get("files", {})
    return any(
        os.path.dirname(rel) == dirpath
        and rel not in files_l
        and file_kind(rel) in ("topk", "versioned")
        and isinstance(info, dict)
        and info.get("global_step", -1) >= step
        for rel, info in ctx.stepstone[d.run].get("files", {}).items()
    )


def metrics_file_after_resume(d: Difference, ctx: Context) -> bool:
    """(7) A resumed run logs what stepstone's deliberate resume behaviour runs and Lightning skips.

    stepstone completes an interrupted epoch end after a resume (the epoch means from the restored partial
    sums; see ``restored_metrics_on_resume``) and runs a validation Lightning skips (``pending_validation`` /
    the epoch-end restart); each logs, so its logger writes a metrics file where Lightning, logging nothing
    else in that run, writes none. Explains only a logger's ``metrics.csv`` present only in stepstone, in a
    resumed run in which Lightning trained and validated nothing, or in which stepstone ran a validation
    Lightning did not and that ``val_runs`` difference was already explained by one of those names.
    """
    if d.field != "files.only_in_stepstone" or d.kind != "logger" or not d.key.endswith("/metrics.csv"):
        return False
    if resume_step(ctx, d.run) is None:
        return False
    ran = ctx.lightning[d.run]
    if not ran.get("trained") and not ran.get("val_runs"):
        return True
    extra = [v for v in ctx.stepstone[d.run].get("val_runs") or [] if v not in (ran.get("val_runs") or [])]
    return bool(extra) and any((d.run, name) in ctx.explained for name in _EXTRA_VALIDATION)
