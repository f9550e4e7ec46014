"""Field-by-field comparison of what a user observes under Lightning 2.6.6 and under stepstone.

Every difference is reported unless one of the named predicates in :data:`DELIBERATE` explains it; each
predicate covers one documented, deliberate stepstone behaviour and only the observation it causes, in the
situation where it causes it. Nothing else is filtered.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compat.differential.configs import TRAIN_KEY, VAL_KEY, Config
from compat.differential.program import LAST_STEMS, Observation

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
_MISSING = "<absent>"


@dataclass(frozen=True)
class Difference:
    """One observation that differs. ``key`` narrows ``field`` (a file name, a callback index)."""

    run: str
    field: str
    key: str
    lightning: Any
    stepstone: Any
    kind: str = ""  # a coarse label of the key (e.g. "last", "versioned") so categories group like with like

    @property
    def category(self) -> str:
        return f"{self.run}.{self.field}" + (f"[{self.kind}]" if self.kind else "")

    def __str__(self) -> str:
        where = f"{self.run}.{self.field}" + (f"[{self.key}]" if self.key else "")
        return f"{where}: lightning={self.lightning!r} stepstone={self.stepstone!r}"


@dataclass(frozen=True)
class Context:
    """What a deliberate-difference predicate may look at."""

    config: Config
    lightning: dict[str, Observation]
    stepstone: dict[str, Observation]
    explained: frozenset[tuple[str, str]]  # (run, deliberate name) pairs already used by earlier differences


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def is_last_name(rel: str) -> bool:
    """Whether a file name is one of the last-checkpoint names the generated configs use."""
    stem = os.path.basename(rel)
    return stem.startswith(LAST_STEMS) or "-last" in stem


def file_kind(rel: str) -> str:
    name = os.path.basename(rel)
    if name.startswith("."):
        return "hidden"
    if rel.startswith("logs"):
        return "logger"
    if rel.startswith("manual"):
        return "manual"
    if is_last_name(rel):
        return "last"
    if re.search(r"-v\d+\.ckpt$", name):
        return "versioned"
    return "topk"


def _error_type(obs: Observation) -> str | None:
    err = obs.get("error")
    return None if err is None else str(err).split(":", 1)[0]


def _compare_files(run: str, lf: dict[str, Any], sf: dict[str, Any]) -> list[Difference]:
    diffs = []
    for rel in sorted(lf.keys() | sf.keys()):
        a, b = lf.get(rel, _MISSING), sf.get(rel, _MISSING)
        if a == _MISSING or b == _MISSING:
            field = "files.only_in_stepstone" if a == _MISSING else "files.only_in_lightning"
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
            if not _same(ca[field], cb[field]):
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
        Difference(run, f, "", a.get(f, _MISSING), b.get(f, _MISSING))
        for f in _SCALARS
        if not _same(a.get(f, _MISSING), b.get(f, _MISSING))
    ]
    if "trained" in a:
        diffs += _compare_trained(run, a["trained"], b["trained"])
    diffs += _compare_checkpoints(run, a.get("checkpoints", []), b.get("checkpoints", []))
    diffs += _compare_files(run, a.get("files", {}), b.get("files", {}))
    if not _same(a.get("weights"), b.get("weights")):
        diffs.append(Difference(run, "weights", "", a.get("weights"), b.get("weights")))
    return diffs


# --- deliberate differences --------------------------------------------------------------------------------


def _resume_file(ctx: Context, run: str) -> dict[str, Any] | None:
    """``epoch``/``global_step`` inside the file a run resumed from (None if the run did not resume)."""
    source = ctx.lightning[run].get("ckpt_path")
    if not source or source != ctx.stepstone[run].get("ckpt_path"):
        return None
    for name in (run, "stop", "fit"):
        info = ctx.lightning.get(name, {}).get("files", {}).get(source)
        if isinstance(info, dict) and "global_step" in info:
            return info
    return None


def _resume_step(ctx: Context, run: str) -> int | None:
    """global_step inside the file a run resumed from (None if the run did not resume)."""
    info = _resume_file(ctx, run)
    return None if info is None else int(info["global_step"])


def _natural_ids(ctx: Context, batch_idx: int) -> list[int]:
    bs = ctx.config["data"]["batch_size"]
    return list(range(batch_idx * bs, (batch_idx + 1) * bs))


def _mid_epoch_data(d: Difference, ctx: Context) -> bool:
    """(2) A mid-epoch resume continues with the next unseen batch's data; Lightning re-iterates the loader.

    Explains ``trained.ids`` of the resumed epoch only: same batch index, stepstone trains batch ``b``'s
    samples, Lightning those of batch ``b - first`` (its loader restarted), shuffle off.
    """
    if d.field != "trained.ids" or _resume_step(ctx, d.run) is None:
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


def _mid_epoch_weights(d: Difference, ctx: Context) -> bool:
    """(2, consequence) Final weights differ because different samples were trained after a mid-epoch resume."""
    return d.field == "weights" and (d.run, "mid_epoch_resume_data") in ctx.explained


def _pending_validation(d: Difference, ctx: Context) -> bool:
    """(3) An epoch interrupted before its validation runs that validation right after resume.

    Explains ``val_runs`` only when stepstone's list is Lightning's with one extra first entry at the
    resumed global_step.
    """
    step = _resume_step(ctx, d.run)
    if d.field != "val_runs" or step is None or not isinstance(d.stepstone, list) or not d.stepstone:
        return False
    return d.stepstone[0][0] == step and d.stepstone[1:] == d.lightning


def _nothing_ran(obs: Observation) -> bool:
    """No training batch and no validation ran (a sanity check may have: both frameworks drop its logged values
    when it ends, so it leaves nothing in ``callback_metrics``)."""
    return not obs.get("trained") and not obs.get("val_runs")


def _restored_metrics(d: Difference, ctx: Context) -> bool:
    """(4) ``callback_metrics`` and ``current_score`` are restored on resume (Lightning starts without them).

    Explains: ``metrics_at_start`` (Lightning empty); final ``callback_metrics`` whose only difference is
    keys stepstone had restored at the start and that the resumed run never logged again, or epoch means it
    published finishing the interrupted epoch end (:func:`_finished_epoch_end`); ``current_score``
    of a callback that Lightning left at None (no save after resume).
    """
    if _resume_step(ctx, d.run) is None:
        return False
    if d.field == "metrics_at_start":
        return d.lightning == [] and isinstance(d.stepstone, list)
    if d.field == "checkpoint.current_score":
        return d.lightning is None
    if d.field == "callback_metrics" and isinstance(d.lightning, dict) and isinstance(d.stepstone, dict):
        extra = d.stepstone.keys() - d.lightning.keys()
        shared_equal = all(_same(v, d.stepstone.get(k, _MISSING)) for k, v in d.lightning.items())
        return shared_equal and extra <= _restored_keys(ctx, d.run, extra)
    return False


def _finished_epoch_end(ctx: Context, run: str) -> bool:
    """Whether the resumed file was written after the last batch of its epoch ``k`` (both runs train the same
    batches, none or from batch 0 of epoch ``k + 1``): stepstone then finishes epoch ``k``'s end first (its
    validation and ``on_train_epoch_end``, publishing the epoch means), which Lightning skips."""
    info = _resume_file(ctx, run)
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
    if _nothing_ran(lightning) and _nothing_ran(stepstone) and same_sanity:
        return extra  # no step and no validation ran, so every value there came from the checkpoint
    restored = set(stepstone.get("metrics_at_start") or [])
    if _finished_epoch_end(ctx, run):
        restored |= _epoch_keys(ctx.config)
    runs_l, runs_s, step = lightning.get("val_runs"), stepstone.get("val_runs"), _resume_step(ctx, run)
    if isinstance(runs_s, list) and runs_s and runs_s[0][0] == step and runs_s[1:] == runs_l:
        restored.add(VAL_KEY)  # logged by the pending validation (3), which Lightning does not run
    return restored


_MISSING_MONITOR = re.compile(r"ModelCheckpoint\(monitor='([^']+)'\)` could not find the monitored key")


def _epoch_keys(config: Config) -> set[str]:
    """``callback_metrics`` keys that hold the training metric's epoch mean once an epoch has ended."""
    if not config["logging"]["train_on_epoch"]:
        return set()
    return {TRAIN_KEY, f"{TRAIN_KEY}_epoch"}


