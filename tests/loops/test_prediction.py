"""The predict loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from models import BoringModel, iterable_loader, loader, make_trainer
from stepstone.errors import MisconfigurationException


def test_predictions_per_batch(tmp_path: Path) -> None:
    model = BoringModel()
    predictions = make_trainer(tmp_path).predict(model, loader(10))
    assert predictions is not None and [p.shape for p in predictions] == [(4, 2), (4, 2), (2, 2)]
    data = torch.cat(list(loader(10)))
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(predictions), model(data))


def test_several_dataloaders_give_a_list_per_loader(tmp_path: Path) -> None:
    calls: list[int] = []

    class Model(BoringModel):
        def predict_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> Any:
            calls.append(dataloader_idx)
            return dataloader_idx

    predictions = make_trainer(tmp_path).predict(Model(), [loader(4), loader(8)])
    assert predictions == [[0], [1, 1]]
    assert calls == [0, 1, 1]


def test_return_predictions_false(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Writer(L.Callback):
        def on_predict_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any
        ) -> None:
            seen.append(outputs.shape)

    predictions = make_trainer(tmp_path, callbacks=[Writer()]).predict(
        BoringModel(), loader(8), return_predictions=False
    )
    assert predictions is None and seen == [(4, 2), (4, 2)]


def test_predict_runs_in_eval_and_inference_mode_and_restores_modes(tmp_path: Path) -> None:
    states: list[tuple[bool, bool]] = []

    class Model(BoringModel):
        def predict_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> Any:
            states.append((self.training, torch.is_inference_mode_enabled()))
            return self(batch)

    model = Model()
    outputs = make_trainer(tmp_path).predict(model, loader(4))
    assert states == [(False, True)] and model.training
    assert outputs is not None and outputs[0].is_inference()
    make_trainer(tmp_path, inference_mode=False).predict(model, loader(4))
    assert states[-1] == (False, False)


def test_limit_predict_batches_and_unsized_data(tmp_path: Path) -> None:
    assert len(make_trainer(tmp_path, limit_predict_batches=2).predict(BoringModel(), loader(16)) or []) == 2
    assert len(make_trainer(tmp_path).predict(BoringModel(), iterable_loader(12)) or []) == 3


def test_predict_needs_data(tmp_path: Path) -> None:
    class NoData(BoringModel):
        predict_dataloader = L.LightningModule.predict_dataloader  # type: ignore[assignment]

    with pytest.raises(MisconfigurationException, match=r"predict\(\) found no data"):
        make_trainer(tmp_path).predict(NoData())


def test_predict_takes_no_optimizer_and_no_step(tmp_path: Path) -> None:
    class NoTraining(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

    trainer = make_trainer(tmp_path)
    assert len(trainer.predict(NoTraining(), loader(4)) or []) == 1
    assert trainer.global_step == 0 and trainer.optimizers == []
