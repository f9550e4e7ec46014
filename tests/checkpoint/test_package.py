"""House rules of the engine package: what it imports, what it exports, how it is documented."""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from pathlib import Path

import stepstone.checkpoint as engine

PACKAGE_DIR = Path(engine.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__")
PUBLIC_API = {
    "save_file",
    "load_file",
    "read_info",
    "verify_file",
    "copy_file",
    "link_file",
    "remove_file",
    "remove_checkpoint",
    "sweep_stale_temps",
    "is_local",
    "CheckpointRecord",
    "RunIndex",
    "CheckpointManager",
    "SaveHandle",
    "SaveQueue",
    "save_file_async",
    "AsyncWriter",
    "HostStaging",
    "Progress",
    "KeepAll",
    "KeepLatest",
    "KeepBest",
    "KeepEveryNSteps",
    "AnyOf",
    "CheckpointKind",
    "FILE",
    "SHARDED_DIRECTORY",
    "kind_of",
    "save_sharded",
    "load_sharded",
    "convert_sharded_to_file",
    "is_sharded_checkpoint",
    "read_sharded_info",
    "verify_sharded",
    "remove_sharded",
}


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_engine_imports_only_torch_fsspec_typing_extensions_stdlib_and_itself() -> None:
    # typing_extensions (for @override) is a dependency of torch itself: the engine needs nothing torch lacks.
    allowed_roots = {"torch", "fsspec", "typing_extensions", "__future__"} | set(sys.stdlib_module_names)
    for path in PACKAGE_DIR.glob("*.py"):
        for module in _imported_modules(path):
            root = module.split(".")[0]
            if root == "stepstone":
                assert module.startswith(("stepstone.checkpoint", "stepstone.errors")), (path.name, module)
            else:
                assert root in allowed_roots, (path.name, module)


def test_public_api_is_complete() -> None:
    assert set(engine.__all__) == PUBLIC_API
    for name in PUBLIC_API:
        assert hasattr(engine, name), name


def test_every_public_symbol_is_documented() -> None:
    for module_name in MODULES:
        module = importlib.import_module(f"stepstone.checkpoint.{module_name}")
        assert module.__doc__, module_name
        for name in getattr(module, "__all__", []):
            symbol = getattr(module, name)
            if inspect.isfunction(symbol) or inspect.isclass(symbol):
                assert symbol.__doc__ and symbol.__doc__.strip(), f"{module_name}.{name}"
            if inspect.isfunction(symbol) and inspect.signature(symbol).parameters:
                assert "Args:" in (symbol.__doc__ or ""), f"{module_name}.{name}"


def test_modules_and_functions_stay_small() -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        source = path.read_text()
        assert source.count("\n") < 400, path.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                if not body:  # a documented protocol method
                    continue
                lines = body[-1].end_lineno - body[0].lineno + 1  # type: ignore[operator]
                assert lines <= 50, f"{path.name}:{node.name} has {lines} lines of code"
