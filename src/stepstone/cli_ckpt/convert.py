"""``stepstone ckpt convert``: gather a sharded (FSDP) checkpoint directory into one ordinary stepstone file."""

from __future__ import annotations

import argparse

from stepstone.checkpoint.sharded import convert_sharded_to_file
from stepstone.cli_ckpt.output import emit_json, human_size

__all__ = ["run_convert"]


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
