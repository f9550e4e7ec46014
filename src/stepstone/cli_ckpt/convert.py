"""``stepstone ckpt convert`` and sharded directories in ``stepstone ckpt verify``.

``convert SRC_DIR DST_FILE`` gathers a sharded (FSDP) checkpoint directory into one ordinary stepstone file.
``verify`` is routed through :func:`run_verify_any`: command lines without sharded directories go to the
one-file ``verify`` unchanged; otherwise every path (file or sharded directory) is checked here, with the same
output.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from stepstone.checkpoint import verify_file
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.sharded import convert_sharded_to_file, is_sharded_checkpoint, verify_sharded
from stepstone.cli_ckpt.listing import checkpoint_paths, run_verify
from stepstone.cli_ckpt.output import emit_json, human_size
from stepstone.errors import CheckpointError

__all__ = ["run_convert", "run_verify_any"]


def run_convert(args: argparse.Namespace) -> int:
    """``stepstone ckpt convert SRC_DIR DST_FILE``: one file from a sharded checkpoint directory.

    Args:
        args: the parsed command line (``src_dir``, ``dst_file``, ``json``).

    Returns:
        0 (errors are raised and turned into exit codes by ``run_ckpt``).
    """
    record = convert_sharded_to_file(args.src_dir, args.dst_file)
    if args.json:
        emit_json({"src": args.src_dir, "dst": record.path, "size": record.size, "step": record.step})
    else:
        print(f"wrote {record.path} ({human_size(record.size)}, step {record.step}) from {args.src_dir}")
    return 0


def _expand(paths: list[str]) -> tuple[list[str], list[str]]:
    """The paths to check (folders replaced by the checkpoints inside), and the folders without any."""
    found: list[str] = []
    empty: list[str] = []
    for path in paths:
        if os.path.isdir(path) and not is_sharded_checkpoint(path):
            inside = checkpoint_paths(path)
            found += inside
            empty += [] if inside else [path]
        else:
            found.append(path)
    return found, empty


def _check(path: str) -> dict[str, Any]:
    try:
        record: CheckpointRecord = verify_sharded(path) if is_sharded_checkpoint(path) else verify_file(path)
    except CheckpointError as error:
        return {"path": path, "ok": False, "size": None, "step": None, "error": str(error)}
    return {"path": path, "ok": True, "size": record.size, "step": record.step, "error": None}


def run_verify_any(args: argparse.Namespace) -> int:
    """``stepstone ckpt verify PATH...``, also for sharded checkpoint directories (their marker's checksums).

    Args:
        args: the parsed command line.

    Returns:
        0 only if at least one checkpoint was checked and all verified; else 1.
    """
    paths, empty = _expand(list(args.paths))
    if not any(is_sharded_checkpoint(path) for path in paths):
        return run_verify(args)
    for directory in empty:
        print(f"FAILED    {directory}: no *.ckpt files in this directory")
    results = [_check(path) for path in paths]
    ok = bool(results) and all(r["ok"] for r in results) and not empty
    if args.json:
        emit_json({"ok": ok, "files": results})
        return 0 if ok else 1
    for r in results:
        detail = f"({human_size(r['size'])}, step {r['step']})" if r["ok"] else r["error"]
        print(f"{'OK' if r['ok'] else 'FAILED':<8}  {r['path']}  {detail}")
    print(f"{sum(r['ok'] for r in results)} of {len(results)} checkpoint(s) verified")
    return 0 if ok else 1
