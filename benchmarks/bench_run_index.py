"""Listing a folder of many small checkpoints: `stepstone ckpt ls` and RunIndex, first and repeated.

The run index keeps nothing in the checkpoint folder: every listing reads each file's trailer (a read at the
file's end), and what it read is remembered per process and per file version. This benchmark writes ``--files``
(default 200) small checkpoints (~66 KB each: one 64 KiB tensor, epoch, step and a metric in the trailer)
with the engine's ``save_file`` and times, best and median of ``--repeats``:

- ``stepstone ckpt ls --no-verify DIR`` as a subprocess (what a user types), alternating with the same command
  on an empty folder (interpreter start and imports: most of the time), ``--cli-repeats`` times each;
- the same command in-process (``stepstone.cli.main``, output discarded): the listing's own cost;
- ``RunIndex(DIR).entries()`` in-process with the per-process cache emptied first (a process's first listing);
- ``RunIndex(DIR).entries()`` again with the cache filled (every later listing: ModelCheckpoint lists the
  folder at each save, ``ckpt_path="last"`` and ``"best"`` list it too).

Usage: ``python benchmarks/run.py run_index [--files 200] [--repeats 5] [--cli-repeats 1] [--dir DIR]`` (or
run this file directly). Takes about 20 s on the 2-core development VM, mostly the three subprocesses' start.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from stepstone.checkpoint import RunIndex, save_file
from stepstone.checkpoint import index as index_module
from stepstone.cli import main as cli_main

_LS = "import sys; from stepstone.cli import main; sys.exit(main())"


def _write(directory: str, files: int) -> float:
    """Write ``files`` checkpoints into ``directory``; return the mean seconds per save."""
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for step in range(1, files + 1):
        state = {
            "state_dict": {"weight": torch.randn(16 * 1024, generator=generator)},  # 64 KiB of float32
            "epoch": step // 10,
            "global_step": step,
        }
        metadata = {"step": step, "epoch": step // 10, "metrics": {"val_loss": 1.0 / step}}
        save_file(os.path.join(directory, f"step={step:05d}.ckpt"), state, metadata=metadata, progress=False)
    return (time.perf_counter() - started) / files


def _time(run: Callable[[], object], repeats: int, before: Callable[[], None] | None = None) -> list[float]:
    run()  # warm-up: imports, page cache
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def _ls_subprocess(full: str, empty: str, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``stepstone ckpt ls --no-verify`` on ``full`` and on ``empty``, run alternately."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(directory: str) -> float:
        started = time.perf_counter()
        command = [sys.executable, "-c", _LS, "ckpt", "ls", "--no-verify", directory]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    run(empty)  # warm-up: the interpreter's and torch's files into the page cache
    pairs = [(run(full), run(empty)) for _ in range(repeats)]
    return [f for f, _ in pairs], [e for _, e in pairs]


def _ls_in_process(directory: str) -> Callable[[], object]:
    def run() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            if cli_main(["ckpt", "ls", "--no-verify", directory]) != 0:
                raise RuntimeError(f"stepstone ckpt ls --no-verify {directory} failed")

    return run


def _entries(directory: str, expected: int) -> Callable[[], object]:
    def run() -> None:
        found = len(RunIndex(directory).entries())
        if found != expected:
            raise RuntimeError(f"RunIndex listed {found} checkpoints in {directory}, expected {expected}")

    return run


def _forget() -> None:
    index_module._cache.clear()  # what a new process starts with


def _report(results: dict[str, list[float]], files: int, save_seconds: float) -> None:
    print(f"\n{files} checkpoints of ~66 KB, {save_seconds * 1000:.1f} ms per save_file")
    print(f"{'operation':44} {'best ms':>9} {'median ms':>10} {'per file µs':>12}")
    for name, times in results.items():
        best, median = min(times), statistics.median(times)
        per_file = "" if "stepstone ckpt ls" in name else f"{best / files * 1e6:12.1f}"
        print(f"{name:44} {best * 1000:9.2f} {median * 1000:10.2f} {per_file}")
    print()
    for name, times in results.items():
        line = {"bench": "run_index", "type": "measurement", "op": name, "files": files}
        line |= {"best_s": round(min(times), 5), "median_s": round(statistics.median(times), 5)}
        print(json.dumps(line))
    first, repeated = min(results["RunIndex.entries() first"]), min(results["RunIndex.entries() repeated"])
    summary = {"bench": "run_index", "type": "summary", "files": files, "save_file_s": round(save_seconds, 5)}
    summary |= {"ls_s": round(min(results["stepstone ckpt ls --no-verify"]), 5)}
    summary |= {"ls_in_process_s": round(min(results["ckpt ls --no-verify, in-process"]), 5)}
    summary |= {"first_s": round(first, 5), "repeated_s": round(repeated, 5)}
    print(json.dumps(summary | {"first_over_repeated": round(first / repeated, 2)}))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results.

    Args:
        argv: command-line arguments (``--files``, ``--repeats``, ``--cli-repeats``, ``--dir``).

    Returns:
        The exit status (0).
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=200, help="number of checkpoints in the folder")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the in-process measurements")
    parser.add_argument(
        "--cli-repeats", type=int, default=1, help="subprocess runs on each folder (~3 s each)"
    )
    parser.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="bench-", dir=args.dir)
    try:
        full, empty = os.path.join(root, "ckpts"), os.path.join(root, "empty")
        os.makedirs(full)
        os.makedirs(empty)
        save_seconds = _write(full, args.files)
        entries = _entries(full, args.files)
        ls_full, ls_empty = _ls_subprocess(full, empty, args.cli_repeats)
        results = {
            "stepstone ckpt ls --no-verify (empty)": ls_empty,
            "stepstone ckpt ls --no-verify": ls_full,
            "ckpt ls --no-verify, in-process": _time(_ls_in_process(full), args.repeats),
            "RunIndex.entries() first": _time(entries, args.repeats, before=_forget),
            "RunIndex.entries() repeated": _time(entries, args.repeats * 4),
        }
        _report(results, args.files, save_seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
