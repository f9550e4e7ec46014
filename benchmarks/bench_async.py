"""Async checkpointing: training-loop stall and time lost per checkpoint (async vs sync), and peak RSS of saves.

For a ~512 MiB state (8 float32 buffers of 64 MiB in a LightningModule, plus a tiny trained layer), in one run:

- ``disk``: the same bytes written by the faster of the two disk limits of ``_disk_limit.py`` (``os.write``
  with the engine's early writeback every 64 MiB, or page-aligned ``O_DIRECT`` writes; then fsync);
- ``copy``: one in-memory copy of the state into preallocated, warm buffers (the snapshot limit; median of 5, as the stalls are medians), and a
  fresh ``clone`` of it;
- ``stall``: the time ``ModelCheckpoint.on_train_batch_end`` blocks the loop at a checkpoint, sync vs async;
  ``hooks``: the time of all its ``on_train_batch_end`` calls, saving or not, per checkpoint (a tree that
  completes saves or copies ``last`` at later batch ends spends that time there, outside the stall);
- ``lost``: total training time lost per checkpoint = (fit time with checkpoints - fit time without) /
  checkpoints, with steps that sleep 10 ms (accelerator-like: the GIL is free) and with pure-CPU steps
  (~10 ms of single-threaded matmuls, which compete with the writer thread for the cores);
- ``rss``: the peak extra resident memory (VmHWM) of one sync save and of two async saves, in a fresh
  subprocess per scenario and state size; ``budget`` is two async saves with ``max_staging_bytes`` = 1/4 of
  the state (the over-budget 3/4 is written while the caller waits: its stall is reported too).

With ``--lightning``, the ``stall`` and ``lost`` fits also run with Lightning 2.6.6 (``trainer.save_checkpoint``
sync, and ``AsyncCheckpointIO``), in its own venv and process (``benchmarks/.venv-lightning``, see
bench_overhead.py), with the same model, step work and checkpoint schedule; reported beside ours, labelled.

Prints a table with the issue's targets and one JSON line per figure. Usage:
``python benchmarks/run.py async [--repeats 2] [--tensors 8] [--save-last true|link] [--dir DIR] [--lightning]``
(``--save-last``: every checkpoint also publishes ``last.ckpt``; async saves copy or link it on the writer thread).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

import stepstone as L
from _disk_limit import DirectIOUnavailable, filesystem_of, write_direct, write_early_writeback
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint import AsyncWriter, HostStaging, save_file, save_file_async

MIB = 1024 * 1024
TENSOR = 16 * MIB  # float32 elements: 64 MiB each
STEP_S = 0.010


class _Model(L.LightningModule):
    """Big persistent buffers (checkpointed, not trained) and a tiny trained layer; steps sleep or compute."""

    def __init__(self, tensors: int, kind: str, matmuls: int) -> None:
        super().__init__()
        for i in range(tensors):
            self.register_buffer(f"big{i}", torch.ones(TENSOR))
        self.layer = torch.nn.Linear(4, 1)
        self.kind, self.matmuls = kind, matmuls
        self.work = torch.randn(192, 192)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.kind == "sleep":
            time.sleep(STEP_S)
        else:
            _cpu_work(self.work, self.matmuls)
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.layer.parameters(), lr=0.01)


def _cpu_work(matrix: torch.Tensor, count: int) -> None:
    result = matrix
    for _ in range(count):
        result = torch.tanh(result @ matrix)


def _calibrate() -> int:
    matrix = torch.randn(192, 192)
    _cpu_work(matrix, 20)
    start = time.perf_counter()
    _cpu_work(matrix, 200)
    return max(1, round(STEP_S / ((time.perf_counter() - start) / 200)))


class _TimedCheckpoint(ModelCheckpoint):
    """Records how long each triggering ``on_train_batch_end`` blocked the loop, and the backpressure in it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stalls: list[float] = []
        self.waits: list[float] = []
        # Every batch end, saving or not: work the callback does at other batch ends (e.g. completing the
        # previous save, or copying ``last`` on the training thread) is training time lost too.
        self.hook_s = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        before = self._last_global_step_saved
        waited = _waited(trainer)
        start = time.perf_counter()
        super().on_train_batch_end(trainer, *args)  # type: ignore[arg-type]
        spent = time.perf_counter() - start
        self.hook_s += spent
        if self._last_global_step_saved != before:
            self.stalls.append(spent)
            self.waits.append(_waited(trainer) - waited)


