#!/usr/bin/env python3
"""Set up a local virtual environment and run the demo, the tests or the benchmarks.

Needs only python3 (3.10+). The venv lives in ``.venv`` next to this file; torch is pinned to the CPU build
2.13.0 for development (the package itself accepts ``torch>=2.6``). Setup is redone only when
``pyproject.toml`` changes.

    python3 dev.py demo        # train a small model with ModelCheckpoint, show the best checkpoint, resume
    python3 dev.py test        # lint, type-check, check module lengths and run the whole test suite
    python3 dev.py bench [..]  # run the benchmarks (see benchmarks/README.md)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".stepstone-setup"
TORCH_PIN = "torch==2.13.0"
# House rule: a module aims under 400 lines and never exceeds 800 (split it by topic instead).
MAX_MODULE_LINES = 800
AIM_MODULE_LINES = 400
CHECKED_FOLDERS = ("src", "tests", "benchmarks")


def _run(*cmd: str | os.PathLike[str], **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def ensure_venv() -> None:
    """Create ``.venv`` and install torch (pinned) and the package with its dev extras, once."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH_PIN.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PY.exists():
        return
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    _run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(PY, "-m", "pip", "install", "--quiet", TORCH_PIN)
    _run(PY, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(wanted)


def module_lengths(root: Path) -> dict[str, int]:
    """The line count of every ``*.py`` under ``root``'s checked folders, by path relative to ``root``.

    Hidden folders (virtual environments such as ``benchmarks/.venv-lightning``, caches) are skipped.
    """
    lengths: dict[str, int] = {}
    for folder in CHECKED_FOLDERS:
        for parent, dirs, files in os.walk(root / folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                path = Path(parent, name)
                with open(path, encoding="utf-8") as handle:
                    lengths[path.relative_to(root).as_posix()] = sum(1 for _ in handle)
    return lengths


def check_module_lengths(root: Path = ROOT) -> int:
    """Fail (1) listing every module over ``MAX_MODULE_LINES`` lines; name src modules over the aim too.

    Returns:
        0 when every module is within the limit, else 1.
    """
    lengths = module_lengths(root)
    over_aim = [f"{p} ({n})" for p, n in lengths.items() if p.startswith("src/") and n > AIM_MODULE_LINES]
    if over_aim:
        print(f"note: src modules over the {AIM_MODULE_LINES}-line aim: {', '.join(over_aim)}")
    too_long = {p: n for p, n in lengths.items() if n > MAX_MODULE_LINES}
    for path, count in too_long.items():
        print(f"{path}: {count} lines (more than {MAX_MODULE_LINES}); split it by topic", file=sys.stderr)
    return 1 if too_long else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "bench", "setup"):
        print(__doc__)
        return 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    try:
        if command == "demo":
            _run(BIN / "stepstone", "demo", *rest)
        elif command == "test":
            _run(BIN / "ruff", "check", "src", "tests", "benchmarks", "dev.py")
            _run(BIN / "ruff", "format", "--check", "src", "tests", "benchmarks", "dev.py")
            _run(BIN / "mypy")
            if check_module_lengths():
                return 1
            _run(PY, "-m", "pytest", "-q", *rest)
        elif command == "bench":
            _run(PY, "benchmarks/run.py", *rest)
    except subprocess.CalledProcessError as err:
        return err.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
