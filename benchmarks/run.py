"""Run stepstone's benchmarks: every ``benchmarks/bench_*.py``, or the ones named.

    python benchmarks/run.py                      # all benchmarks, default options
    python benchmarks/run.py overhead             # just bench_overhead.py
    python benchmarks/run.py overhead --reps 9    # options after the names go to each named benchmark
    python benchmarks/run.py --list               # the benchmarks found, with their one-line summary

(``python3 dev.py bench ...`` runs this with the project's venv.)

A benchmark is a file ``benchmarks/bench_NAME.py`` that defines ``main(argv: list[str]) -> int``; it is named
on the command line as ``NAME`` (``bench_NAME`` and ``bench_NAME.py`` work too). Its module docstring's first
line is its summary. Files starting with ``_`` are helpers, not benchmarks. Each benchmark prints its own
table and JSON lines; this runner exits non-zero when any of them failed or returned non-zero.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, Path]:
    """``{NAME: path}`` for every ``bench_NAME.py`` beside this file, sorted by name."""
    return {p.stem[len("bench_") :]: p for p in sorted(HERE.glob("bench_*.py"))}


def load(path: Path) -> ModuleType:
    """Import a benchmark file as a module (with ``benchmarks/`` on ``sys.path`` for its helpers)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise ImportError(f"{path.name} defines no main(argv) -> int")
    return module


def _summary(path: Path) -> str:
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _normalise(name: str) -> str:
    name = name.removesuffix(".py")
    return name.removeprefix("bench_")


def main(argv: list[str]) -> int:
    found = discover()
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] == "--list":
        _print_list(found)
        return 0
    names: list[str] = []
    rest = list(argv)
    while rest and not rest[0].startswith("-"):
        names.append(_normalise(rest.pop(0)))
    selected = _select(found, names)
    if selected is None:
        return 2
    failed = [name for name in selected if _run_one(name, found[name], rest) != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _print_list(found: dict[str, Path]) -> None:
    """One line per benchmark: its name and the first line of its docstring."""
    width = max((len(n) for n in found), default=0)
    for name, path in found.items():
        print(f"{name:<{width}}  {_summary(path)}")


def _select(found: dict[str, Path], names: list[str]) -> list[str] | None:
    """The benchmarks to run: ``names``, or all when none is named; None (after saying why) when none can run."""
    unknown = [n for n in names if n not in found]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(found) or 'none'}",
            file=sys.stderr,
        )
        return None
    selected = names or list(found)
    if not selected:
        print("no benchmarks/bench_*.py found", file=sys.stderr)
        return None
    return selected


def _run_one(name: str, path: Path, args: list[str]) -> int:
    """Run one benchmark's ``main(args)``; its exit status (an exception counts as 1, after its traceback)."""
    print(f"=== benchmark: {name} ===", flush=True)
    started = time.perf_counter()
    try:
        rc = int(load(path).main(list(args)) or 0)
    except SystemExit as exc:  # argparse errors, --help
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        traceback.print_exc()
        rc = 1
    print(
        f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - started:.1f} s ==="
    )
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
