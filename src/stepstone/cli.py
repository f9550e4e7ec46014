"""The ``stepstone`` command line: ``stepstone demo`` and ``stepstone ckpt ...`` (see ``cli_ckpt``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepstone", description="stepstone: training with trustworthy checkpoints"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train a small model with ModelCheckpoint, then resume from 'last'"
    )
    demo.add_argument("--dir", default="demo_run", help="output folder (emptied first; default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=3, help="epochs of the first run (default: %(default)s)")
    demo.add_argument(
        "--total-epochs", type=int, default=5, help="max_epochs of the resumed run (default: %(default)s)"
    )
    from stepstone.cli_ckpt import add_ckpt_parser

    add_ckpt_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stepstone`` console script.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    args = _parser().parse_args(argv)
    if args.command == "ckpt":
        from stepstone.cli_ckpt import run_ckpt

        return run_ckpt(args)
    if args.command == "demo":
        from stepstone.demo import run_demo

        if not 0 < args.epochs < args.total_epochs:
            print(
                f"stepstone demo: need 0 < --epochs ({args.epochs}) < --total-epochs ({args.total_epochs})",
                file=sys.stderr,
            )
            return 2
        run_demo(args.dir, args.epochs, args.total_epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
