"""``stepstone ckpt ls``, ``verify`` and ``prune``: the checkpoints of a directory, their integrity, retention.

Reading goes through the engine (trailers, checksums, the run index); ``prune`` deletes through the engine's
retention policies (and removes the ``.stepstone-index.json`` earlier versions wrote), and never deletes a
``last*`` file or the file a ``last`` symlink points to. Sharded (FSDP) checkpoint directories are listed and
pruned like files: described from their commit marker, verified against it, deleted as their kind (``stepstone.checkpoint.kinds``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from stepstone.checkpoint import (
    AnyOf,
    CheckpointRecord,
    KeepBest,
    KeepLatest,
    RunIndex,
    load_file,
    read_info,
    verify_file,
)
from stepstone.checkpoint.commit import is_temp_name
from stepstone.checkpoint.index import LEGACY_INDEX_NAME
from stepstone.checkpoint.kinds import SHARDED_DIRECTORY, kind_of
from stepstone.checkpoint.record import age_key
from stepstone.checkpoint.sharded import META_NAME
from stepstone.cli_ckpt.locations import file_names, is_folder, is_url, join
from stepstone.cli_ckpt.output import emit_json, human_size, human_time, metrics_text, table
from stepstone.errors import CheckpointError

__all__ = ["checkpoint_paths", "run_ls", "run_prune", "run_verify"]


class UsageError(Exception):
    """A bad command line argument: printed as ``stepstone ckpt: error: ...``, exit code 2."""


@dataclass
class Entry:
    """One ``*.ckpt`` file or sharded checkpoint directory of a directory, as ``ls`` shows it."""

    name: str
    record: CheckpointRecord | None = None
    status: str = "ok"
    link: str | None = None
    flags: list[str] = field(default_factory=list)
    sharded: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``ls --json``."""
        record = self.record
        return {
            "name": self.name,
            "sharded": self.sharded,
            "step": record.step if record else None,
            "epoch": record.epoch if record else None,
            "metrics": dict(record.metrics) if record else {},
            "size": record.size if record else None,
            "created": record.created if record else None,
            "status": self.status,
            "verified": bool(record and record.verified),
            "link": self.link,
            "best": "best" in self.flags,
            "last": "last" in self.flags,
        }


def _require_dir(directory: str, options: dict[str, Any] | None) -> None:
    if not is_folder(directory, options):
        raise UsageError(
            f"DIR={directory!r} is not a directory; pass the folder that holds the *.ckpt files (or use "
            "`stepstone ckpt show` for one checkpoint)"
        )


def checkpoint_paths(directory: str, options: dict[str, Any] | None = None) -> list[str]:
    """The checkpoints of a directory, sorted: ``*.ckpt`` entries and committed sharded directories.

    Hidden names (temporary files and directories of unfinished saves) are excluded; a ``*.ckpt`` directory
    without its commit marker is included (so that ``ls``/``verify`` report it as not committed). In a
    remote folder (a URL) the ``*.ckpt`` objects.

    Args:
        directory: the folder (a local path or URL).
        options: fsspec options for a URL.

    Returns:
        Their paths (URLs for a remote folder).
    """
    remote = is_url(directory)
    names = sorted(
        name
        for name in file_names(directory, options)
        if not name.startswith(".")
        and not is_temp_name(name)
        and (
            name.endswith(".ckpt")
            or (not remote and kind_of(os.path.join(directory, name)) is SHARDED_DIRECTORY)
        )
    )
    return [join(directory, name) for name in names]


def _describe(path: str, verify: bool, options: dict[str, Any] | None) -> Entry:
    local = not is_url(path)
    entry = Entry(os.path.basename(path), link=os.readlink(path) if local and os.path.islink(path) else None)
    entry.sharded = local and os.path.isdir(path)
    try:
        if entry.sharded:
            entry.record = SHARDED_DIRECTORY.verify(path) if verify else SHARDED_DIRECTORY.describe(path)
            return entry
        entry.record = verify_file(path, options) if verify else read_info(path, options)
        if entry.record is None:
            entry.status = "no stepstone trailer (cannot be verified)"
    except CheckpointError as error:
        entry.status = f"FAILED: {error}"
    return entry


