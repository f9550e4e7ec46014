from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from stepstone.checkpoint import save_file
from stepstone.errors import MisconfigurationException


class Tied(L.LightningModule):
    def __init__(self, double: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = torch.nn.Linear(3, 3, bias=False)
        self.decoder = torch.nn.Linear(3, 3, bias=False)
        self.decoder.weight = self.encoder.weight
        if double:
            self.double()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _save(tmp_path: Path, model: L.LightningModule) -> Path:
    path = tmp_path / "m.ckpt"
    save_file(
        path,
        {"state_dict": model.state_dict(), "hparams_name": "kwargs", "hyper_parameters": dict(model.hparams)},
    )
    return path


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    source = Tied()
    loaded = Tied.load_from_checkpoint(_save(tmp_path, source))
    assert loaded.decoder.weight is loaded.encoder.weight
    assert torch.equal(loaded.encoder.weight, source.encoder.weight)


def test_loaded_tensors_are_taken_without_copy_when_properties_match(tmp_path: Path) -> None:
    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

    source = Plain()
    loaded = Plain.load_from_checkpoint(_save(tmp_path, source))
    assert isinstance(loaded.layer.weight, torch.nn.Parameter) and loaded.layer.weight.requires_grad
    assert torch.equal(loaded.layer.weight, source.layer.weight)
    assert loaded.layer.weight.dtype == torch.float32


def test_module_dtype_wins_when_it_differs(tmp_path: Path) -> None:
    path = _save(tmp_path, Tied())
    loaded = Tied.load_from_checkpoint(path, double=True)
    assert loaded.encoder.weight.dtype == torch.float64


# --- load_from_checkpoint's arguments, as in Lightning 2.6.6 --------------------------------------------


def _classes(framework: str) -> tuple[Any, Any, Any]:
    import lightning

    fw = lightning if framework == "lightning" else L

    class Plain(fw.LightningModule):
        def __init__(self, a: int = 1, b: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 1)

    class Open(fw.LightningModule):
        def __init__(self, a: int = 1, **kwargs: Any) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 1)
            self.extra = kwargs

    class Config(fw.LightningModule):
        def __init__(self, cfg: Any = None, x: int = 0) -> None:
            super().__init__()
            self.save_hyperparameters(cfg)
            self.layer = torch.nn.Linear(2, 1)
            self.x = x

    return Plain, Open, Config


def _file(tmp_path: Path, name: str, **entries: Any) -> Path:
    path = tmp_path / name
    weights = {"layer.weight": torch.ones(1, 2), "layer.bias": torch.zeros(1)}
    # (Lightning reads its version key to migrate a file.)
    torch.save({"state_dict": weights, "pytorch-lightning_version": "2.6.6", **entries}, path)
    return path


@pytest.mark.parametrize("framework", ["lightning", "stepstone"])
def test_keywords_the_class_does_not_take_are_left_out(framework: str, tmp_path: Path) -> None:
    plain, open_, config = _classes(framework)
    path = _file(tmp_path, "m.ckpt", hyper_parameters={"a": 5, "b": 6}, hparams_name="kwargs")
    assert plain.load_from_checkpoint(path, unknown_kw=1).hparams == {"a": 5, "b": 6}
    assert plain.load_from_checkpoint(path, b=9).hparams == {"a": 5, "b": 9}
    kept = open_.load_from_checkpoint(path, z=1)  # **kwargs takes everything
    assert kept.hparams == {"a": 5, "b": 6, "z": 1} and kept.extra == {"b": 6, "z": 1}
    # A single hparams argument (save_hyperparameters(cfg)): keywords override inside it too.
    named = _file(tmp_path, "c.ckpt", hyper_parameters={"lr": 0.5}, hparams_name="cfg")
    loaded = config.load_from_checkpoint(named, x=3, lr=0.1, unknown=2)
    assert loaded.hparams == {"lr": 0.1, "x": 3, "unknown": 2} and loaded.x == 3


@pytest.mark.parametrize("framework", ["lightning", "stepstone"])
def test_hparams_under_the_legacy_keys_are_loaded(framework: str, tmp_path: Path) -> None:
    plain, _, _ = _classes(framework)
    arguments = _file(tmp_path, "a.ckpt", module_arguments={"a": 7, "b": 8})
    assert plain.load_from_checkpoint(arguments).hparams == {"a": 7, "b": 8}
    old = _file(tmp_path, "h.ckpt", hparams={"a": 3})
    assert plain.load_from_checkpoint(old).hparams == {"a": 3, "b": 2}
    # The newest key wins: hparams < module_arguments < hyper_parameters.
    every = _file(
        tmp_path, "e.ckpt", hparams={"a": 3, "b": 4}, module_arguments={"a": 7}, hyper_parameters={"b": 11}
    )
    assert plain.load_from_checkpoint(every).hparams == {"a": 7, "b": 11}


def test_a_legacy_entry_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    plain, _, _ = _classes("stepstone")
    path = _file(tmp_path, "bad.ckpt", module_arguments=[1, 2])
    with pytest.raises(MisconfigurationException, match="'module_arguments' entry is a list"):
        plain.load_from_checkpoint(path)


def test_hparams_file_overrides_the_saved_hyperparameters_and_must_exist(tmp_path: Path) -> None:
    path = _save(tmp_path, Tied())
    (tmp_path / "hparams.yaml").write_text("double: true\n")
    loaded = Tied.load_from_checkpoint(path, hparams_file=tmp_path / "hparams.yaml")
    assert loaded.hparams["double"] is True and loaded.encoder.weight.dtype == torch.float64
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        Tied.load_from_checkpoint(path, hparams_file=tmp_path / "missing.yaml")
