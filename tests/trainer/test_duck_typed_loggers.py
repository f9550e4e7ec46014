"""Trainer(logger=...) duck types its loggers as Lightning does: the same mock logger gets the same calls."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock, Mock

import pytest
from lightning.pytorch.loggers import Logger as PLLogger

from both_frameworks import FRAMEWORKS, data, framework, logging_module_class, quiet
from stepstone.errors import MisconfigurationException
from stepstone.loggers import Logger as SSLogger


def _model_class(name: str) -> type:
    return logging_module_class(name, train_key="loss", val_key="val")


def _fit(name: str, logger: Any, root: Path, **kwargs: Any) -> Any:
    pl, _ = framework(name)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        **kwargs,
    )
    cwd = os.getcwd()
    os.chdir(root)  # a mock's save_dir is a relative path (its __fspath__): keep it under tmp_path
    try:
        with quiet():
            trainer.fit(_model_class(name)(), data(3), data(2, seed=1))
    finally:
        os.chdir(cwd)
    return trainer


def _calls(logger: MagicMock) -> list[tuple[Any, ...]]:
    """The logger's method calls in order, with the metric keys and step of each log_metrics."""
    seen: list[tuple[Any, ...]] = []
    for call_name, args, kwargs in logger.mock_calls:
        if "." in call_name:
            continue  # attribute protocols (save_dir.__fspath__, name.__str__): how each reads the path
        if call_name == "log_metrics":
            metrics = kwargs.get("metrics", args[0] if args else None)
            seen.append((call_name, sorted(metrics), kwargs.get("step", args[1] if len(args) > 1 else None)))
        elif call_name == "log_hyperparams":
            seen.append((call_name, dict(args[0])))
        else:
            seen.append((call_name,))
    return seen


def _plain_path(path: str, root: Path) -> str:
    """A dirpath made comparable: relative to ``root``, mock ids removed."""
    resolved = os.path.relpath(os.path.realpath(os.path.join(root, path)), os.path.realpath(root))
    return re.sub(r"id='\d+'|\d{6,}", "<id>", resolved)


def test_a_logger_mock_gets_the_calls_lightning_makes(tmp_path: Path) -> None:
    seen = {}
    for name in FRAMEWORKS:
        root = tmp_path / name
        root.mkdir()
        logger = MagicMock(spec=PLLogger if name == "lightning" else SSLogger)
        trainer = _fit(name, logger, root)
        seen[name] = (_calls(logger), _plain_path(trainer.checkpoint_callback.dirpath, root))
    calls, dirpath = seen["stepstone"]
    assert calls == seen["lightning"][0]
    assert dirpath == seen["lightning"][1]
    assert calls[:3] == [("log_hyperparams", {"lr": 0.1}), ("log_graph",), ("save",)]
    assert ("log_metrics", ["epoch", "loss"], 0) in calls and calls[-1] == ("finalize",)


def test_a_bare_magicmock_is_an_empty_list_of_loggers_as_in_lightning(tmp_path: Path) -> None:
    dirpaths = {}
    for name in FRAMEWORKS:
        root = tmp_path / name
        root.mkdir()
        logger = MagicMock()  # iterable (MagicMock supports __iter__): Lightning takes it as a list, empty
        trainer = _fit(name, logger, root)
        assert trainer.loggers == []
        assert [c for c in _calls(logger) if c[0] in ("log_metrics", "save")] == []
        dirpaths[name] = _plain_path(trainer.checkpoint_callback.dirpath, root)
        assert _plain_path(trainer.log_dir, root) == "."
    assert dirpaths["stepstone"] == dirpaths["lightning"] == "checkpoints"


class _DuckLogger:
    """A logger that does not subclass any Logger: only the methods and attributes Lightning calls."""

    def __init__(self, save_dir: str) -> None:
        self.save_dir = save_dir
        self.name = "duck"
        self.version = "v1"
        self.calls: list[str] = []
        self.metrics: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append("log_metrics")
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append("log_hyperparams")

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        self.calls.append("log_graph")

    def save(self) -> None:
        self.calls.append("save")

    def finalize(self, status: str) -> None:
        self.calls.append(f"finalize:{status}")

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.calls.append("after_save_checkpoint")


def test_any_object_with_the_logger_methods_is_a_logger(tmp_path: Path) -> None:
    seen = {}
    for name in FRAMEWORKS:
        root = tmp_path / name
        root.mkdir()
        logger = _DuckLogger(str(root / "logs"))
        trainer = _fit(name, logger, root)
        assert trainer.logger is logger
        seen[name] = (
            logger.calls,
            [sorted(m) for m in logger.metrics],
            os.path.relpath(trainer.checkpoint_callback.dirpath, root),
            os.path.relpath(trainer.log_dir, root),
            sorted(os.listdir(trainer.checkpoint_callback.dirpath)),
        )
    assert seen["stepstone"] == seen["lightning"]
    assert seen["stepstone"][2] == os.path.join("logs", "duck", "v1", "checkpoints")
    assert seen["stepstone"][3] == "logs"  # not a CSV/TensorBoard logger: log_dir is its save_dir


@pytest.mark.parametrize("bad", ["csv", object(), [Mock(spec=["log_metrics"])]])
def test_an_object_without_the_logger_methods_is_refused_naming_them(bad: Any) -> None:
    pl, _ = framework("stepstone")
    with pytest.raises(MisconfigurationException, match=r"Trainer\(logger=.*has no .*log_hyperparams"):
        pl.Trainer(logger=bad)
