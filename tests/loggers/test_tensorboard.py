"""TensorBoardLogger: readable event files, hparams, deterministic shutdown and the missing-extra error."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import threading
import uuid
from argparse import Namespace
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from stepstone.errors import MisconfigurationException
from stepstone.loggers import TensorBoardLogger

MISSING = "TensorBoardLogger needs the 'tensorboard' package: pip install \"stepstone[tensorboard]\""


def _events(log_dir: str) -> EventAccumulator:
    accumulator = EventAccumulator(log_dir)
    accumulator.Reload()
    return accumulator


def _scalars(log_dir: str, tag: str) -> list[tuple[int, float]]:
    return [(event.step, round(event.value, 6)) for event in _events(log_dir).Scalars(tag)]


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "AsyncWriter" in type(t).__name__]


def test_metrics_are_readable_from_the_event_file(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    logger.log_metrics({"loss": 1.5, "acc": torch.tensor(0.25)}, step=1)
    logger.log_metrics({"loss": 0.5}, step=2)
    logger.finalize("success")
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    assert _scalars(logger.log_dir, "loss") == [(1, 1.5), (2, 0.5)]
    assert _scalars(logger.log_dir, "acc") == [(1, 0.25)]
    assert "hp_metric" not in _events(logger.log_dir).Tags()["scalars"]


def test_finalize_stops_the_writer_thread_and_flushes(tmp_path: Path) -> None:
    threads_before = len(_writer_threads())
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": 1.0}, step=0)
    assert len(_writer_threads()) == threads_before + 1
    logger.finalize("failed")
    assert len(_writer_threads()) == threads_before
    assert _scalars(logger.log_dir, "loss") == [(0, 1.0)]


def test_logging_after_finalize_starts_a_new_writer(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": 1.0}, step=0)
    first = logger.experiment
    logger.finalize("success")
    assert logger.experiment is not first
    logger.log_metrics({"loss": 2.0}, step=1)
    logger.finalize("success")
    assert _scalars(logger.log_dir, "loss") == [(0, 1.0), (1, 2.0)]


def test_hyperparameters_reach_the_hparams_plugin_and_hparams_yaml(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="exp", version="run_a")
    logger.log_hyperparams(
        Namespace(lr=0.1, opt={"name": "adam", "betas": (0.9, 0.99)}, steps=torch.tensor(3))
    )
    logger.finalize("success")

    events = _events(logger.log_dir)
    assert _scalars(logger.log_dir, "hp_metric") == [(0, -1.0)]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.1)
    assert hparams["opt/name"].string_value == "adam"
    assert hparams["opt/betas"].string_value == "(0.9, 0.99)"
    assert hparams["steps"].number_value == 3

    with open(os.path.join(logger.log_dir, "hparams.yaml")) as handle:
        assert yaml.safe_load(handle) == {
            "lr": 0.1,
            "opt": {"name": "adam", "betas": [0.9, 0.99]},
            "steps": 3,
        }


def test_explicit_metrics_with_hyperparameters(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1}, metrics=0.75)
    logger.log_hyperparams({"wd": 0.0}, metrics={"val_acc": 0.5}, step=3)
    logger.finalize("success")
    assert _scalars(logger.log_dir, "hp_metric") == [(0, 0.75)]
    assert _scalars(logger.log_dir, "val_acc") == [(3, 0.5)]
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as handle:
        assert yaml.safe_load(handle) == {"lr": 0.1, "wd": 0.0}


def test_dict_metrics_use_add_scalars_and_their_writers_are_closed(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": {"a": 1.0, "b": 2.0}}, step=0)
    logger.finalize("success")
    sub_dirs = sorted(p.name for p in Path(logger.log_dir).iterdir() if p.is_dir())
    assert sub_dirs == ["train-loss_a", "train-loss_b"]
    assert _scalars(os.path.join(logger.log_dir, "train-loss_a"), "train-loss") == [(0, 1.0)]


def test_unsupported_metric_value_names_the_metric(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ValueError, match="'bad'"):
        logger.log_metrics({"bad": "text"}, step=0)
    logger.finalize("failed")


def test_log_graph(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    off = TensorBoardLogger(tmp_path, version=0)
    off.log_graph(model, torch.zeros(1, 3))
    assert off._experiment is None

    on = TensorBoardLogger(tmp_path, version=1, log_graph=True)
    with pytest.warns(UserWarning, match="example_input_array"):
        on.log_graph(model)
    model.example_input_array = torch.zeros(1, 3)
    on.log_graph(model)
    on.finalize("success")
    assert _events(on.log_dir).Tags()["graph"] is True


def test_version_numbering_sub_dir_and_empty_name(tmp_path: Path) -> None:
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_2").mkdir()
    logger = TensorBoardLogger(tmp_path, name="", sub_dir="fold_1")
    assert logger.version == 3
    assert logger.root_dir == str(tmp_path)
    assert logger.log_dir == os.path.join(str(tmp_path), "version_3", "fold_1")
    assert not os.path.exists(logger.log_dir)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(logger.log_dir))


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"log_graph": "yes"}, "log_graph='yes'"),
        ({"default_hp_metric": 1}, "default_hp_metric=1"),
        ({"version": -2}, "version=-2"),
        ({"log_dir": "x"}, "log_dir"),
    ],
)
def test_invalid_arguments_are_named_in_the_error(
    tmp_path: Path, kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(MisconfigurationException, match=argument):
        TensorBoardLogger(tmp_path, **kwargs)


def test_missing_tensorboard_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ModuleNotFoundError) as info:
        TensorBoardLogger(tmp_path)
    assert str(info.value) == MISSING
    assert info.value.name == "tensorboard"
    assert isinstance(info.value.__cause__, ImportError)


def test_torch_import_error_for_tensorboard_is_translated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("torch.utils.tensorboard"):
            # What torch itself raises when tensorboard is absent: a plain ImportError.
            raise ImportError("TensorBoard logging requires TensorBoard version 1.15 or above")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ModuleNotFoundError, match="stepstone\\[tensorboard\\]"):
        TensorBoardLogger(tmp_path)


def test_importing_the_package_does_not_import_tensorboard() -> None:
    code = (
        "import sys, stepstone.loggers as m; assert m.TensorBoardLogger;"
        "loaded = [n for n in sys.modules if n.startswith(('tensorboard', 'torch.utils.tensorboard'))];"
        "assert not loaded, loaded"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("hparams", "fn", "log_metrics"),
    [
        ("none", "fit", False),  # Lightning writes an event file and hparams.yaml ({}) when the run starts
        ("module_no_logger", "predict", False),
        ("datamodule", "validate", True),
    ],
)
def test_run_leaves_the_files_lightning_leaves(
    tmp_path: Path, hparams: str, fn: str, log_metrics: bool
) -> None:
    from both_frameworks import logger_files

    def files(name: str) -> list[str]:
        return logger_files(name, "tensorboard", hparams, fn, log_metrics, tmp_path / name)

    assert files("stepstone") == files("lightning")


def test_url_save_dir_writes_events_and_hparams_through_fsspec() -> None:
    fs = fsspec.filesystem("memory")
    root = f"/tb_{uuid.uuid4().hex}"
    try:
        first = TensorBoardLogger(f"memory://{root}")
        first.save()  # version_0 is taken from the first save on
        first.finalize("success")
        logger = TensorBoardLogger(f"memory://{root}")
        assert logger.version == 1
        logger.log_hyperparams({"lr": 0.1})
        logger.log_metrics({"a": 1.0}, step=0)
        logger.finalize("success")
        folder = f"{root}/lightning_logs/version_1"
        names = sorted(path.rsplit("/", 1)[-1] for path in fs.find(folder))
        assert names[0].startswith("events.out.tfevents.") and names[1:] == ["hparams.yaml"]
        assert yaml.safe_load(fs.cat_file(f"{folder}/hparams.yaml")) == {"lr": 0.1}
    finally:
        fs.rm(root, recursive=True)
