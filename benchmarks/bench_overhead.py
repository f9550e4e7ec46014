"""Per-step framework overhead: stepstone and Lightning 2.6.6 against a hand-written PyTorch loop.

Workload: Linear(32, 2), batch 64, SGD, cross-entropy, 2,000 optimizer steps over an in-memory TensorDataset
(one epoch of one DataLoader), no validation. Contenders:

* ``plain``          the hand-written loop (run in this process and again in Lightning's process);
* ``stepstone``      ``L.Trainer(max_steps=2000, enable_progress_bar=False, logger=False,
                     enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0).fit``;
* ``stepstone+log``  the same with one ``self.log("loss", loss)`` per step;
* ``lightning``, ``lightning+log``  the same two with Lightning 2.6.6, in a subprocess of its own venv
  (``benchmarks/.venv-lightning``, created on first use).

Each framework run is paired with a plain-loop run of its own process, right before or after it:
overhead per step = (framework time - plain loop time) / steps, where a time covers the Trainer's
construction and ``fit`` (setup and teardown amortised over the steps). The "steady" figure is the same
difference measured between the first and the last training step only, so it excludes setup/teardown.
A repetition runs every pair, in an order rotating from rep to rep (plain first in even reps, last in odd
ones), so that the machine's drifts hit all contenders alike; the figures are medians over the reps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _overhead_common import (  # noqa: E402
    LOADERS,
    TRAINER_KWARGS,
    make_loader,
    quiet_loggers,
    run_contender,
    setup_process,
)

# Keep in step with dev.py's TORCH_PIN: both processes must run the same torch.
TORCH_VERSION = "2.13.0"
LIGHTNING_VERSION = "2.6.6"
DEFAULT_LIGHTNING_VENV = HERE / ".venv-lightning"
WORKER = HERE / "_lightning_overhead.py"
TARGET_RATIO = 0.25  # the issue: stepstone's overhead per step at most 1/4 of Lightning's

STEPSTONE_CONTENDERS = ("plain", "stepstone", "stepstone+log")
LIGHTNING_CONTENDERS = ("plain", "lightning", "lightning+log")
VARIANTS = (("", "no log"), ("+log", "self.log per step"))
# (process, contender, steps) -> one run's timings
RunOne = Callable[[str, str, int], dict[str, Any]]


def _err(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- Lightning's venv and process --------------------------------------------------------------------------
def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _venv_versions(python: Path) -> dict[str, str] | None:
    code = (
        "import json, torch, lightning; "
        "print(json.dumps({'torch': torch.__version__, 'lightning': lightning.__version__}))"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=_worker_env())
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _versions_ok(found: dict[str, str] | None) -> bool:
    return (
        found is not None
        and found["torch"].split("+")[0] == TORCH_VERSION
        and found["lightning"] == LIGHTNING_VERSION
    )


def ensure_lightning_venv(venv_dir: Path) -> Path:
    """Create ``venv_dir`` with torch==TORCH_VERSION and lightning==LIGHTNING_VERSION unless it has them."""
    python = _venv_python(venv_dir)
    if python.exists() and _versions_ok(_venv_versions(python)):
        return python
    _err(
        f"setting up {venv_dir} (torch=={TORCH_VERSION}, lightning=={LIGHTNING_VERSION}); once, a few minutes"
    )
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # torch first and alone, then lightning with torch pinned in the same command so that resolving
    # lightning's requirements can never upgrade torch (to a multi-GB CUDA build).
    for extra in (
        [f"torch=={TORCH_VERSION}"],
        [f"torch=={TORCH_VERSION}", f"lightning=={LIGHTNING_VERSION}"],
    ):
        _err("+", " ".join([*pip, *extra]))
        proc = subprocess.run([*pip, *extra], capture_output=True, text=True)
        if proc.returncode != 0:
            _err(proc.stdout, proc.stderr)
            raise RuntimeError(f"pip install {' '.join(extra)} failed in {venv_dir} (exit {proc.returncode})")
    found = _venv_versions(python)
    if not _versions_ok(found):
        raise RuntimeError(
            f"{venv_dir} has {found}, expected torch {TORCH_VERSION} and lightning {LIGHTNING_VERSION}; "
            f"delete {venv_dir} and run again"
        )
    return python


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    return env


class LightningWorker:
    """``_lightning_overhead.py --serve`` in Lightning's venv: one JSON request/answer per line."""

    def __init__(self, python: Path, steps: int, batch_size: int, loader: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="stepstone-bench-")
        cmd = [str(python), str(WORKER), "--serve", "--steps", str(steps), "--batch-size", str(batch_size)]
        cmd += ["--loader", loader]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=self._tmp.name,  # whatever Lightning writes by default lands here, not in the repository
            env=_worker_env(),
        )
        hello = self._read()
        if not hello.get("ready"):
            raise RuntimeError(f"Lightning worker did not start: {hello}")
        self.versions: dict[str, str] = hello["versions"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"Lightning worker exited (code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def run(self, contender: str, steps: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"contender": contender, "steps": steps}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"Lightning worker failed on {contender}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._tmp.cleanup()


# --- measuring ---------------------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(measurements: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """Per contender: medians over reps; a framework's overhead is against the plain run paired with it."""
    by_id = {m["id"]: m for m in measurements}
    rows: list[dict[str, Any]] = []
    for process, contenders in (("stepstone", STEPSTONE_CONTENDERS), ("lightning", LIGHTNING_CONTENDERS)):
        for contender in contenders:
            mine = [m for m in measurements if m["process"] == process and m["contender"] == contender]
            if not mine:
                continue
            row: dict[str, Any] = {
                "bench": "overhead",
                "type": "summary",
                "process": process,
                "contender": contender,
                "steps": steps,
                "runs": len(mine),
                "median_total_s": _median([m["total_s"] for m in mine]),
                "median_step_us": _median([m["total_s"] / steps * 1e6 for m in mine]),
                "median_steady_step_us": _median([m["steady_step_s"] * 1e6 for m in mine]),
            }
            if contender != "plain":
                best_plain = min(
                    m["total_s"]
                    for m in measurements
                    if m["process"] == process and m["contender"] == "plain"
                )
                # Noise from other processes only ever adds time: the fastest runs are the least disturbed.
                row["best_overhead_us_per_step"] = (
                    (min(m["total_s"] for m in mine) - best_plain) / steps * 1e6
                )
                pairs = [(m, by_id[m["paired_with"]]) for m in mine]
                total = [(m["total_s"] - p["total_s"]) / steps * 1e6 for m, p in pairs]
                row["overhead_us_per_step"] = _median(total)
                row["overhead_min_us"] = min(total)
                row["overhead_max_us"] = max(total)
                row["cpu_overhead_us_per_step"] = _median(
                    [(m["cpu_s"] - p["cpu_s"]) / steps * 1e6 for m, p in pairs]
                )
                row["steady_overhead_us_per_step"] = _median(
                    [(m["steady_step_s"] - p["steady_step_s"]) * 1e6 for m, p in pairs]
                )
                # Setup + teardown: what the total holds beyond the steady per-step time, against the plain loop.
                row["fixed_overhead_ms"] = _median(
                    [
                        (
                            (m["total_s"] - m["steady_step_s"] * steps)
                            - (p["total_s"] - p["steady_step_s"] * steps)
                        )
                        * 1e3
                        for m, p in pairs
                    ]
                )
            rows.append(row)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {r["contender"]: r for r in rows if r["contender"] != "plain"}
    out = []
    for suffix, label in VARIANTS:
        ours, theirs = by_name.get("stepstone" + suffix), by_name.get("lightning" + suffix)
        if ours is None or theirs is None:
            continue
        ratio = ours["overhead_us_per_step"] / theirs["overhead_us_per_step"]
        steady = ours["steady_overhead_us_per_step"] / theirs["steady_overhead_us_per_step"]
        best = ours["best_overhead_us_per_step"] / theirs["best_overhead_us_per_step"]
        cpu = ours["cpu_overhead_us_per_step"] / theirs["cpu_overhead_us_per_step"]
        out.append(
            {
                "bench": "overhead",
                "type": "ratio",
                "variant": label,
                "stepstone_us_per_step": ours["overhead_us_per_step"],
                "lightning_us_per_step": theirs["overhead_us_per_step"],
                "ratio": ratio,
                "steady_ratio": steady,
                "best_ratio": best,
                "cpu_ratio": cpu,
                "target": TARGET_RATIO,
                "meets_target": ratio <= TARGET_RATIO,
            }
        )
    return out


def format_table(rows: list[dict[str, Any]], rats: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    # (header, unit, width, row key or None for plain rows, format)
    cols = [
        ("overhead", "us/step", 9, "overhead_us_per_step", ".1f"),
        ("(min..max)", "", 13, None, ""),
        ("steady", "us/step", 8, "steady_overhead_us_per_step", ".1f"),
        ("cpu", "us/step", 8, "cpu_overhead_us_per_step", ".1f"),
        ("best-of", "us/step", 8, "best_overhead_us_per_step", ".1f"),
        ("fixed", "ms", 6, "fixed_overhead_ms", ".1f"),
    ]
    head = f"{'contender':<14} {'process':<10} {'total s':>7} {'us/step':>8}"
    unit = f"{'':<14} {'':<10} {'':>7} {'':>8}"
    for name, u, width, _key, _fmt in cols:
        head += f" {name:>{width}}"
        unit += f" {u:>{width}}"
    lines = [
        f"Per-step overhead against a hand-written loop: Linear(32, 2), batch {meta['batch_size']}, SGD, "
        f"{meta['steps']} steps, {meta['loader']} DataLoader, 1 thread; median of {meta['reps']} interleaved reps",
        "",
        head,
        unit,
    ]
    for r in rows:
        line = (
            f"{r['contender']:<14} {r['process']:<10} {r['median_total_s']:>7.3f} {r['median_step_us']:>8.1f}"
        )
        for _name, _u, width, key, fmt in cols:
            if r["contender"] == "plain":
                cell = "-" if key else ""
            elif key is None:
                cell = f"({r['overhead_min_us']:.0f}..{r['overhead_max_us']:.0f})"
            else:
                cell = format(r[key], fmt)
            line += f" {cell:>{width}}"
        lines.append(line)
    if rats:
        lines.append("")
        for q in rats:
            verdict = "meets" if q["meets_target"] else "MISSES"
            lines.append(
                f"stepstone/Lightning ({q['variant']}): {q['ratio']:.3f} = {q['stepstone_us_per_step']:.1f} / "
                f"{q['lightning_us_per_step']:.1f} us/step -> {verdict} the target <= {q['target']} "
                f"(steady {q['steady_ratio']:.3f}, cpu {q['cpu_ratio']:.3f}, best-of {q['best_ratio']:.3f})"
            )
    lines += [
        "",
        "overhead: (framework time - time of the plain loop run next to it, same process) / steps, median over",
        "  reps, with the smallest and largest; time = perf_counter around Trainer() + fit (the plain loop: around",
        "  the loop). steady: the same between the first and the last training step (no setup/teardown).",
        "  cpu: the same in process CPU time (blind to time descheduled by other load). best-of: fastest framework",
        "  run - fastest plain run. fixed: setup + teardown against the plain loop. The verdict uses `overhead`.",
    ]
    return "\n".join(lines)


def _check_same_work(measurements: list[dict[str, Any]], steps: int) -> list[str]:
    by_id = {m["id"]: m for m in measurements}
    problems = []
    for m in measurements:
        where = f"{m['contender']} ({m['process']} process, rep {m['rep']})"
        if m["global_step"] != steps:
            problems.append(f"{where} ran {m['global_step']} steps, not {steps}")
        if "paired_with" in m:
            ref = by_id[m["paired_with"]]["checksum"]
            if abs(m["checksum"] - ref) > 1e-4 * max(1.0, abs(ref)):
                problems.append(
                    f"{where} ended with other weights than the plain loop "
                    f"(checksum {m['checksum']:.6f} vs {ref:.6f}): the contenders did not do the same work"
                )
    return problems


# --- profiling ---------------------------------------------------------------------------------------------
# Callees that are the workload itself (what the plain loop runs too): their time is not stepstone's overhead.
_WORKLOAD_FILES = (
    f"torch{os.sep}optim{os.sep}",  # optimizer.step / zero_grad
    f"torch{os.sep}_compile.py",  # the dynamo-disable wrapper around optimizer.zero_grad
    f"torch{os.sep}_dynamo{os.sep}",
    f"torch{os.sep}utils{os.sep}data{os.sep}",  # the DataLoader
    f"torch{os.sep}autograd{os.sep}",  # backward
    f"torch{os.sep}_tensor.py",  # Tensor.backward
    str(HERE) + os.sep,  # the benchmark's training_step
)


def _is_workload(filename: str) -> bool:
    return any(part in filename for part in _WORKLOAD_FILES)


def profile_stepstone(loader: Any, steps: int, top: int) -> str:
    """cProfile one stepstone run per variant and rank stepstone's functions by the overhead they cause.

    A function's overhead = its own time + the time of what it calls outside stepstone, except the workload
    (training_step, backward, the optimizer, the DataLoader), whose time the plain loop spends as well.
    Summed over stepstone's functions it is stepstone's whole overhead, as inflated by the profiler.
    """
    import cProfile
    import pstats

    import stepstone as L

    pkg = str(Path(L.__file__).resolve().parent) + os.sep
    out = []
    for contender in ("stepstone", "stepstone+log"):
        profiler = cProfile.Profile()
        profiler.enable()
        start = time.perf_counter()
        run_contender(L, contender, loader, steps)
        total = time.perf_counter() - start
        profiler.disable()
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        ours = {key for key in stats if key[0].startswith(pkg)}
        overhead: dict[tuple[str, int, str], float] = {}
        external: dict[tuple[str, int, str], float] = {}
        for key, (_cc, _nc, tottime, _cum, callers) in stats.items():
            if key in ours:
                overhead[key] = overhead.get(key, 0.0) + tottime
                continue
            if _is_workload(key[0]):
                continue
            # A helper may run workload (builtins.next -> DataLoader) or stepstone code (a torch.enable_grad()
            # decorator around a stepstone closure) inside: leave that share out, it is counted elsewhere.
            inside = sum(
                w_callers[key][3]
                for w, (*_, w_callers) in stats.items()
                if key in w_callers and (w in ours or _is_workload(w[0]))
            )
            share = max(0.0, 1.0 - inside / _cum) if _cum > 0 else 1.0
            for caller, (_ccc, _cnc, _ctt, cum_from_caller) in callers.items():
                if caller in ours:
                    overhead[caller] = overhead.get(caller, 0.0) + cum_from_caller * share
                    external[key] = external.get(key, 0.0) + cum_from_caller * share
        whole = sum(overhead.values())
        rows = sorted(overhead.items(), key=lambda kv: kv[1], reverse=True)
        out.append(
            f"cProfile of {contender}, {steps} steps: {total / steps * 1e6:.0f} us/step under the profiler, of which "
            f"{whole / steps * 1e6:.0f} us/step stepstone overhead (the profiler inflates small calls ~2-3x)"
        )
        out.append(
            f"  {'ovh us/step':>11} {'cum us/step':>11} {'calls/step':>10}  stepstone function (src/stepstone/...)"
        )
        for key, spent in rows[:top]:
            filename, line, func = key
            _cc, ncalls, _tt, cumtime, _callers = stats[key]
            out.append(
                f"  {spent / steps * 1e6:>11.1f} {cumtime / steps * 1e6:>11.1f} {ncalls / steps:>10.2f}  "
                f"{filename[len(pkg) :]}:{line}({func})"
            )
        out.append("  non-stepstone code called by stepstone (not the workload), by time:")
        for key, spent in sorted(external.items(), key=lambda kv: kv[1], reverse=True)[: max(top // 3, 5)]:
            filename, line, func = key
            where = func if filename == "~" else f"{Path(filename).name}:{line}({func})"
            out.append(f"  {spent / steps * 1e6:>11.1f} {'':>11} {stats[key][1] / steps:>10.2f}  {where}")
        out.append("")
    return "\n".join(out)


# --- main --------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per run (default 2000)")
    parser.add_argument(
        "--reps", type=int, default=7, help="interleaved repetitions, median reported (default 7)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--warmup-steps", type=int, default=100, help="length of the warm-up run of each contender"
    )
    parser.add_argument("--loader", choices=LOADERS, default="batched", help="data path (default: batched)")
    parser.add_argument("--no-lightning", action="store_true", help="skip Lightning (no venv, no subprocess)")
    parser.add_argument(
        "--lightning-venv",
        type=Path,
        default=DEFAULT_LIGHTNING_VENV,
        help="venv for Lightning (created if needed)",
    )
    parser.add_argument(
        "--json-out", type=Path, help="also write all measurements and the summary to this file"
    )
    parser.add_argument(
        "--profile", action="store_true", help="then cProfile stepstone and print its hot spots"
    )
    parser.add_argument("--profile-top", type=int, default=25, help="hot spots to print (default 25)")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 when the stepstone/Lightning ratio exceeds {TARGET_RATIO}",
    )
    return parser


def _meta(args: argparse.Namespace, worker: LightningWorker | None) -> dict[str, Any]:
    """The run's settings and versions, recorded with its measurements."""
    import torch

    import stepstone as L

    return {
        "bench": "overhead",
        "steps": args.steps,
        "reps": args.reps,
        "batch_size": args.batch_size,
        "loader": args.loader,
        "warmup_steps": args.warmup_steps,
        "trainer_kwargs": TRAINER_KWARGS,
        "torch": torch.__version__,
        "stepstone": L.__version__,
        "lightning": worker.versions["lightning"] if worker else None,
        "lightning_torch": worker.versions["torch"] if worker else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def _measure(
    args: argparse.Namespace, pairs_to_run: list[tuple[str, str]], run_one: RunOne, lightning: bool
) -> list[dict[str, Any]]:
    """Warm every contender up, then run ``args.reps`` interleaved repetitions of each (framework, plain) pair."""
    measurements: list[dict[str, Any]] = []
    _err(f"warm-up: {args.warmup_steps} steps of each contender")
    warmups = [("stepstone", "plain"), *pairs_to_run] + ([("lightning", "plain")] if lightning else [])
    for process, contender in warmups:
        run_one(process, contender, args.warmup_steps)
    for rep in range(args.reps):
        shift = rep % len(pairs_to_run)
        for process, contender in pairs_to_run[shift:] + pairs_to_run[:shift]:
            for line in _paired_runs(rep, process, contender, args.steps, len(measurements), run_one):
                measurements.append(line)
                print(json.dumps(line), flush=True)
    return measurements


def _paired_runs(
    rep: int, process: str, contender: str, steps: int, first_id: int, run_one: RunOne
) -> list[dict[str, Any]]:
    """One framework run and the plain run of its own process next to it, in id order."""
    # Plain first in even reps, second in odd ones, so that drifts of the machine's speed cancel out.
    order = ["plain", contender] if rep % 2 == 0 else [contender, "plain"]
    done = {}
    for name in order:
        done[name] = {
            "bench": "overhead",
            "type": "measurement",
            "id": first_id + len(done),
            "rep": rep,
            "process": process,
            "contender": name,
            "steps": steps,
            **run_one(process, name, steps),
        }
    plain_run, framework_run = done["plain"], done[contender]
    framework_run["paired_with"] = plain_run["id"]
    framework_run["overhead_us_per_step"] = (framework_run["total_s"] - plain_run["total_s"]) / steps * 1e6
    plain_run["paired_for"] = contender
    return sorted(done.values(), key=lambda m: m["id"])


def _report(
    args: argparse.Namespace, measurements: list[dict[str, Any]], meta: dict[str, Any], loader: Any
) -> int:
    """Print the summary (and the profile when asked), write the JSON file; the exit status."""
    rows = summarise(measurements, args.steps)
    rats = ratios(rows)
    for row in [*rows, *rats]:
        print(json.dumps(row))
    print()
    print(format_table(rows, rats, meta))
    problems = _check_same_work(measurements, args.steps)
    for problem in problems:
        print(f"WARNING: {problem}")

    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "meta": meta,
            "measurements": measurements,
            "summary": rows,
            "ratios": rats,
            "problems": problems,
        }
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
        _err(f"wrote {args.json_out}")

    if args.profile:
        print()
        print(profile_stepstone(loader, args.steps, args.profile_top))

    if problems:
        return 1
    if args.check and rats and not all(q["meets_target"] for q in rats):
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if args.reps < 5:
        _err(f"note: --reps {args.reps} is below 5; medians of so few runs are noisy")

    setup_process()
    import torch

    import stepstone as L

    quiet_loggers()
    if torch.__version__.split("+")[0] != TORCH_VERSION:
        _err(f"note: this process runs torch {torch.__version__}, Lightning's venv runs {TORCH_VERSION}")

    loader = make_loader(args.steps, args.batch_size, args.loader)
    worker: LightningWorker | None = None
    if not args.no_lightning:
        python = ensure_lightning_venv(args.lightning_venv)
        worker = LightningWorker(python, args.steps, args.batch_size, args.loader)
    # The framework contenders; each runs next to a plain loop of its own process.
    pairs_to_run: list[tuple[str, str]] = [("stepstone", c) for c in STEPSTONE_CONTENDERS[1:]]
    if worker is not None:
        pairs_to_run += [("lightning", c) for c in LIGHTNING_CONTENDERS[1:]]

    def run_one(process: str, contender: str, steps: int) -> dict[str, Any]:
        if process == "lightning":
            assert worker is not None
            return worker.run(contender, steps)
        return run_contender(L, contender, loader, steps)

    meta = _meta(args, worker)
    try:
        measurements = _measure(args, pairs_to_run, run_one, lightning=worker is not None)
    finally:
        if worker is not None:
            worker.close()
    return _report(args, measurements, meta, loader)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
