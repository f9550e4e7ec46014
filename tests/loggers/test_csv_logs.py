"""CSVLogger: folder layout, metrics.csv contents, hparams.yaml round trip and safe writes."""

from __future__ import annotations

import csv
import io
import os
import pickle
import re
import uuid
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
import yaml

from stepstone.errors import MisconfigurationException
from stepstone.loggers import CSVLogger


class _AttributeDict(dict):
    """Stands in for stepstone's AttributeDict: a dict subclass with attribute access."""

    def __getattr__(self, key: str) -> Any:
        return self[key]


def _read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_version_is_next_free_integer_and_nothing_is_created_before_a_write(tmp_path: Path) -> None:
    fresh = CSVLogger(tmp_path)
    assert fresh.version == 0
    assert fresh.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    assert not os.path.exists(fresh.root_dir)

    root = tmp_path / "lightning_logs"
    (root / "version_0").mkdir(parents=True)
    (root / "version_3").mkdir()
    (root / "version_9").write_text("a file, not a version folder")
    (root / "version_x").mkdir()
    (root / "other_12").mkdir()
    assert CSVLogger(tmp_path).version == 4


def test_version_is_fixed_on_first_access(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    assert logger.version == 0
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)
    assert logger.version == 0
    assert CSVLogger(tmp_path).version == 1


def test_int_and_str_versions(tmp_path: Path) -> None:
    assert CSVLogger(tmp_path, version=5).log_dir == os.path.join(
        str(tmp_path), "lightning_logs", "version_5"
    )
    assert CSVLogger(tmp_path, name="exp", version="run_a").log_dir == os.path.join(
        str(tmp_path), "exp", "run_a"
    )


@pytest.mark.parametrize("name", ["", None])
def test_empty_name_puts_versions_directly_in_save_dir(tmp_path: Path, name: str | None) -> None:
    (tmp_path / "version_0").mkdir()
    logger = CSVLogger(tmp_path, name=name)
    assert logger.name == ""
    assert logger.root_dir == str(tmp_path)
    assert logger.save_dir == str(tmp_path)
    assert logger.log_dir == os.path.join(str(tmp_path), "version_1")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    assert (tmp_path / "version_1" / "metrics.csv").is_file()


def test_metrics_csv_gets_the_union_of_columns_when_new_keys_appear(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="exp")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    path = os.path.join(logger.log_dir, "metrics.csv")
    assert _read_csv(path) == (["loss", "step"], [{"loss": "1.0", "step": "0"}])

    logger.log_metrics({"loss": 0.5, "acc": 0.75}, step=1)
    logger.save()
    logger.log_metrics({"loss": 0.25}, step=2)
    logger.finalize("success")

    header, rows = _read_csv(path)
    assert header == ["acc", "loss", "step"]
    assert rows == [
        {"acc": "", "loss": "1.0", "step": "0"},
        {"acc": "0.75", "loss": "0.5", "step": "1"},
        {"acc": "", "loss": "0.25", "step": "2"},
    ]
    with open(path) as handle:
        assert handle.read().count("acc,loss,step") == 1