def _best_from_state(entries: list[Entry], directory: str, options: dict[str, Any] | None) -> str | None:
    """The best file named by ModelCheckpoint's state in the newest good checkpoint, if any."""
    good = [(e, e.record) for e in entries if e.record is not None and e.status == "ok"]
    if not good:
        return None
    newest, _ = max(good, key=lambda pair: age_key(pair[1]))
    path = join(directory, newest.name)
    try:
        if newest.sharded:  # the callback state is in meta.pt (small, weights_only-safe)
            state = torch.load(os.path.join(path, META_NAME), weights_only=True, map_location="cpu")
        else:
            state = load_file(path, mmap=not is_url(path), storage_options=options)
    except (CheckpointError, OSError, RuntimeError, ValueError, EOFError):
        return None
    if not isinstance(state, dict):
        return None
    callbacks = state.get("callbacks")
    for value in (callbacks or {}).values() if isinstance(callbacks, dict) else ():
        best = value.get("best_model_path") if isinstance(value, dict) else None
        if isinstance(best, str) and best:
            return os.path.basename(best)
    return None


def _mark(
    entries: list[Entry], directory: str, metric: str | None, mode: str, options: dict[str, Any] | None
) -> None:
    for entry in entries:
        if entry.name.startswith("last"):
            entry.flags.append("last")
            target = next((e for e in entries if entry.link and e.name == os.path.basename(entry.link)), None)
            if target is not None:
                target.flags.append("last")
    if metric is not None:
        records = [e.record for e in entries if e.record is not None and not e.name.startswith("last")]
        ranked = KeepBest(1, metric, mode).rank(records)
        best = ranked[0].name if ranked and metric in ranked[0].metrics else None
    else:
        best = _best_from_state(entries, directory, options)
    for entry in entries:
        if entry.name == best:
            entry.flags.append("best")


def run_ls(args: argparse.Namespace) -> int:
    """``stepstone ckpt ls DIR``: list the checkpoints with step, epoch, metrics, size, time, status, best/last.

    Args:
        args: the parsed command line.

    Returns:
        0, or 1 when a file fails verification.
    """
    options = args.storage_options
    _require_dir(args.dir, options)
    entries = [_describe(path, not args.no_verify, options) for path in checkpoint_paths(args.dir, options)]
    _mark(entries, args.dir, args.metric, args.mode, options)
    if args.json:
        emit_json({"directory": args.dir, "checkpoints": [entry.to_json() for entry in entries]})
    elif not entries:
        print(f"no checkpoints in {args.dir}")
    else:
        rows = []
        for entry in entries:
            record = entry.record
            name = f"{entry.name} -> {entry.link}" if entry.link else entry.name
            rows.append(
                [
                    name,
                    "sharded" if entry.sharded else "file",
                    str(record.step) if record and record.step is not None else "-",
                    str(record.epoch) if record and record.epoch is not None else "-",
                    metrics_text(record.metrics) if record else "-",
                    human_size(record.size) if record else "-",
                    human_time(record.created) if record else "-",
                    ("verified" if record and record.verified else "ok")
                    if entry.status == "ok"
                    else entry.status,
                    ",".join(entry.flags),
                ]
            )
        print(
            table(
                ["NAME", "KIND", "STEP", "EPOCH", "METRICS", "SIZE", "CREATED", "STATUS", "BEST/LAST"], rows
            )
        )
    return 0 if all(entry.status == "ok" for entry in entries) else 1


def _is_sharded(path: str) -> bool:
    return kind_of(path) is SHARDED_DIRECTORY  # a URL is always a file


def _verify_one(path: str, options: dict[str, Any] | None) -> dict[str, Any]:
    try:
        record = SHARDED_DIRECTORY.verify(path) if _is_sharded(path) else verify_file(path, options)
    except CheckpointError as error:
        return {"path": path, "ok": False, "size": None, "step": None, "error": str(error)}
    return {"path": path, "ok": True, "size": record.size, "step": record.step, "error": None}


