"""``Trainer(default_root_dir=<fsspec URL>)``: logs and checkpoints land where Lightning puts them locally."""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger as PLCSVLogger

from both_frameworks import data, framework, logging_module_class, quiet


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh ``memory://`` folder, removed afterwards (the memory filesystem is global to the process)."""
    fs = fsspec.filesystem("memory")
    root = f"/url_root_{uuid.uuid4().hex}"
    yield f"memory://{root}"
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _fit(name: str, root: str, **trainer_args: Any) -> Any:
    pl, _ = framework(name)

    Model = logging_module_class(name)

    trainer = pl.Trainer(
        default_root_dir=root,
        max_epochs=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_args,
    )
    with quiet():
        trainer.fit(Model(), data(3), data(2, seed=1))
    return trainer


def _layout(root: str) -> dict[str, Any]:
    """Every file under ``root`` by relative path: parsed YAML, CSV header and steps, or just its presence."""
    fs, base = fsspec.core.url_to_fs(root)
    found: dict[str, Any] = {}
    for path in fs.find(base):
        rel = os.path.relpath(path, base)
        if rel.endswith(".yaml"):
            found[rel] = yaml.safe_load(fs.cat_file(path))
        elif rel.endswith(".csv"):
            rows = list(csv.DictReader(io.StringIO(fs.cat_file(path).decode())))
            found[rel] = (sorted(rows[0]), [(row["epoch"], row["step"]) for row in rows])
        else:
            found[rel] = "file"
    return found


def test_memory_root_fit_leaves_lightnings_local_layout(tmp_path: Path, memory_root: str) -> None:
    # Lightning's default logger is TensorBoard when installed; stepstone's is the CSVLogger, so the oracle
    # runs with a CSVLogger under the same root.
    local = str(tmp_path / "lightning")
    oracle = _fit("lightning", local, logger=PLCSVLogger(local), accelerator="cpu")
    ours = _fit("stepstone", memory_root)

    assert _layout(memory_root) == _layout(local)
    assert ours.log_dir == f"{memory_root}/lightning_logs/version_0"
    assert ours.default_root_dir == memory_root
    callback = ours.checkpoint_callback
    assert callback.dirpath == f"{memory_root}/lightning_logs/version_0/checkpoints"
    assert callback.best_model_path == callback.dirpath + "/epoch=1-step=6.ckpt"
    assert os.path.relpath(callback.best_model_path, memory_root) == os.path.relpath(
        oracle.checkpoint_callback.best_model_path, local
    )


def test_memory_root_second_run_takes_the_next_version_and_resumes_from_the_url(memory_root: str) -> None:
    first = _fit("stepstone", memory_root)
    best = first.checkpoint_callback.best_model_path
    second = _fit("stepstone", memory_root, max_steps=8)
    assert second.log_dir == f"{memory_root}/lightning_logs/version_1"

    pl, _ = framework("stepstone")
    resumed = pl.Trainer(
        default_root_dir=memory_root, max_epochs=3, enable_progress_bar=False, num_sanity_val_steps=0
    )
    model = type(first.lightning_module)()
    with quiet():
        resumed.fit(model, data(3), data(2, seed=1), ckpt_path=best)
    assert (resumed.global_step, resumed.current_epoch) == (9, 3)
    assert resumed.log_dir == f"{memory_root}/lightning_logs/version_2"


def test_file_url_root_is_the_local_folder(tmp_path: Path) -> None:
    trainer = _fit("stepstone", f"file://{tmp_path}")
    assert trainer.log_dir == f"file://{tmp_path}/lightning_logs/version_0"
    assert trainer.checkpoint_callback.best_model_path == str(
        tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=1-step=6.ckpt"
    )
    assert sorted(_layout(str(tmp_path))) == [
        "lightning_logs/version_0/checkpoints/epoch=1-step=6.ckpt",
        "lightning_logs/version_0/hparams.yaml",
        "lightning_logs/version_0/metrics.csv",
    ]


@pytest.mark.parametrize("name", ["lightning", "stepstone"])
def test_second_run_into_a_url_checkpoint_folder_warns_like_lightning(name: str, memory_root: str) -> None:
    pl, _ = framework(name)
    first = _fit(name, memory_root, logger=False)
    assert first.checkpoint_callback.dirpath == f"{memory_root}/checkpoints"
    trainer = pl.Trainer(
        default_root_dir=memory_root,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with pytest.warns(UserWarning, match=r"exists and is not empty"):
        trainer.fit(type(first.lightning_module)(), data(3), data(2, seed=1))
