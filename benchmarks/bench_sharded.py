"""Sharded (FSDP2) checkpoints: save time per rank on 2 ranks vs 1, and rank 0's peak memory in "full" mode.

For a model of ~256 MiB of float32 parameters (``Linear(2048, 2048, bias=False)`` layers, each sharded on its
own), on gloo CPU ranks started with ``ddp_spawn``:

- ``sharded save``: ``save_sharded`` of ``FSDPStrategy(state_dict_type="sharded").model_state_dict()`` (every
  rank writes its shards, rank 0 checksums every file and commits the directory), wall time per rank, best
  of N, with 1 rank and with 2 ranks;
- ``sharded load``: ``load_sharded`` of that directory back into the ranks' shards (checksums verified as the
  files are read), with the files in the page cache (just written), and ``cold``: after every rank evicted
  the directory's files from the page cache (``posix_fadvise(DONTNEED)``; the first rank to read a file reads
  it from the disk), the case of a restart after a preemption;
- ``full gather``: ``model_state_dict()`` in ``"full"`` mode; the peak RSS growth of each rank while it
  gathers (VmHWM, reset through ``/proc/self/clear_refs`` before), against the model size: rank 0 should hold
  about one full copy, the others almost nothing.

Prints a table, then one JSON line per figure. Usage: ``python benchmarks/run.py sharded [--repeats 3]
[--mib 256] [--dir DIR]``. With 2 CPU cores the 2-rank figures include the ranks competing for the cores
(and the disk); they show the protocol's cost per rank, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from stepstone.checkpoint.sharded import load_sharded, remove_sharded, save_sharded
from stepstone.strategies import all_gather_object, barrier, ddp_spawn, detect_environment
from stepstone.strategies.fsdp import FSDPStrategy

MIB = 1024**2
_LAYER_MIB = 16  # Linear(2048, 2048) in float32


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


def _model(mib: int) -> nn.Module:
    return nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(max(1, mib // _LAYER_MIB))])


def _evict(path: str) -> None:
    """Drop the checkpoint's files from the page cache (clean pages: no root needed)."""
    for name in os.listdir(path):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _timed_load(path: str, template: dict[str, Any], label: str) -> float:
    barrier(label)
    start = time.perf_counter()
    load_sharded(path, template)
    return time.perf_counter() - start


def _save_load(strategy: FSDPStrategy, directory: str, repeats: int) -> dict[str, float]:
    strategy.state_dict_type = "sharded"
    saves, loads, cold_loads = [], [], []
    for repeat in range(repeats):
        path = os.path.join(directory, f"w{strategy.world_size}-{repeat}.ckpt")
        barrier("bench save")
        start = time.perf_counter()
        save_sharded(path, {"state_dict": strategy.model_state_dict()})
        saves.append(time.perf_counter() - start)
        template = {"state_dict": strategy.model_state_dict()}
        loads.append(_timed_load(path, template, "bench load"))
        _evict(path)
        cold_loads.append(_timed_load(path, template, "bench cold load"))
        barrier("bench remove")
        if strategy.is_global_zero:
            remove_sharded(path)
    return {"save_s": min(saves), "load_s": min(loads), "cold_load_s": min(cold_loads)}


def _full_gather(strategy: FSDPStrategy) -> dict[str, float]:
    strategy.state_dict_type = "full"
    barrier("bench gather")
    before = _status_kib("VmRSS")
    exact = _reset_peak()
    start = time.perf_counter()
    state = strategy.model_state_dict()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    held = sum(t.numel() * t.element_size() for t in state.values())
    del state
    return {
        "gather_s": seconds,
        "peak_growth_mib": (peak - before) / 1024,
        "held_mib": held / MIB,
        "exact": exact,
    }


def rank_main(directory: str, repeats: int, mib: int) -> list[dict[str, Any]]:
    """One rank's measurements (run by ``ddp_spawn``), gathered on every rank."""
    torch.set_num_threads(1)
    env = detect_environment()
    assert env is not None
    strategy = FSDPStrategy(env, timeout=timedelta(minutes=5), auto_wrap_policy={nn.Linear})
    strategy.setup_environment()
    try:
        torch.manual_seed(0)
        module = strategy.setup(_model(mib))
        model_bytes = sum(p.numel() * p.element_size() for p in module.parameters())  # global sizes
        result: dict[str, Any] = {"rank": strategy.global_rank, "model_mib": model_bytes / MIB}
        result.update(_save_load(strategy, directory, repeats))
        if strategy.world_size > 1:
            result.update(_full_gather(strategy))
        return all_gather_object(result)
    finally:
        strategy.teardown()


def _report(one: list[dict[str, Any]], two: list[dict[str, Any]]) -> None:
    model = one[0]["model_mib"]
    print(
        f"\nmodel: {model:.0f} MiB of float32 parameters; best of the repeats; times per rank (max over ranks)"
    )
    print(f"{'measurement':34} {'1 rank':>10} {'2 ranks':>10} {'ratio':>7}")
    lines: list[dict[str, Any]] = []
    keys = (
        ("save_s", "sharded save (s)"),
        ("load_s", "sharded load (s)"),
        ("cold_load_s", "sharded load, cold (s)"),
    )
    for key, name in keys:
        single, double = one[0][key], max(rank[key] for rank in two)
        print(f"{name:34} {single:10.3f} {double:10.3f} {double / single:7.2f}")
        lines.append(
            {"bench": "sharded", "type": "measurement", "op": key, "ranks_1": single, "ranks_2": double}
        )
    print(f"\n{'full gather (2 ranks)':34} {'seconds':>10} {'peak +MiB':>10} {'x model':>7}")
    for rank in two:
        ratio = rank["peak_growth_mib"] / model
        print(
            f"{'rank ' + str(rank['rank']):34} {rank['gather_s']:10.3f} {rank['peak_growth_mib']:10.0f} {ratio:7.2f}"
        )
        lines.append(
            {
                "bench": "sharded",
                "type": "measurement",
                "op": "full_gather",
                **rank,
                "peak_vs_model": round(ratio, 3),
            }
        )
    lines.append(
        {
            "bench": "sharded",
            "type": "summary",
            "model_mib": model,
            "save_2_over_1": two_over_one(one, two, "save_s"),
            "rank0_full_peak_vs_model": round(two[0]["peak_growth_mib"] / model, 3),
        }
    )
    print()
    for line in lines:
        print(json.dumps(line))


def two_over_one(one: list[dict[str, Any]], two: list[dict[str, Any]], key: str) -> float:
    """The 2-rank time (slowest rank) divided by the 1-rank time."""
    return round(max(rank[key] for rank in two) / one[0][key], 3)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results.

    Args:
        argv: command-line arguments (``--repeats``, ``--mib``, ``--dir``).

    Returns:
        The exit status (0).
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256, help="model size in MiB (multiples of 16)")
    parser.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="bench-sharded-", dir=args.dir)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        one = ddp_spawn(rank_main, 1, (directory, args.repeats, args.mib))
        two = ddp_spawn(rank_main, 2, (directory, args.repeats, args.mib))
        _report(one, two)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(main(sys.argv[1:]))