def run_verify(args: argparse.Namespace) -> int:
    """``stepstone ckpt verify PATH...``: check every checksum of files, of sharded checkpoint directories (against
    their marker) and of the checkpoints inside other folders.

    Args:
        args: the parsed command line.

    Returns:
        0 only if at least one checkpoint was checked and all verified; else 1.
    """
    options = args.storage_options
    paths: list[str] = []
    for path in args.paths:
        if not _is_sharded(path) and is_folder(path, options):
            found = checkpoint_paths(path, options)
            if not found:
                print(f"FAILED    {path}: no *.ckpt files in this directory")
            paths += found or [""]
        else:
            paths.append(path)
    results = [_verify_one(path, options) for path in filter(None, paths)]
    ok = bool(results) and all(r["ok"] for r in results) and "" not in paths
    if args.json:
        emit_json({"ok": ok, "files": results})
        return 0 if ok else 1
    for r in results:
        detail = f"({human_size(r['size'])}, step {r['step']})" if r["ok"] else r["error"]
        print(f"{'OK' if r['ok'] else 'FAILED':<8}  {r['path']}  {detail}")
    noun = "checkpoint(s)" if any(_is_sharded(r["path"]) for r in results) else "file(s)"
    print(f"{sum(r['ok'] for r in results)} of {len(results)} {noun} verified")
    return 0 if ok else 1


def _protected(directory: str, records: list[CheckpointRecord]) -> set[str]:
    # ``last*`` files, and the file a ``last`` symlink points to, are never pruned.
    names = {r.name for r in records if r.name.startswith("last")}
    if is_url(directory):  # an object store has no symlinks
        return names
    for path in checkpoint_paths(directory):
        if os.path.basename(path).startswith("last") and os.path.islink(path):
            names.add(os.path.basename(os.readlink(path)))
    return names


def _policy(args: argparse.Namespace) -> Any:
    if args.keep_best is None and args.keep_last is None:
        raise UsageError("pass --keep-best K and/or --keep-last N (what to keep)")
    if args.keep_best is not None and not args.metric:
        raise UsageError("--keep-best needs --metric NAME (the metric to rank by, e.g. --metric val_loss)")
    policies: list[Any] = []
    if args.keep_last is not None:
        policies.append(KeepLatest(args.keep_last))
    if args.keep_best is not None:
        policies.append(KeepBest(args.keep_best, args.metric, args.mode))
    return policies[0] if len(policies) == 1 else AnyOf(*policies)


def run_prune(args: argparse.Namespace) -> int:
    """``stepstone ckpt prune DIR``: delete what the retention policy drops (or, with ``--dry-run``, list it).

    Args:
        args: the parsed command line.

    Returns:
        0.
    """
    options = args.storage_options
    _require_dir(args.dir, options)
    policy = _policy(args)
    index = RunIndex(args.dir, storage_options=options)
    # Only stepstone's own files are subject to retention; foreign *.ckpt files are never deleted.
    records = [r for r in index.entries() if r.format_version > 0]
    # The policy ranks the real checkpoints; last* copies are always kept and would otherwise take a slot.
    keep = policy([r for r in records if not r.name.startswith("last")]) | _protected(args.dir, records)
    dropped = [r for r in records if r.name not in keep]
    legacy = os.path.join(args.dir, LEGACY_INDEX_NAME)
    has_legacy = not is_url(args.dir) and os.path.isfile(legacy) and not os.path.islink(legacy)
    if not args.dry_run:
        index.delete(*(r.name for r in dropped))  # directories via remove_sharded
        if has_legacy:
            os.remove(legacy)
    if args.json:
        emit_json(
            {
                "dry_run": args.dry_run,
                "deleted": [r.name for r in dropped],
                "kept": sorted(keep),
                "legacy_index": LEGACY_INDEX_NAME if has_legacy else None,
            }
        )
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    if has_legacy:
        print(f"{verb}: {LEGACY_INDEX_NAME}  (the index file of an earlier stepstone, no longer used)")
    for record in dropped:
        print(f"{verb}: {record.name}  (step {record.step}, {metrics_text(record.metrics)})")
    kept = sorted(r.name for r in records if r.name in keep)
    print(f"{verb} {len(dropped)} checkpoint(s), kept {len(kept)}: {', '.join(kept) or '-'} ({policy!r})")
    return 0
