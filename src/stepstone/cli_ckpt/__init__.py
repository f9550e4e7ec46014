"""``stepstone ckpt``: list, show, verify, prune, diff, export and convert checkpoints from the command line.

Every command prints readable text, or JSON with ``--json`` (for scripts). Exit codes: 0 success, 1 a
checkpoint failed (corrupt, unsafe, missing; ``verify`` found a bad file; ``diff`` found a difference),
2 a bad command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from stepstone.cli_ckpt.contents import run_diff, run_export, run_show
from stepstone.cli_ckpt.convert import run_convert
from stepstone.cli_ckpt.listing import UsageError, run_ls, run_prune, run_verify
from stepstone.cli_ckpt.locations import storage_options
from stepstone.errors import CheckpointError, MisconfigurationException

__all__ = ["add_ckpt_parser", "run_ckpt"]

Command = Callable[[argparse.Namespace], int]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _add(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, run: Command, help_text: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text (for scripts)")
    parser.set_defaults(ckpt_run=run)
    return parser


def _add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        type=storage_options,
        metavar="JSON",
        help='fsspec options for s3:// and other URLs, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
        "(S3 also reads boto's environment: AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...)",
    )


def add_ckpt_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ckpt`` and its subcommands to the ``stepstone`` parser.

    Args:
        commands: the top-level subparsers.
    """
    ckpt = commands.add_parser("ckpt", help="inspect, verify, prune, diff and export checkpoints")
    sub = ckpt.add_subparsers(dest="ckpt_command", required=True)
    ls = _add(
        sub, "ls", run_ls, "list the checkpoints of a directory: step, epoch, metrics, size, time, status"
    )
    ls.add_argument("dir", help="the checkpoint directory (a path or a URL such as s3://bucket/run)")
    ls.add_argument("--no-verify", action="store_true", help="read trailers only, skip the checksum pass")
    ls.add_argument("--metric", help="mark the best by this metric (default: ModelCheckpoint's own best)")
    ls.add_argument("--mode", choices=("min", "max"), default="min", help="with --metric (default: min)")
    _add_storage_options(ls)
    show = _add(
        sub,
        "show",
        run_show,
        "show one checkpoint (file or sharded dir): keys, tensors, hparams, loops, callbacks",
    )
    show.add_argument("file")
    show.add_argument("--all", action="store_true", help="list every tensor, not only the state_dict's")
    verify = _add(sub, "verify", run_verify, "check every checksum of files, sharded dirs or *.ckpt in dirs")
    verify.add_argument("paths", nargs="+", metavar="PATH")
    _add_storage_options(verify)
    prune = _add(sub, "prune", run_prune, "delete the checkpoints a retention policy drops (never last*)")
    prune.add_argument("dir")
    prune.add_argument("--keep-best", type=_positive, metavar="K", help="keep the K best by --metric")
    prune.add_argument("--keep-last", type=_positive, metavar="N", help="keep the N newest")
    prune.add_argument("--metric", help="the metric --keep-best ranks by, e.g. val_loss")
    prune.add_argument("--mode", choices=("min", "max"), default="min", help="lower or higher is better")
    prune.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    _add_storage_options(prune)
    diff = _add(
        sub, "diff", run_diff, "compare two checkpoints: tensors, hparams, metrics (exit 1 if they differ)"
    )
    diff.add_argument("a")
    diff.add_argument("b")
    export = _add(
        sub, "export", run_export, "write the weights (state_dict) of a file or sharded dir as safetensors"
    )
    export.add_argument("file")
    export.add_argument("out", help="the output .safetensors file")
    convert = _add(sub, "convert", run_convert, "gather a sharded (FSDP) checkpoint directory into one file")
    convert.add_argument("src_dir", help="the sharded checkpoint directory")
    convert.add_argument("dst_file", help="the file to write (a stepstone checkpoint)")


def run_ckpt(args: argparse.Namespace) -> int:
    """Run the parsed ``ckpt`` subcommand, turning stepstone's errors into a message and an exit code.

    Args:
        args: the parsed command line.

    Returns:
        The exit code.
    """
    prefix = f"stepstone ckpt {args.ckpt_command}: error:"
    try:
        return int(args.ckpt_run(args))
    except (UsageError, MisconfigurationException) as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
    except (CheckpointError, ImportError, OSError) as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 1
