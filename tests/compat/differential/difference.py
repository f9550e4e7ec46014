"""What both frameworks' observations are compared as: one difference, and what a deliberate-difference
predicate may look at (plus the resume facts several predicates share)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from compat.differential.configs import Config
from compat.differential.program import LAST_STEMS, Observation

MISSING = "<absent>"


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


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def is_last_name(rel: str) -> bool:
    """Whether a file name is one of the last-checkpoint names the generated configs use."""
    stem = os.path.basename(rel)
    return stem.startswith(LAST_STEMS) or "-last" in stem


def file_kind(rel: str) -> str:
    """A coarse label of a file: ``hidden``, ``logger`` (a logger's own files), ``manual``, ``last``,
    ``versioned`` or ``topk`` (checkpoints in a logger's ``version_N/checkpoints`` are labelled by name)."""
    name = os.path.basename(rel)
    if name.startswith("."):
        return "hidden"
    if rel.startswith("logs") and not name.endswith(".ckpt"):
        return "logger"
    if rel.startswith("manual"):
        return "manual"
    if is_last_name(rel):
        return "last"
    if re.search(r"-v\d+\.ckpt$", name):
        return "versioned"
    return "topk"


STARTS_FROM = {
    "continue": "fit",
    "resume_file": "stop",
    "resume_mid": "stop",
}  # whose files a run starts with


def resume_file(ctx: Context, run: str) -> dict[str, Any] | None:
    """``epoch``/``global_step`` inside the file a run resumed from (None if the run did not resume)."""
    source = ctx.lightning[run].get("ckpt_path")
    if not source or source != ctx.stepstone[run].get("ckpt_path"):
        return None
    # The file as it was when the run started: the run may have overwritten it (a callback saving under the
    # same name), so the earlier run of its chain comes first; the run's own files hold a file saved between
    # the runs (``manual/final.ckpt``, written after ``fit`` was observed).
    for name in (STARTS_FROM.get(run, run), run):
        info = ctx.lightning.get(name, {}).get("files", {}).get(source)
        if isinstance(info, dict) and "global_step" in info:
            return info
    return None


def resume_step(ctx: Context, run: str) -> int | None:
    """global_step inside the file a run resumed from (None if the run did not resume)."""
    info = resume_file(ctx, run)
    return None if info is None else int(info["global_step"])


# The ModelCheckpoint a Trainer adds when a configuration has none (``enable_checkpointing`` is never off).
DEFAULT_CHECKPOINT: Config = {
    "dirpath": None,
    "monitor": None,
    "mode": "min",
    "save_top_k": 1,
    "save_last": None,
    "save_weights_only": False,
    "auto_insert_metric_name": True,
    "every_n_train_steps": None,
    "every_n_epochs": None,
    "save_on_train_epoch_end": None,
    "enable_version_counter": True,
    "filename": None,
    "last_name": None,
}


def checkpoint_callbacks(config: Config) -> list[Config]:
    """The ModelCheckpoint configurations a run of ``config`` has: the configured ones, or the default one."""
    return list(config["checkpoints"]) or [DEFAULT_CHECKPOINT]


def is_dir_of(checkpoint: Config, dirpath: str) -> bool:
    """Whether ``dirpath`` (relative to the run's root) is where the checkpoint callback ``checkpoint`` saves."""
    if checkpoint["dirpath"] is None:  # default_root_dir/checkpoints, or <logger dir>/version_N/checkpoints
        return dirpath == "checkpoints" or dirpath.endswith("/checkpoints")
    return bool(checkpoint["dirpath"] == dirpath)


def uses_any(checkpoint: Config, keys: set[str]) -> bool:
    """Whether the checkpoint callback ``checkpoint`` monitors one of ``keys`` or formats one into its names."""
    template = checkpoint["filename"] or ""
    return checkpoint["monitor"] in keys or any(
        re.search(r"\{" + re.escape(k) + r"[:}]", template) for k in keys
    )