def _monitor_found_after_resume(d: Difference, ctx: Context) -> bool:
    """(4, consequence) A ModelCheckpoint that checks its monitored key soon after a resume finds it.

    Lightning raises ``MisconfigurationException`` ("could not find the monitored key") when validation has run
    and the key is not in ``callback_metrics``; a resumed Lightning run starts with them empty and skips the end
    of an epoch whose last batch was done before the file was written. stepstone restores them (4) and finishes
    that epoch end (publishing the epoch means). Explains ``error`` when only Lightning raised that, in a resumed
    run, and stepstone had the key: restored at the start, or an epoch-mean key whose epoch ended at the resumed
    position (Lightning's first batch is batch 0 of the file's next epoch).
    """
    if d.field != "error" or d.stepstone is not None or _resume_step(ctx, d.run) is None:
        return False
    match = _MISSING_MONITOR.search(str(d.lightning))
    if match is None:
        return False
    key = match.group(1)
    if key in (ctx.stepstone[d.run].get("metrics_at_start") or []):
        return True
    info = _resume_file(ctx, d.run) or {}
    first = [list(t[:2]) for t in ctx.lightning[d.run].get("trained", [])[:1]]
    return key in _epoch_keys(ctx.config) and first == [[info.get("epoch", -2) + 1, 0]]


