"""hparams.yaml: stepstone's save/load_hparams_from_yaml against Lightning 2.6.6's, side by side."""

from __future__ import annotations

import enum
import sys
import types
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.core import saving as pl_saving
from lightning.pytorch.loggers import CSVLogger as PLCSVLogger

from both_frameworks import FRAMEWORKS, data, framework, quiet
from stepstone.core import saving
from stepstone.core.hparams import AttributeDict
from stepstone.loggers import CSVLogger as SSCSVLogger


class Color(enum.Enum):
    RED = 1


PLAIN = {
    "lr": 0.1,
    "name": "adam",
    "layers": [64, 32],
    "opt": {"b": 2, "a": None},
    "flag": True,
    "color": Color.RED,
}
SAVERS = {"lightning": pl_saving.save_hparams_to_yaml, "stepstone": saving.save_hparams_to_yaml}
LOADERS = {"lightning": pl_saving.load_hparams_from_yaml, "stepstone": saving.load_hparams_from_yaml}


@pytest.mark.parametrize("hparams", [PLAIN, Namespace(**PLAIN), AttributeDict(PLAIN)], ids=type)
def test_plain_hparams_are_written_as_lightning_writes_them(tmp_path: Path, hparams: Any) -> None:
    texts = {}
    for name, save in SAVERS.items():
        path = tmp_path / f"{name}.yaml"
        save(path, hparams)
        texts[name] = path.read_text()
    assert texts["stepstone"] == texts["lightning"]
    assert "color: RED" in texts["stepstone"]  # a top-level Enum by name, keys sorted


def test_each_reads_what_the_other_wrote(tmp_path: Path) -> None:
    for writer in FRAMEWORKS:
        path = tmp_path / f"{writer}.yaml"
        SAVERS[writer](path, PLAIN)
        loaded = {reader: load(path) for reader, load in LOADERS.items()}
        assert loaded["stepstone"] == loaded["lightning"] == {**PLAIN, "color": "RED"}


def test_tensors_and_tuples_are_written_plain_and_load_safely(tmp_path: Path) -> None:
    hparams = {"w": torch.tensor([1.0, 2.0]), "s": torch.tensor(3.5), "sizes": (1, 2), "path": Path("/x")}
    path = tmp_path / "h.yaml"
    saving.save_hparams_to_yaml(path, hparams)
    assert yaml.safe_load(path.read_text()) == {"w": [1.0, 2.0], "s": 3.5, "sizes": [1, 2], "path": "/x"}
    assert saving.load_hparams_from_yaml(path) == {"w": [1.0, 2.0], "s": 3.5, "sizes": [1, 2], "path": "/x"}


def test_a_file_that_needs_an_unsafe_loader_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lightning.yaml"
    with quiet():
        pl_saving.save_hparams_to_yaml(path, {"sizes": (1, 2)})  # Lightning writes !!python/tuple
    assert "!!python" in path.read_text()
    with pytest.raises(yaml.YAMLError, match="python/tuple"):
        saving.load_hparams_from_yaml(path)


def test_a_value_without_a_plain_form_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "h.yaml"
    with pytest.warns(UserWarning, match="'fn'"):
        saving.save_hparams_to_yaml(path, {"lr": 0.1, "fn": lambda x: x})
    assert saving.load_hparams_from_yaml(path) == {"lr": 0.1}


def test_a_missing_folder_or_file_is_handled_as_in_lightning(tmp_path: Path) -> None:
    for name in FRAMEWORKS:
        with pytest.raises(RuntimeError, match="Missing folder"):
            SAVERS[name](tmp_path / "nowhere" / "h.yaml", PLAIN)
        with pytest.warns(RuntimeWarning, match="Missing Tags"):
            assert LOADERS[name](tmp_path / "absent.yaml") == {}


def test_hparams_that_are_not_a_mapping_are_refused_naming_the_argument(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="hparams="):
        saving.save_hparams_to_yaml(tmp_path / "h.yaml", [1, 2])  # type: ignore[arg-type]


def test_omegaconf_is_used_only_if_installed_and_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "h.yaml"
    saving.save_hparams_to_yaml(path, {"lr": 0.1})
    monkeypatch.setitem(sys.modules, "omegaconf", None)  # not installed: the flag is ignored
    assert saving.load_hparams_from_yaml(path) == {"lr": 0.1}

    fake = types.ModuleType("omegaconf")
    errors = types.ModuleType("omegaconf.errors")
    errors.UnsupportedValueType = errors.ValidationError = type("E", (Exception,), {})  # type: ignore[attr-defined]
    fake.OmegaConf = types.SimpleNamespace(create=lambda d: ("DictConfig", d))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "omegaconf", fake)
    monkeypatch.setitem(sys.modules, "omegaconf.errors", errors)
    assert saving.load_hparams_from_yaml(path) == ("DictConfig", {"lr": 0.1})
    assert saving.load_hparams_from_yaml(path, use_omegaconf=False) == {"lr": 0.1}


def test_the_csv_logger_writes_the_hparams_file_lightning_writes(tmp_path: Path) -> None:
    texts = {}
    for name in FRAMEWORKS:
        pl, _ = framework(name)

        class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
            def __init__(self, lr: float = 0.1, layers: list[int] | None = None, tag: str = "x") -> None:
                super().__init__()
                self.save_hyperparameters()
                self.layer = torch.nn.Linear(4, 1)

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                return self.layer(batch[0]).sum()

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

        logger = (PLCSVLogger if name == "lightning" else SSCSVLogger)(tmp_path / name)
        trainer = pl.Trainer(
            max_epochs=1,
            logger=logger,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        with quiet():
            trainer.fit(Model(layers=[3, 4]), data(2))
        texts[name] = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert texts["stepstone"] == texts["lightning"]