def _waited(trainer: L.Trainer) -> float:
    # The public queue (this tree); an older tree kept it on the runner (the benchmark compares both).
    port = getattr(trainer, "checkpoint_port", None)
    queue = (
        port.queue if port is not None else getattr(getattr(trainer, "_runner", None), "async_saves", None)
    )
    writer = getattr(queue, "writer", None)
    return float(getattr(writer, "waited_s", 0.0))


def _fit(
    mode: str,
    kind: str,
    tensors: int,
    matmuls: int,
    steps: int,
    every: int,
    root: str,
    save_last: bool | str | None = None,
) -> dict[str, Any]:
    """One fit; ``mode`` is none / sync / async. Returns its wall time and the checkpoint stalls."""
    shutil.rmtree(root, ignore_errors=True)
    model = _Model(tensors, kind, matmuls)
    callbacks: list[L.Callback] = []
    if mode != "none":
        callbacks.append(
            _TimedCheckpoint(
                dirpath=root,
                every_n_train_steps=every,
                save_top_k=1,
                async_save=mode == "async",
                save_last=save_last,
            )
        )
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        enable_checkpointing=mode != "none",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    batches = torch.utils.data.DataLoader(torch.randn(steps * 8, 4), batch_size=8)  # type: ignore[arg-type]
    os.sync()
    start = time.perf_counter()
    trainer.fit(model, batches)
    elapsed = time.perf_counter() - start
    stalls = callbacks[0].stalls if callbacks else []  # type: ignore[attr-defined]
    waits = callbacks[0].waits if callbacks else []  # type: ignore[attr-defined]
    hook_s = callbacks[0].hook_s if callbacks else 0.0  # type: ignore[attr-defined]
    return {"fit_s": elapsed, "stalls": stalls, "waits": waits, "hook_s": hook_s}


def _copy_limits(tensors: int, repeats: int) -> dict[str, float]:
    state = [torch.ones(TENSOR) for _ in range(tensors)]
    buffers = [torch.empty_like(t) for t in state]
    for source, target in zip(state, buffers, strict=True):
        target.copy_(source)  # warm: pages faulted in, as the reused staging buffers are
    copies, clones = [], []
    for _ in range(max(5, repeats + 1)):
        start = time.perf_counter()
        for source, target in zip(state, buffers, strict=True):
            target.copy_(source)
        copies.append(time.perf_counter() - start)
        start = time.perf_counter()
        cloned = [t.clone() for t in state]
        clones.append(time.perf_counter() - start)
        del cloned
    # Medians, as for the stalls they are compared with (a best-of against a median would flatter the copy).
    return {"copy_s": statistics.median(copies), "clone_s": statistics.median(clones)}