def _epoch_mean(ctx: Context, epoch: int, indices: list[int]) -> float:
    """Mean of the training metric over batches ``indices`` of ``epoch`` of an uninterrupted run from epoch 0.

    The program logs ``train_table[global_step]``; inside epoch ``e`` batch ``i`` runs at global_step
    ``e * ceil(n / accumulate) + i // accumulate`` (the last, partial window steps with the epoch's last batch).
    """
    table, accumulate = ctx.config["train_table"], ctx.config["trainer"]["accumulate_grad_batches"]
    per_epoch = -(-_batches_per_epoch(ctx.config) // accumulate)
    values = [table[(epoch * per_epoch + i // accumulate) % len(table)] for i in indices]
    return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)


def _number_same(observed: Any, expected: float) -> bool:
    if isinstance(observed, str):  # NaN and infinities are recorded as their repr
        return math.isnan(expected) and observed == "nan"
    return isinstance(observed, float) and _same(observed, expected)


def _whole_epoch_mean(d: Difference, ctx: Context) -> bool:
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
    pairs_l = [list(t[:2]) for t in ctx.lightning[d.run].get("trained", [])]
    pairs_s = [list(t[:2]) for t in ctx.stepstone[d.run].get("trained", [])]
    if _resume_step(ctx, d.run) is None or not pairs_l or pairs_l != pairs_s or pairs_l[0][1] == 0:
        return False
    epoch, extra = pairs_l[0][0], d.stepstone.keys() - d.lightning.keys()
    if any(e != epoch for e, _ in pairs_l) or not d.lightning.keys() <= d.stepstone.keys():
        return False
    if not extra <= _restored_keys(ctx, d.run, extra):
        return False
    differing = {k for k in d.lightning if not _same(d.lightning[k], d.stepstone[k])}
    if not differing or not differing <= _epoch_keys(ctx.config):
        return False
    whole = _epoch_mean(ctx, epoch, list(range(pairs_l[-1][1] + 1)))
    after = _epoch_mean(ctx, epoch, [i for _, i in pairs_l])
    return all(_number_same(d.stepstone[k], whole) and _number_same(d.lightning[k], after) for k in differing)


def _last_files(files: dict[str, Any], dirpath: str) -> dict[str, Any]:
    return {r: i for r, i in files.items() if os.path.dirname(r) == dirpath and is_last_name(r)}


def _is_dir_of(checkpoint: Config, dirpath: str) -> bool:
    if checkpoint["dirpath"] is None:  # default_root_dir/checkpoints, or <logger dir>/version_N/checkpoints
        return dirpath == "checkpoints" or dirpath.endswith("/checkpoints")
    return bool(checkpoint["dirpath"] == dirpath)


def _is_last_file(d: Difference) -> bool:
    """A difference about a last-named file (also one in a logger's ``version_N/checkpoints``)."""
    return d.field.startswith("files.") and d.kind in ("last", "logger") and is_last_name(d.key)


def _saves_last_in(ctx: Context, dirpath: str) -> bool:
    return any(c["save_last"] and _is_dir_of(c, dirpath) for c in ctx.config["checkpoints"])


def _last_refreshed(d: Difference, ctx: Context) -> bool:
    """(1) ``last`` is refreshed at every trigger (Lightning 2.6: only when a top-k file is written then).

    Explains a difference in a last-named file (its presence or the epoch/global_step inside) or in
    ``last_model_path`` when, in that directory, stepstone holds no more last files than Lightning (at least
    one) and its newest is strictly newer (higher global_step) than Lightning's newest.
    """
    if d.field == "checkpoint.last_model_path":
        index = int(d.key)
        dirpath = ctx.lightning[d.run]["checkpoints"][index]["dirpath"]
    elif _is_last_file(d):
        dirpath = os.path.dirname(d.key)
    else:
        return False
    saves_last = [c for c in ctx.config["checkpoints"] if c["save_last"] and _is_dir_of(c, dirpath)]
    if not saves_last:
        return False
    lf = _last_files(ctx.lightning[d.run].get("files", {}), dirpath)
    sf = _last_files(ctx.stepstone[d.run].get("files", {}), dirpath)
    steps_l = [i["global_step"] for i in lf.values() if isinstance(i, dict) and "global_step" in i]
    steps_s = [i["global_step"] for i in sf.values() if isinstance(i, dict) and "global_step" in i]
    if not steps_s or len(sf) > max(1, len(lf)):
        return False
    return not steps_l or max(steps_s) > max(steps_l)


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
    stepstone trains whole epochs from the next one, ``e``. Matches only when the file's ``epoch`` is ``k``,
    stepstone's batches are whole epochs from ``e`` (``k``, or ``k + 1`` for an ``on_train_epoch_end`` file,
    whose epoch is not completed yet) and Lightning's are ``[]`` or ``[[k, n]]`` followed by whole epochs from
    ``k + 1``.
    """
    info = _resume_file(ctx, run)
    if info is None or ctx.config["trainer"]["max_steps"] == -1 or not isinstance(info.get("epoch"), int):
        return False
    lightning, stepstone = ctx.lightning[run], ctx.stepstone[run]
    pairs_l = [list(t[:2]) for t in lightning.get("trained", [])]
    pairs_s = [list(t[:2]) for t in stepstone.get("trained", [])]
    per_epoch, finished = _batches_per_epoch(ctx.config), info["epoch"]
    if not pairs_s or pairs_s[0] not in ([finished, 0], [finished + 1, 0]):
        return False
    if not _whole_epochs_from(pairs_s, pairs_s[0][0], per_epoch):
        return False
    if pairs_l[:1] == [[finished, per_epoch]]:
        return _whole_epochs_from(pairs_l[1:], finished + 1, per_epoch)
    counted = lightning.get("current_epoch")  # the empty epoch still counts (absent if the run raised)
    return _whole_epochs_from(pairs_l, finished + 1, per_epoch) and (counted is None or counted > finished)


def _epoch_end_restart_batches(d: Difference, ctx: Context) -> bool:
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


def _epoch_end_restart_consequences(d: Difference, ctx: Context) -> bool:
    """(6, consequence) What training a different set of batches changes in that run.

    Explains the step/epoch counters, validation runs, final metrics and weights, and the checkpoint files
    (and the ModelCheckpoint attributes naming them) written from the resumed step on, in a run that
    :func:`_epoch_end_restart` matches.
    """
    if d.field in _TRAINING_CONSEQUENCES:
        return _epoch_end_restart(ctx, d.run)
    step = _resume_step(ctx, d.run)
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


def _metrics_file_after_resume(d: Difference, ctx: Context) -> bool:
    """(7) A resumed run that trains nothing still logs what finishing the interrupted epoch logs.

    stepstone completes an interrupted epoch end after a resume (the epoch means from the restored partial
    sums; see ``restored_metrics_on_resume``), so its logger writes a metrics file; Lightning skips that epoch
    end and, when it then trains and validates nothing either (its epoch-end restart, or nothing left to
    train), writes none. Explains only a logger's ``metrics.csv`` present only in stepstone, in a resumed run
    in which Lightning trained and validated nothing.
    """
    if d.field != "files.only_in_stepstone" or d.kind != "logger" or not d.key.endswith("/metrics.csv"):
        return False
    ran = ctx.lightning[d.run]
    return _resume_step(ctx, d.run) is not None and not ran.get("trained") and not ran.get("val_runs")


def _one_epoch_later(a: Any, b: Any, final_epochs: set[Any]) -> bool:
    """Lightning's file ``a`` is stepstone's ``b`` written again after the epoch counter moved on."""
    if not (isinstance(a, dict) and isinstance(b, dict)) or "link" in a or "global_step" not in b:
        return False
    return (
        a.get("global_step") == b["global_step"]
        and a.get("epoch") == b.get("epoch", -2) + 1
        and a.get("epoch") in final_epochs
    )


def _newest_last(files: dict[str, Any], dirpath: str) -> tuple[str, Any] | None:
    last = [
        (i["global_step"], r)
        for r, i in _last_files(files, dirpath).items()
        if isinstance(i, dict) and "global_step" in i
    ]
    if not last or len({step for step, _ in last}) != len(last):
        return None  # none, or two at one step: not a single final save this predicate can pair
    _, rel = max(last)
    return rel, files[rel]


_CHAIN = {
    "continue": "fit",
    "resume_file": "stop",
    "resume_mid": "stop",
}  # the run whose files a run starts with


def _final_last_pair(ctx: Context, run: str, dirpath: str) -> tuple[tuple[str, Any], tuple[str, Any]] | None:
    """Lightning's and stepstone's newest last files in ``dirpath`` after ``run`` if they are the same final
    save, Lightning's written after the epoch counter moved on (see :func:`_last_at_final_trigger`)."""
    if run not in ctx.lightning or run not in ctx.stepstone:
        return None
    newest_l = _newest_last(ctx.lightning[run].get("files", {}), dirpath)
    newest_s = _newest_last(ctx.stepstone[run].get("files", {}), dirpath)
    final_epochs = {obs.get("current_epoch") for obs in ctx.lightning.values()}
    if newest_l is None or newest_s is None or not _one_epoch_later(newest_l[1], newest_s[1], final_epochs):
        return None
    return newest_l, newest_s


def _last_at_final_trigger(d: Difference, ctx: Context) -> bool:
    """(1b) ``last`` holds the final trigger's save; Lightning writes it again when training ends.

    Lightning 2.6 saves ``last`` in ``on_train_end`` only if the callback saved nothing in the run (no top-k
    file at any trigger), after the epoch counter moved on; stepstone already wrote ``last`` at that final
    trigger (1) and the step has not changed since, so it does not serialize the same state again. Same
    global_step and weights; the ``epoch`` inside is the trigger's epoch (as in every epoch-end checkpoint)
    rather than the count of finished epochs, and so is an ``{epoch}`` in a templated last name. Explains,
    where Lightning's newest last file is a plain file (not a link) holding the final epoch of one of its runs
    and stepstone's newest last file in that folder holds the same global_step and exactly one epoch less:
    the content of a last file (such a pair under one name), or, when the names differ, each of the two files and
    ``last_model_path`` naming them; and in a later run of the chain, stepstone's such file from the earlier
    run, still on disk beside Lightning's.
    """
    if d.field == "checkpoint.last_model_path" and isinstance(d.lightning, str) and d.lightning:
        dirpath = os.path.dirname(d.lightning)
    elif _is_last_file(d):
        dirpath = os.path.dirname(d.key)
    else:
        return False
    if not _saves_last_in(ctx, dirpath):
        return False
    final_epochs = {obs.get("current_epoch") for obs in ctx.lightning.values()}
    if d.field == "files.content":  # the same name: no need to pair the files
        return _one_epoch_later(d.lightning, d.stepstone, final_epochs)
    newest = _final_last_pair(ctx, d.run, dirpath)
    earlier = _final_last_pair(ctx, _CHAIN.get(d.run, ""), dirpath)
    # The earlier run's final last, still on disk in this run (a resumed run does not track it).
    if (
        d.field == "files.only_in_stepstone"
        and earlier is not None
        and d.key == earlier[1][0]
        and earlier[0][0] in ctx.lightning[d.run].get("files", {})
    ):
        return True
    if newest is None:
        return False
    newest_l, newest_s = newest
    pair = {"files.only_in_lightning": newest_l[0], "files.only_in_stepstone": newest_s[0]}
    if d.field in pair:
        return newest_l[0] != newest_s[0] and d.key == pair[d.field]
    return (d.lightning, d.stepstone) == (newest_l[0], newest_s[0])


def _uses_any(checkpoint: Config, keys: set[str]) -> bool:
    template = checkpoint["filename"] or ""
    return checkpoint["monitor"] in keys or any(
        re.search(r"\{" + re.escape(k) + r"[:}]", template) for k in keys
    )


def _restored_metric_decisions(d: Difference, ctx: Context) -> bool:
    """(4, consequence) A resumed run's checkpoints use the restored metrics; Lightning's miss them at first.

    With the monitored key restored, a step/epoch trigger before the key is logged again saves a top-k file
    (Lightning defers or skips it), and a key in the file name template is formatted with its restored value
    (Lightning writes 0 for a missing key). Explains, in a resumed run, differences of a callback (its
    attributes, and files in its folder) whose monitor or file name template uses a key that stepstone restored
    at the start and Lightning did not have.
    """
    if _resume_step(ctx, d.run) is None:
        return False
    keys = set(ctx.stepstone[d.run].get("metrics_at_start") or []) - set(
        ctx.lightning[d.run].get("metrics_at_start") or []
    )
    affected = [c for c in ctx.config["checkpoints"] if keys and _uses_any(c, keys)]
    if d.field.startswith("checkpoint.") and d.key.isdigit():
        index = int(d.key)
        return index < len(ctx.config["checkpoints"]) and ctx.config["checkpoints"][index] in affected
    if d.field.startswith("files.") and d.key.endswith(".ckpt") and d.kind != "manual":
        return any(_is_dir_of(c, os.path.dirname(d.key)) for c in affected)
    return False


_VERSION = re.compile(r"-v\d+(?=\.ckpt$)")


def _replaced_earlier_last(rel: str, ctx: Context, run: str) -> bool:
    """Whether ``rel`` was Lightning's last of a callback in the earlier run, and stepstone's last of that
    callback then (the resumed state names it as its own) is gone in ``run``, replaced by a new last."""
    prev = _CHAIN.get(run, "")
    earlier_l, earlier_s = ctx.lightning.get(prev, {}), ctx.stepstone.get(prev, {})
    now = ctx.stepstone[run].get("checkpoints", [])
    pairs = zip(earlier_l.get("checkpoints", []), earlier_s.get("checkpoints", []), now, strict=False)
    for lightning_then, stepstone_then, stepstone_now in pairs:
        mine = stepstone_then["last_model_path"]
        if lightning_then["last_model_path"] == rel and mine in earlier_s.get("files", {}):
            return (
                mine not in ctx.stepstone[run].get("files", {}) and stepstone_now["last_model_path"] != mine
            )
    return False


def _last_path_of_trigger(d: Difference, ctx: Context) -> bool:
    """(6) A top-k file's callback state names the ``last`` of its own trigger; Lightning's the one before.

    stepstone decides ``last``'s name before it writes the top-k file, so a run resumed from that file knows
    the ``last`` file on disk as its own: it overwrites it in place. Lightning stores the previous trigger's
    ``last_model_path`` ('' at the first), so its resumed run reports that, and its next ``last`` save sees
    ``last.ckpt`` as someone else's file and writes ``last-v1.ckpt`` beside a stale ``last.ckpt``. Explains,
    in a resumed run, for a folder where a callback saves ``last``: ``last_model_path`` where stepstone names
    a last file and Lightning '', that name with a ``-vN`` suffix, or a last name no longer on disk; a versioned last file only in Lightning
    whose unversioned name stepstone has; that unversioned file's content where Lightning's versioned one
    holds stepstone's global_step; the earlier run's last file of a callback only in Lightning, where
    stepstone's last of that callback in the earlier run is gone, replaced by a new last.
    """
    if _resume_step(ctx, d.run) is None:
        return False
    lf, sf = ctx.lightning[d.run].get("files", {}), ctx.stepstone[d.run].get("files", {})
    if d.field == "checkpoint.last_model_path":
        mine, theirs = d.stepstone, d.lightning
        if not (isinstance(mine, str) and mine and is_last_name(mine)) or not isinstance(theirs, str):
            return False
        dangling = (
            is_last_name(theirs) and os.path.dirname(theirs) == os.path.dirname(mine) and theirs not in lf
        )
        return _saves_last_in(ctx, os.path.dirname(mine)) and (
            theirs == "" or _VERSION.sub("", theirs) == mine or dangling
        )
    if not _is_last_file(d) or not _saves_last_in(ctx, os.path.dirname(d.key)):
        return False
    if d.field == "files.only_in_lightning":
        if _VERSION.search(d.key) is not None:
            return _VERSION.sub("", d.key) in sf
        return _replaced_earlier_last(d.key, ctx, d.run)
    if d.field == "files.content" and isinstance(d.stepstone, dict):
        step = d.stepstone.get("global_step")
        siblings = [i for r, i in lf.items() if _VERSION.search(r) and _VERSION.sub("", r) == d.key]
        return any(isinstance(i, dict) and i.get("global_step") == step for i in siblings)
    return False


def _no_dangling_last(d: Difference, ctx: Context) -> bool:
    """(7) A replaced linked ``last`` is deleted; Lightning 2.6 can leave the old link, dangling.

    With ``save_last="link"`` and a templated last name (``final-{step}``), Lightning sometimes keeps the
    previous last link after its top-k target was deleted, so a ``last``-named file on disk cannot be loaded.
    stepstone deletes the previous last once the new one is committed. Explains only a last-named link that
    exists only in Lightning and cannot be loaded (its target is gone), in a folder of a ``save_last="link"``
    callback.
    """
    if d.field != "files.only_in_lightning" or not _is_last_file(d) or not isinstance(d.lightning, dict):
        return False
    dirpath = os.path.dirname(d.key)
    links = any(c["save_last"] == "link" and _is_dir_of(c, dirpath) for c in ctx.config["checkpoints"])
    return links and "link" in d.lightning and d.lightning.get("load_error") == "FileNotFoundError"


Predicate = Callable[[Difference, Context], bool]
DELIBERATE: dict[str, Predicate] = {
    "last_refreshed_every_trigger": _last_refreshed,
    "last_at_final_trigger": _last_at_final_trigger,
    "mid_epoch_resume_data": _mid_epoch_data,
    "mid_epoch_resume_weights": _mid_epoch_weights,
    "pending_validation_after_resume": _pending_validation,
    "restored_metrics_on_resume": _restored_metrics,
    "monitored_key_found_after_resume": _monitor_found_after_resume,
    "whole_epoch_mean_after_mid_epoch_resume": _whole_epoch_mean,
    "full_epoch_after_epoch_end_restart": _epoch_end_restart_batches,
    "full_epoch_after_epoch_end_restart_consequences": _epoch_end_restart_consequences,
    "metrics_file_after_resume": _metrics_file_after_resume,
    "restored_metrics_in_checkpoint_decisions": _restored_metric_decisions,
    "last_path_of_same_trigger": _last_path_of_trigger,
    "no_dangling_last_link": _no_dangling_last,
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
