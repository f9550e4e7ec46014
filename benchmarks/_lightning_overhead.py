"""The Lightning side of the overhead benchmark; runs in ``benchmarks/.venv-lightning`` (see bench_overhead.py).

Two modes, both printing one JSON object per line on stdout:

* ``--serve``: the driver (bench_overhead.py) sends one JSON request per line on stdin,
  ``{"contender": "plain" | "lightning" | "lightning+log", "steps": N}``, and reads one JSON result per
  line, so that Lightning's repetitions interleave with stepstone's in the parent process. The first line
  printed is ``{"ready": true, "versions": {...}}``.
* standalone: ``python _lightning_overhead.py --reps 5`` runs a warm-up and then the three contenders
  ``--reps`` times, interleaved, and prints one line per measurement.

Anything Lightning itself prints is sent to stderr so that stdout carries only the JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from _overhead_common import LOADERS, make_loader, quiet_loggers, run_contender, setup_process

CONTENDERS = ("plain", "lightning", "lightning+log")


def _versions() -> dict[str, str]:
    import lightning
    import torch

    return {"lightning": lightning.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help="answer JSON requests read from stdin")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loader", choices=LOADERS, default="batched")
    parser.add_argument("--reps", type=int, default=5, help="standalone mode: repetitions")
    parser.add_argument("--warmup-steps", type=int, default=100, help="standalone mode: warm-up run length")
    args = parser.parse_args(argv)

    # Keep the real stdout for the JSON lines; everything else written to fd 1 goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    setup_process()
    import lightning as L

    quiet_loggers()
    loader = make_loader(args.steps, args.batch_size, args.loader)

    if args.serve:
        emit({"ready": True, "versions": _versions()})
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            try:
                result = run_contender(L, request["contender"], loader, int(request["steps"]))
            except Exception as err:  # report, keep serving
                emit({"error": f"{type(err).__name__}: {err}"})
                continue
            emit(result)
        return 0

    versions = _versions()
    for contender in CONTENDERS:
        run_contender(L, contender, loader, args.warmup_steps)
    for rep in range(args.reps):
        order = CONTENDERS[rep % 3 :] + CONTENDERS[: rep % 3]
        for contender in order:
            result = run_contender(L, contender, loader, args.steps)
            emit({"rep": rep, "contender": contender, "steps": args.steps, **result, **versions})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
