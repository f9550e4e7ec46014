from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import stepstone as L
from stepstone.checkpoint import save_file


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
