"""Run many seeded configurations under Lightning 2.6.6 and stepstone and summarise the differences.

From the repository root::

    PYTHONPATH=src:tests .venv/bin/python -m compat.differential.long_run --configs 2000 --seed 0 --jobs 4
    PYTHONPATH=src:tests .venv/bin/python -m compat.differential.long_run --one 17        # reproduce seed 17
    PYTHONPATH=src:tests .venv/bin/python -m compat.differential.long_run --config '{...}'  # a literal config

The summary lists, per difference category, how many configurations showed it and the smallest one that does.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from compat.differential import configs, program
from compat.differential.compare import Difference, compare
from compat.differential.configs import Config


def check(config: Config) -> list[Difference]:
    """Run ``config`` under both frameworks (each in a fresh temporary directory) and compare.

    Args:
        config: a configuration from :func:`compat.differential.configs.generate`.

    Returns:
        The unexplained differences.
    """
    observed = {}
    for name in ("lightning", "stepstone"):
        with tempfile.TemporaryDirectory(prefix=f"diff-{name}-") as workdir:
            observed[name] = program.run_flow(program.framework(name), config, workdir)
    return compare(config, observed["lightning"], observed["stepstone"])


def report(config: Config, diffs: list[Difference]) -> str:
    """Human-readable differences of one configuration, with the command that reproduces them."""
    lines = [f"seed {config['seed']}: {len(diffs)} unexplained difference(s)"]
    lines += [f"  {d}" for d in diffs]
    lines.append(f"  config: {configs.dumps(config)}")
    lines.append(
        f"  reproduce: PYTHONPATH=src:tests python -m compat.differential.long_run --one {config['seed']}"
    )
    return "\n".join(lines)


def _worker(seed: int) -> tuple[int, list[tuple[str, str]], str | None]:
    config = configs.generate(seed)
    try:
        diffs = check(config)
    except Exception as exc:  # a harness failure must not end a long run; it is counted and shown
        return seed, [("harness.crash", f"{type(exc).__name__}: {exc}")], None
    return seed, [(d.category, str(d)) for d in diffs], report(config, diffs) if diffs else None


def summarise(results: list[tuple[int, list[tuple[str, str]], str | None]]) -> str:
    by_category: dict[str, list[int]] = defaultdict(list)
    example: dict[int, dict[str, str]] = defaultdict(dict)
    for seed, diffs, _ in results:
        for category, text in diffs:
            if seed not in by_category[category]:
                by_category[category].append(seed)
                example[seed][category] = text
    lines = [f"configs run: {len(results)}; with differences: {sum(1 for r in results if r[1])}"]
    for category, seeds in sorted(by_category.items(), key=lambda kv: -len(kv[1])):
        smallest = min(seeds, key=lambda s: configs.size(configs.generate(s)))
        lines.append(f"\n{category}: {len(seeds)} config(s); smallest: seed {smallest}")
        lines.append(f"  {example[smallest][category]}")
        lines.append(f"  config: {configs.dumps(configs.generate(smallest))}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", type=int, default=200, help="how many seeds to run")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes")
    parser.add_argument("--one", type=int, help="run only this seed and print its differences")
    parser.add_argument("--config", help="run only this literal JSON config and print its differences")
    parser.add_argument("--json", help="also write per-seed results to this file")
    args = parser.parse_args(argv)
    if args.one is not None or args.config:
        config = json.loads(args.config) if args.config else configs.generate(args.one)
        diffs = check(config)
        print(report(config, diffs))
        return 1 if diffs else 0
    seeds = range(args.seed, args.seed + args.configs)
    start = time.monotonic()
    results: list[Any] = []
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = list(pool.imap_unordered(_worker, seeds))
    else:
        results = [_worker(s) for s in seeds]
    results.sort()
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"seed": s, "diffs": d} for s, d, _ in results], f, indent=1)
    print(summarise(results))
    print(f"\n{len(results)} configs in {time.monotonic() - start:.0f} s")
    return 1 if any(r[1] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