def test_rows_are_buffered_until_the_step_advances_flush_logs_every_n_steps(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    path = os.path.join(logger.log_dir, "metrics.csv")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_metrics({"loss": 1.0}, step=1)
    assert not os.path.exists(path)
    logger.log_metrics({"loss": 1.0}, step=2)
    assert len(_read_csv(path)[1]) == 3
    logger.log_metrics({"loss": 1.0}, step=3)
    assert len(_read_csv(path)[1]) == 3
    logger.finalize("failed")
    assert [row["step"] for row in _read_csv(path)[1]] == ["0", "1", "2", "3"]


def test_prefix_tensors_and_default_step(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": torch.tensor(0.25)})
    logger.log_metrics({"loss": torch.tensor(0.5)})
    logger.finalize("success")
    header, rows = _read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    assert header == ["step", "train-loss"]
    assert rows == [{"step": "0", "train-loss": "0.25"}, {"step": "1", "train-loss": "0.5"}]


def test_hparams_yaml_round_trips_plain_types(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(
        Namespace(
            lr=0.1,
            layers=(64, 32),
            opt=_AttributeDict(name="adam", betas=(0.9, 0.999)),
            weight=torch.tensor([1.0, 2.0]),
            scale=torch.tensor(3.5),
            path=Path("/data/x"),
            dtype=torch.float16,
            nothing=None,
        )
    )
    logger.log_hyperparams({"batch_size": 8})
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as handle:
        loaded = yaml.safe_load(handle)
    assert loaded == {
        "lr": 0.1,
        "layers": [64, 32],
        "opt": {"name": "adam", "betas": [0.9, 0.999]},
        "weight": [1.0, 2.0],
        "scale": 3.5,
        "path": "/data/x",
        "dtype": "torch.float16",
        "nothing": None,
        "batch_size": 8,
    }
    logger.finalize("success")


def test_hparams_containers_are_converted_recursively(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(
        {
            "schedule": [torch.tensor(1.0), Path("ckpt"), (1, 2), {"gamma": torch.tensor([0.5])}],
            "paths": np.array([Path("a"), Path("b")], dtype=object),
            "count": np.int64(3),
        }
    )
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as handle:
        assert yaml.safe_load(handle) == {
            "schedule": [1.0, "ckpt", [1, 2], {"gamma": [0.5]}],
            "paths": ["a", "b"],
            "count": 3,
        }


def test_hparams_without_a_plain_form_are_skipped_with_a_warning(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    with pytest.warns(UserWarning, match="'fn'"):
        logger.log_hyperparams({"lr": 0.1, "fn": lambda x: x})
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as handle:
        assert yaml.safe_load(handle) == {"lr": 0.1}


def test_hparams_of_another_type_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="params="):
        CSVLogger(tmp_path).log_hyperparams([("lr", 0.1)])  # type: ignore[arg-type]


def test_rewrites_are_atomic_and_leave_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    path = os.path.join(logger.log_dir, "metrics.csv")
    before = Path(path).read_text()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    logger.log_metrics({"loss": 0.5, "acc": 1.0}, step=1)  # a new column forces a full rewrite
    with pytest.raises(OSError, match="disk full"):
        logger.save()
    assert Path(path).read_text() == before
    assert sorted(os.listdir(logger.log_dir)) == ["metrics.csv"]

    monkeypatch.undo()
    logger.save()
    assert [row["step"] for row in _read_csv(path)[1]] == ["0", "1"]
    assert sorted(os.listdir(logger.log_dir)) == ["metrics.csv"]


def test_existing_metrics_file_is_replaced_only_when_new_metrics_are_saved(tmp_path: Path) -> None:
    old = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    old.parent.mkdir(parents=True)
    old.write_text("loss,step\n9.0,0\n")
    logger = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="replaced"):
        logger.log_metrics({"loss": 1.0}, step=0)
    assert old.read_text() == "loss,step\n9.0,0\n"
    logger.finalize("success")
    assert _read_csv(str(old))[1] == [{"loss": "1.0", "step": "0"}]


def test_pickled_logger_drops_buffered_rows_but_keeps_its_version(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"loss": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))
    assert copy.version == logger.version
    assert copy._experiment is None
    logger.finalize("success")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"flush_logs_every_n_steps": 0}, "flush_logs_every_n_steps=0"),
        ({"flush_logs_every_n_steps": 2.5}, "flush_logs_every_n_steps=2.5"),
        ({"version": -1}, "version=-1"),
        ({"version": True}, "version=True"),
        ({"version": "a/b"}, "version='a/b'"),
        ({"name": 3}, "name=3"),
        ({"prefix": None}, "prefix=None"),
    ],
)
def test_invalid_arguments_are_named_in_the_error(
    tmp_path: Path, kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(MisconfigurationException, match=re.escape(argument)):
        CSVLogger(tmp_path, **kwargs)


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh ``memory://`` folder, removed afterwards (the memory filesystem is global to the process)."""
    fs = fsspec.filesystem("memory")
    root = f"/csv_logs_{uuid.uuid4().hex}"
    yield f"memory://{root}"
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_url_save_dir_writes_through_fsspec(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    CSVLogger(memory_root).save()  # version_0 exists from the first save on, as on a local folder
    logger = CSVLogger(memory_root, flush_logs_every_n_steps=1)
    assert logger.version == 1
    assert logger.log_dir == f"{memory_root}/lightning_logs/version_1"
    logger.log_hyperparams({"lr": 0.1, "layers": [2, 3]})
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_metrics({"a": 2.0}, step=1)  # appended (an object store rewrites the whole object)
    logger.log_metrics({"a": 3.0, "b": torch.tensor(4.0)}, step=2)  # a new column rewrites the header
    logger.finalize("success")
    folder = memory_root[len("memory://") :] + "/lightning_logs/version_1"
    rows = list(csv.DictReader(io.StringIO(fs.cat_file(f"{folder}/metrics.csv").decode())))
    assert rows == [
        {"a": "1.0", "b": "", "step": "0"},
        {"a": "2.0", "b": "", "step": "1"},
        {"a": "3.0", "b": "4.0", "step": "2"},
    ]
    assert yaml.safe_load(fs.cat_file(f"{folder}/hparams.yaml")) == {"lr": 0.1, "layers": [2, 3]}


def test_file_url_save_dir_is_the_local_folder(tmp_path: Path) -> None:
    logger = CSVLogger(f"file://{tmp_path}", flush_logs_every_n_steps=1)
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    assert logger.log_dir == f"file://{tmp_path}/lightning_logs/version_0"
    assert _read_csv(str(tmp_path / "lightning_logs" / "version_0" / "metrics.csv"))[1] == [
        {"a": "1.0", "step": "0"}
    ]


@pytest.mark.parametrize(
    ("hparams", "fn", "log_metrics"),
    [
        ("none", "fit", True),  # no save_hyperparameters(): Lightning writes no hparams.yaml
        ("none", "validate", False),  # ...but the version folder exists, even without a metric
        ("module", "fit", False),
        ("module_no_logger", "test", True),
        ("datamodule", "validate", False),
        ("module", "predict", False),  # predict logs the hyperparameters too
    ],
)
def test_run_leaves_the_files_lightning_leaves(
    tmp_path: Path, hparams: str, fn: str, log_metrics: bool
) -> None:
    from both_frameworks import logger_files

    def files(name: str) -> list[str]:
        return logger_files(name, "csv", hparams, fn, log_metrics, tmp_path / name)

    assert files("stepstone") == files("lightning")


def test_metrics_file_is_written_through_the_engine_commit_with_a_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stepstone.checkpoint import commit

    synced: list[str] = []
    fsync_dir = commit.fsync_dir
    monkeypatch.setattr(commit, "fsync_dir", lambda d: (synced.append(os.path.abspath(d)), fsync_dir(d))[1])
    logger = CSVLogger(tmp_path, name="run", version=0)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    assert os.path.abspath(logger.log_dir) in synced  # the rename of metrics.csv is durable
    assert [f for f in os.listdir(logger.log_dir) if f.startswith(".")] == []  # no temporary left
    with open(os.path.join(logger.log_dir, "metrics.csv"), encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == [{"loss": "1.0", "step": "0"}]
