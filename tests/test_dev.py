"""dev.py's module-length check: it must fail on a module over the limit, so that it cannot silently pass."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, lines: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x = 1\n" * lines)


def test_module_over_the_limit_fails_listing_it_with_its_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = _dev()
    limit = dev.MAX_MODULE_LINES
    _write(tmp_path / "src" / "pkg" / "long.py", limit + 1)
    _write(tmp_path / "tests" / "pkg" / "test_long.py", limit + 7)
    _write(tmp_path / "benchmarks" / "at_limit.py", limit)
    _write(tmp_path / "benchmarks" / ".venv-lightning" / "site.py", limit * 2)  # a venv is not ours
    _write(tmp_path / "docs" / "elsewhere.py", limit * 2)  # outside the checked folders

    assert dev.check_module_lengths(tmp_path) == 1
    err = capsys.readouterr().err
    assert f"src/pkg/long.py: {limit + 1} lines" in err
    assert f"tests/pkg/test_long.py: {limit + 7} lines" in err
    assert "at_limit" not in err and "site.py" not in err and "elsewhere" not in err


def test_modules_within_the_limit_pass_and_src_ones_over_the_aim_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = _dev()
    _write(tmp_path / "src" / "pkg" / "big.py", dev.AIM_MODULE_LINES + 1)
    _write(tmp_path / "tests" / "test_big.py", dev.MAX_MODULE_LINES)

    assert dev.check_module_lengths(tmp_path) == 0
    out = capsys.readouterr().out
    assert f"src/pkg/big.py ({dev.AIM_MODULE_LINES + 1})" in out
    assert "test_big" not in out


def test_this_repository_is_within_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert _dev().check_module_lengths(ROOT) == 0, capsys.readouterr().err
