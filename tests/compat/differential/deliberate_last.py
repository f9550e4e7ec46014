"""Deliberate differences of ModelCheckpoint's last files (refreshed at every trigger, the final trigger's last,
the last path a checkpoint stores, no dangling links).

Each predicate explains one documented stepstone behaviour (README "Differences from Lightning") and only the
observations it causes, in the situation where it causes them.
"""

from __future__ import annotations

import os
import re
from typing import Any

from compat.differential.configs import Config
from compat.differential.difference import (
    Context,
    Difference,
    is_last_name,
    resume_step,
)


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


def last_refreshed(d: Difference, ctx: Context) -> bool:
    """(1) ``last`` is refreshed at every trigger (Lightning 2.6: only when a top-k file is written then).

    Explains a difference in a last-named file (its presence or the epoch/global_step inside) or in
    ``last_model_path`` when, in that directory, stepstone holds no more last files than Lightning (at least
    one) and its newest is strictly newer (higher global_step) than Lightning's newest; and, in a resumed run,
    the consequence :func:`_earlier_refresh_holds_the_name` describes.
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
    if _earlier_refresh_holds_the_name(d, ctx) or _untracked_earlier_last(d, ctx):
        return True
    lf = _last_files(ctx.lightning[d.run].get("files", {}), dirpath)
    sf = _last_files(ctx.stepstone[d.run].get("files", {}), dirpath)
    steps_l = [i["global_step"] for i in lf.values() if isinstance(i, dict) and "global_step" in i]
    steps_s = [i["global_step"] for i in sf.values() if isinstance(i, dict) and "global_step" in i]
    if not steps_s or len(sf) > max(1, len(lf)):
        return False
    return not steps_l or max(steps_s) > max(steps_l)


def _earlier_refresh_holds_the_name(d: Difference, ctx: Context) -> bool:
    """(1, consequence) A resumed run's last is ``X-vN`` where Lightning's is ``X``: the earlier run's refreshed
    last (Lightning never wrote it) still holds ``X``.

    The earlier run refreshed ``last`` to ``X`` after the file resumed from was written, so the restored state names
    another last; the resumed run's save of ``X`` then finds a file it does not track and steps the version counter
    (Lightning's rule, which Lightning applies alike to its own untracked files). Explains, in a resumed run, for a
    callback whose ``last_model_path`` is ``X-vN`` in stepstone and ``X`` in Lightning, where stepstone's earlier run
    ended with ``last_model_path`` ``X``, Lightning's earlier run had no ``X``, stepstone's ``X`` is still that
    file, and ``X-vN`` holds what Lightning's ``X`` holds: that ``last_model_path`` and the file ``X-vN``.
    """
    prev = _CHAIN.get(d.run, "")
    if resume_step(ctx, d.run) is None or prev not in ctx.lightning or prev not in ctx.stepstone:
        return False
    lf, sf = ctx.lightning[d.run].get("files", {}), ctx.stepstone[d.run].get("files", {})
    earlier_lf = ctx.lightning[prev].get("files", {})
    earlier_sf = ctx.stepstone[prev].get("files", {})
    now = zip(
        ctx.lightning[d.run].get("checkpoints", []), ctx.stepstone[d.run].get("checkpoints", []), strict=False
    )
    then = ctx.stepstone[prev].get("checkpoints", [])
    for index, (lightning_now, stepstone_now) in enumerate(now):
        theirs, mine = lightning_now["last_model_path"], stepstone_now["last_model_path"]
        if not (theirs and mine and _VERSION.search(mine) and _VERSION.sub("", mine) == theirs):
            continue
        held = (
            index < len(then)
            and then[index]["last_model_path"] == theirs
            and theirs in earlier_sf
            and theirs not in earlier_lf
            and sf.get(theirs) == earlier_sf[theirs]
        )
        if not held or not isinstance(lf.get(theirs), dict) or sf.get(mine) != lf[theirs]:
            continue
        if d.field == "checkpoint.last_model_path":
            return d.key == str(index)
        return d.field == "files.only_in_stepstone" and d.key == mine
    return False


def _one_epoch_later(a: Any, b: Any, final_epochs: set[Any]) -> bool:
    """Lightning's file ``a`` is stepstone's ``b`` written again after the epoch counter moved on."""
    if not (isinstance(a, dict) and isinstance(b, dict)) or "link" in a or "global_step" not in b:
        return False
    return (
        a.get("global_step") == b["global_step"]
        and a.get("epoch") == b.get("epoch", -2) + 1
        and a.get("epoch") in final_epochs
    )


def _newest_last(
    files: dict[str, Any], dirpath: str, stale: tuple[str, Any] | None
) -> tuple[str, Any] | None:
    """The newest last file in ``dirpath``, leaving out ``stale`` (an earlier run's final last, unchanged)."""
    last = [
        (i["global_step"], r)
        for r, i in _last_files(files, dirpath).items()
        if isinstance(i, dict) and "global_step" in i and (stale is None or (r, i) != stale)
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
    save, Lightning's written after the epoch counter moved on (see :func:`last_at_final_trigger`)."""
    if run not in ctx.lightning or run not in ctx.stepstone:
        return None
    # The earlier run's final last pair, still on disk as it was, is not this run's final save.
    earlier = _final_last_pair(ctx, _CHAIN.get(run, ""), dirpath)
    stale_l, stale_s = (None, None) if earlier is None else earlier
    newest_l = _newest_last(ctx.lightning[run].get("files", {}), dirpath, stale_l)
    newest_s = _newest_last(ctx.stepstone[run].get("files", {}), dirpath, stale_s)
    final_epochs = {obs.get("current_epoch") for obs in ctx.lightning.values()}
    if newest_l is None or newest_s is None or not _one_epoch_later(newest_l[1], newest_s[1], final_epochs):
        return None
    return newest_l, newest_s


def last_at_final_trigger(d: Difference, ctx: Context) -> bool:
    """(1b) ``last`` holds the final trigger's save; Lightning writes it again when training ends.

    Lightning 2.6 saves ``last`` in ``on_train_end`` only if the callback saved nothing in the run (no top-k
    file at any trigger), after the epoch counter moved on; stepstone already wrote ``last`` at that final
    trigger (1) and the step has not changed since, so it does not serialize the same state again. Same
    global_step and weights; the ``epoch`` inside is the trigger's epoch (as in every epoch-end checkpoint)
    rather than the count of finished epochs, and so is an ``{epoch}`` in a templated last name. Explains,
    where Lightning's newest last file is a plain file (not a link) holding the final epoch of one of its runs
    and stepstone's newest last file in that folder holds the same global_step and exactly one epoch less:
    the content of a last file (such a pair under one name), or, when the names differ, each of the two files and
    ``last_model_path`` naming them; and in a later run of the chain, each framework's such file from the
    earlier run, still on disk unchanged beside the other's (it is not that later run's newest: the pair there
    may be two ``-vN`` names, written past the untracked earlier files).
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
    # The earlier run's final last, still on disk unchanged in this run (a resumed run does not track it), beside
    # the other framework's.
    if earlier is not None:
        (l_name, l_info), (s_name, s_info) = earlier
        lf, sf = ctx.lightning[d.run].get("files", {}), ctx.stepstone[d.run].get("files", {})
        if d.field == "files.only_in_stepstone" and (d.key, d.stepstone) == (s_name, s_info) and l_name in lf:
            return True
        if d.field == "files.only_in_lightning" and (d.key, d.lightning) == (l_name, l_info) and s_name in sf:
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


def restored_metric_decisions(d: Difference, ctx: Context) -> bool:
    """(4, consequence) A resumed run's checkpoints use the restored metrics; Lightning's miss them at first.

    With the monitored key restored, a step/epoch trigger before the key is logged again saves a top-k file
    (Lightning defers or skips it), and a key in the file name template is formatted with its restored value
    (Lightning writes 0 for a missing key). Explains, in a resumed run, differences of a callback (its
    attributes, and files in its folder) whose monitor or file name template uses a key that stepstone restored
    at the start and Lightning did not have.
    """
    if resume_step(ctx, d.run) is None:
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


def _untracked_earlier_last(d: Difference, ctx: Context) -> bool:
    """(1, consequence) A last file that only one framework's earlier run left, by (1), is still there unchanged.

    A resumed run tracks the last named in the file it resumed from, not a last the earlier run wrote after
    that file (stepstone's refreshed last; Lightning's last of an earlier trigger stepstone already replaced), so
    neither framework touches it. Explains, in a resumed run, a last file only in one framework that holds what
    it held at the end of the earlier run, where it was also only in that framework and (1) explained that, and
    that no callback of the run names as its ``last_model_path``; or a last file in both whose contents differ
    as they did, by (1), at the end of the earlier run, each unchanged and named by no callback of the run.
    """
    prev = _CHAIN.get(d.run, "")
    if resume_step(ctx, d.run) is None or prev not in ctx.lightning or prev not in ctx.stepstone:
        return False
    if d.field == "files.content":
        return _unchanged_earlier_pair(d, ctx, prev)
    if d.field not in ("files.only_in_lightning", "files.only_in_stepstone"):
        return False
    mine, theirs = (
        (ctx.lightning, ctx.stepstone)
        if d.field == "files.only_in_lightning"
        else (ctx.stepstone, ctx.lightning)
    )
    info = mine[d.run].get("files", {}).get(d.key)
    then = mine[prev].get("files", {}).get(d.key)
    if info is None or info != then or d.key in theirs[prev].get("files", {}):
        return False
    if any(c.get("last_model_path") == d.key for c in mine[d.run].get("checkpoints", [])):
        return False
    earlier = Difference(prev, d.field, d.key, d.lightning, d.stepstone, d.kind)
    return last_refreshed(earlier, ctx)


def _unchanged_earlier_pair(d: Difference, ctx: Context, prev: str) -> bool:
    """Whether the last file ``d`` holds in each framework what it held at the end of run ``prev``, that earlier
    difference explained by (1), and no callback of either framework's run names it as its ``last_model_path``."""
    then_l = ctx.lightning[prev].get("files", {}).get(d.key)
    then_s = ctx.stepstone[prev].get("files", {}).get(d.key)
    if (d.lightning, d.stepstone) != (then_l, then_s):
        return False
    for obs in (ctx.lightning[d.run], ctx.stepstone[d.run]):
        if any(c.get("last_model_path") == d.key for c in obs.get("checkpoints", [])):
            return False
    return last_refreshed(Difference(prev, d.field, d.key, d.lightning, d.stepstone, d.kind), ctx)


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


def last_path_of_trigger(d: Difference, ctx: Context) -> bool:
    """(6) A top-k file's callback state names the ``last`` of its own trigger; Lightning's the one before.

    stepstone decides ``last``'s name before it writes the top-k file, so a run resumed from that file knows
    the ``last`` file on disk as its own: it overwrites it in place. Lightning stores the previous trigger's
    ``last_model_path`` ('' at the first), so its resumed run reports that, and its next ``last`` save sees
    ``last.ckpt`` as someone else's file and writes ``last-v1.ckpt`` beside a stale ``last.ckpt``. Explains,
    in a resumed run, for a folder where a callback saves ``last``: ``last_model_path`` where stepstone names
    a last file and Lightning '', that name with a ``-vN`` suffix, or a last name no longer on disk (or there
    only as a broken link, (7)); a versioned last file only in Lightning
    whose unversioned name stepstone has; that unversioned file's content where Lightning's versioned one
    holds stepstone's global_step; the earlier run's last file of a callback only in Lightning, where
    stepstone's last of that callback in the earlier run is gone, replaced by a new last.
    """
    if resume_step(ctx, d.run) is None:
        return False
    lf, sf = ctx.lightning[d.run].get("files", {}), ctx.stepstone[d.run].get("files", {})
    if d.field == "checkpoint.last_model_path":
        mine, theirs = d.stepstone, d.lightning
        if not (isinstance(mine, str) and mine and is_last_name(mine)) or not isinstance(theirs, str):
            return False
        # Lightning's previous last may be gone, or still there as a link to a deleted file (7).
        dangling = (
            is_last_name(theirs)
            and os.path.dirname(theirs) == os.path.dirname(mine)
            and (theirs not in lf or _broken_link(lf[theirs]))
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


def _broken_link(info: Any) -> bool:
    """Whether a file's observation is a symbolic link whose target is gone."""
    return isinstance(info, dict) and "link" in info and info.get("load_error") == "FileNotFoundError"


def _stale_link_to_reused_name(d: Difference, ctx: Context) -> bool:
    """Whether Lightning's old last link ``d`` points at a name a later top-k save reused: it then loads the same
    file as another last link in its folder that both frameworks have, unchanged (the current last)."""
    dirpath, lf = os.path.dirname(d.key), ctx.lightning[d.run].get("files", {})
    sf = ctx.stepstone[d.run].get("files", {})
    return "link" in d.lightning and any(
        rel != d.key and info == d.lightning and sf.get(rel) == info
        for rel, info in _last_files(lf, dirpath).items()
    )


def no_dangling_last(d: Difference, ctx: Context) -> bool:
    """(7) A replaced linked ``last`` is deleted; Lightning 2.6 can leave the old link, dangling.

    With ``save_last="link"`` and a templated last name (``final-{step}``), Lightning sometimes keeps the
    previous last link after its top-k target was deleted, so a ``last``-named file on disk cannot be loaded
    (or, when a later top-k save reused the target's name, loads that later save under the old last name).
    stepstone deletes the previous last once the new one is committed. Explains only a last-named link that
    exists only in Lightning, in a folder of a ``save_last="link"`` callback, and either cannot be loaded (its
    target is gone) or links to the same target, with the same content, as another last link there that both
    frameworks have.
    """
    if d.field != "files.only_in_lightning" or not _is_last_file(d) or not isinstance(d.lightning, dict):
        return False
    dirpath = os.path.dirname(d.key)
    links = any(c["save_last"] == "link" and _is_dir_of(c, dirpath) for c in ctx.config["checkpoints"])
    return links and (_broken_link(d.lightning) or _stale_link_to_reused_name(d, ctx))