def _disk_time(tensors: int, directory: str, repeats: int) -> float:
    """Best time of the disk limits (early writeback, O_DIRECT where the filesystem allows it) for the state."""
    state = [torch.ones(TENSOR) for _ in range(tensors)]
    path = os.path.join(directory, "disk.bin")
    times = []
    for _ in range(repeats + 1):
        for write in (write_early_writeback, write_direct):
            if os.path.exists(path):
                os.remove(path)
            os.sync()
            start = time.perf_counter()
            try:
                write(state, path)
            except DirectIOUnavailable:  # e.g. tmpfs: the early-writeback limit alone
                continue
            times.append(time.perf_counter() - start)
    os.remove(path)
    return min(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _rss_child(mode: str, mib: int, directory: str) -> None:
    """Subprocess body: peak extra RSS of a save of ``mib`` MiB (sync: one save; async, budget: two)."""
    torch.set_num_threads(1)
    state = {f"t{i}": torch.ones(TENSOR) for i in range(mib // 64)}
    writer = AsyncWriter()
    staging = HostStaging(max_staging_bytes=mib * MIB // 4 if mode == "budget" else None)
    save_file(os.path.join(directory, "warm.ckpt"), {"x": torch.ones(10)})  # imports and threads warmed up
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmHWM")
    stall = 0.0
    for i in range(1 if mode == "sync" else 2):
        path = os.path.join(directory, f"{mode}-{i}.ckpt")
        if mode == "sync":
            save_file(path, state)
        else:
            writer.wait()
            start = time.perf_counter()
            save_file_async(path, state, writer=writer, staging=staging)
            stall = time.perf_counter() - start  # the second save's: buffers reused
    writer.close()
    print(json.dumps({"extra_mib": (_status_kib("VmHWM") - before) / 1024, "stall_s": stall}))


def _rss(mode: str, mib: int, directory: str) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", mode, str(mib), directory],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    return {key: float(value) for key, value in json.loads(out.strip().splitlines()[-1]).items()}


def _loop_figures(args: argparse.Namespace, root: str, matmuls: int) -> dict[str, dict[str, Any]]:
    # Checkpoints at `every` and `2 * every`, each followed by `every - 1` steps for the writer to finish in.
    steps, every = 3 * args.every - 1, args.every
    _fit("async", "sleep", args.tensors, matmuls, 5, 2, os.path.join(root, "warm-up"))
    results: dict[str, dict[str, Any]] = {}
    disk: list[float] = []
    copies: list[float] = []
    for kind in ("sleep", "cpu"):
        runs: dict[str, list[dict[str, Any]]] = {"none": [], "sync": [], "async": []}
        for _ in range(args.repeats):  # alternate, so slow phases of the machine hit every mode
            disk.append(_disk_time(args.tensors, root, 0))
            copies.append(_copy_limits(args.tensors, 0)["copy_s"])
            for mode in runs:
                runs[mode].append(
                    _fit(
                        mode,
                        kind,
                        args.tensors,
                        matmuls,
                        steps,
                        every,
                        os.path.join(root, mode),
                        args.save_last,
                    )
                )
        base = min(r["fit_s"] for r in runs["none"])
        for mode in ("sync", "async"):
            # The first save of a fit allocates the staging buffers (fresh pages); the later ones reuse them.
            first = [r["stalls"][0] for r in runs[mode]]
            later = [s for r in runs[mode] for s in r["stalls"][1:]]
            waits = [w for r in runs[mode] for w in r["waits"][1:]]
            count = len(runs[mode][0]["stalls"])
            results[f"{kind}/{mode}"] = {
                "stall_s": statistics.median(later),
                "wait_s": statistics.median(waits),
                "hooks_s": statistics.median(r["hook_s"] / len(r["stalls"]) for r in runs[mode]),
                "first_stall_s": statistics.median(first),
                "lost_s": (min(r["fit_s"] for r in runs[mode]) - base) / count,
                "checkpoints": count,
            }
    results["limits"] = {"disk_s": min(disk), "copy_s": statistics.median(copies)}
    return results


# Lightning's side (``--lightning``): the same model, steps and checkpoint schedule, run by Lightning 2.6.6 in its
# own venv and process (``bench_overhead.ensure_lightning_venv``); one JSON line per fit on stdout.
_LIGHTNING_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lightning_async.py")


def _lightning_figures(args: argparse.Namespace, root: str, matmuls: int) -> dict[str, dict[str, Any]]:
    """Lightning 2.6.6's stall and lost time per checkpoint for both step kinds (same schedule as ours)."""
    from bench_overhead import DEFAULT_LIGHTNING_VENV, _worker_env, ensure_lightning_venv

    python = ensure_lightning_venv(DEFAULT_LIGHTNING_VENV)
    results: dict[str, dict[str, Any]] = {}
    for kind in ("sleep", "cpu"):
        command = [str(python), _LIGHTNING_CHILD, str(args.tensors), kind, str(matmuls)]
        command += [
            str(3 * args.every - 1),
            str(args.every),
            str(args.repeats),
            os.path.join(root, "lightning"),
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True, env=_worker_env()).stdout
        runs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        base = min(r["fit_s"] for r in runs if r["mode"] == "none")
        for mode in ("sync", "async"):
            mine = [r for r in runs if r["mode"] == mode]
            count = len(mine[0]["stalls"])
            results[f"lightning {kind}/{mode}"] = {
                "stall_s": statistics.median(s for r in mine for s in r["stalls"][1:]),
                "first_stall_s": statistics.median(r["stalls"][0] for r in mine),
                "lost_s": (min(r["fit_s"] for r in mine) - base) / count,
                "checkpoints": count,
            }
    return results


def _emit(name: str, **values: Any) -> None:
    print(json.dumps({"bench": "async", "type": "measurement", "name": name, **values}))


def _report(
    state_mib: float,
    limits: dict[str, float],
    loops: dict[str, dict[str, Any]],
    rss: dict[str, float],
    lightning: dict[str, dict[str, Any]],
    where: str,
    save_last: bool | str | None,
) -> int:
    sync_s = loops["sleep/sync"]["stall_s"]
    print(f"\nfolder: {where}")
    print(f"state: {state_mib:.0f} MiB, ModelCheckpoint(save_last={save_last!r})")
    print(f"{'figure':<44}{'seconds / MiB':>14}")
    print(f"{'disk limit (early writeback / O_DIRECT)':<44}{limits['disk_s']:>14.3f}")
    print(f"{'one in-memory copy (warm buffers)':<44}{limits['copy_s']:>14.3f}")
    print(f"{'one clone (fresh memory)':<44}{limits['clone_s']:>14.3f}")
    for key, row in loops.items():
        print(f"{key + ' stall (first save of the fit)':<44}{row['first_stall_s']:>14.3f}")
        print(f"{key + ' stall (later saves)':<44}{row['stall_s']:>14.3f}")
        print(f"{key + '   of which backpressure wait':<44}{row['wait_s']:>14.3f}")
        print(f"{key + ' all batch-end hook time / ckpt':<44}{row['hooks_s']:>14.3f}")
        print(f"{key + ' lost per checkpoint':<44}{row['lost_s']:>14.3f}")
    for key, extra in rss.items():
        print(f"{'peak extra RSS ' + key + ' (MiB)':<44}{extra:>14.0f}")
    if lightning:
        print("\nLightning 2.6.6 (its own venv and process; AsyncCheckpointIO for async), same schedule")
        for key, row in lightning.items():
            print(f"{key + ' stall (first save of the fit)':<52}{row['first_stall_s']:>6.3f}")
            print(f"{key + ' stall (later saves)':<52}{row['stall_s']:>6.3f}")
            print(f"{key + ' lost per checkpoint':<52}{row['lost_s']:>6.3f}")
    # Informational: a sync checkpoint inside the loop (the previous file deleted, writeback of the last one
    # still running) against one isolated write; the throughput target itself is measured by save_load.
    print(f"\nsync checkpoint in the loop vs the disk limit (info): {limits['disk_s'] / sync_s:.2f}x")
    checks = {
        "async stall <= 1.3x one copy": loops["sleep/async"]["stall_s"] / limits["copy_s"],
        "async stall <= 0.25x sync save": loops["sleep/async"]["stall_s"] / sync_s,
        "lost per async ckpt (sleep steps) <= 0.35x sync": loops["sleep/async"]["lost_s"] / sync_s,
        "lost per async ckpt (cpu steps) <= 0.35x sync": loops["cpu/async"]["lost_s"]
        / loops["cpu/sync"]["stall_s"],
    }
    limits_of = {
        "async stall <= 1.3x one copy": (1.3, False),
        "async stall <= 0.25x sync save": (0.25, False),
        "lost per async ckpt (sleep steps) <= 0.35x sync": (0.35, False),
        "lost per async ckpt (cpu steps) <= 0.35x sync": (0.35, False),
    }
    for key, extra in rss.items():
        mode, mib = key.split("@")
        bound = {"sync": 0.1, "async": 1.1, "budget": 0.35}[mode]  # budget: 1/4 of the state + 0.1x
        name = f"peak extra RSS {key} <= {bound}x state"
        checks[name] = extra / float(mib.removesuffix("MiB"))
        limits_of[name] = (bound, False)
    print(f"\n{'target':<52}{'ratio':>8}  result")
    for name, ratio in checks.items():
        bound, at_least = limits_of[name]
        met = ratio >= bound if at_least else ratio <= bound
        print(f"{name:<52}{ratio:>8.2f}  {'met' if met else 'MISSED'}")
        print(
            json.dumps(
                {"bench": "async", "type": "summary", "target": name, "ratio": round(ratio, 4), "met": met}
            )
        )
    return 0


def main(argv: list[str]) -> int:
    """Run the benchmark (see the module docstring)."""
    if argv[:1] == ["--rss-child"]:
        _rss_child(argv[1], int(argv[2]), argv[3])
        return 0
    parser = argparse.ArgumentParser(prog="bench_async", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="fits per mode and step kind (best is kept)")
    parser.add_argument("--tensors", type=int, default=8, help="64 MiB tensors in the state (default 8)")
    parser.add_argument("--every", type=int, default=300, help="steps between checkpoints (default 300)")
    parser.add_argument(
        "--save-last",
        default=None,
        type=lambda text: {"true": True, "false": False, "link": "link"}[text.lower()],
        help="ModelCheckpoint(save_last=...) in the stall/lost fits: true, false or link (default: unset)",
    )
    parser.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument(
        "--lightning", action="store_true", help="also run the fits with Lightning 2.6.6 (its own venv)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="stepstone-bench-async-", dir=args.dir)
    try:
        state_mib = args.tensors * 64.0
        limits = {
            "disk_s": _disk_time(args.tensors, root, args.repeats),
            **_copy_limits(args.tensors, args.repeats),
        }
        _emit("setup", filesystem=filesystem_of(root), save_last=args.save_last, state_mib=state_mib)
        for name, value in limits.items():
            _emit(name, seconds=value, state_mib=state_mib)
        matmuls = _calibrate()
        loops = _loop_figures(args, root, matmuls)
        lightning = _lightning_figures(args, root, matmuls) if args.lightning else {}
        for name, row in lightning.items():
            _emit(name, **row, state_mib=state_mib)
        # Also measured between the fits: the disk's best, and the copy's median (compared with median stalls).
        between = loops.pop("limits")
        limits["disk_s"] = min(limits["disk_s"], between["disk_s"])
        limits["copy_s"] = statistics.median([limits["copy_s"], between["copy_s"]])
        for name, row in loops.items():
            _emit(name, **row, state_mib=state_mib)
        rss: dict[str, float] = {}
        rss_dir = os.path.join(root, "rss")
        os.makedirs(rss_dir)
        for mib in (256, int(state_mib)):
            for mode in ("sync", "async", "budget"):
                figures = _rss(mode, mib, rss_dir)
                rss[f"{mode}@{mib}MiB"] = figures["extra_mib"]
                _emit(f"rss/{mode}", state_mib=mib, **figures)
        return _report(state_mib, limits, loops, rss, lightning, filesystem_of(root), args.save_last)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
