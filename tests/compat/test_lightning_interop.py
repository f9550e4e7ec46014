"""Checkpoints cross between Lightning 2.6 and stepstone in both directions (Lightning is a test-only dependency)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as PL
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as PLModelCheckpoint

import stepstone as L
from scripted import loader
from stepstone.callbacks import ModelCheckpoint


def _step(module: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    loss = torch.nn.functional.mse_loss(module.layer(x), y)
    module.log("train_loss", loss)
    return loss


class PLModel(PL.LightningModule):
    def __init__(self, width: int = 4, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return _step(self, batch)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}


class SSModel(L.LightningModule):
    def __init__(self, width: int = 4, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return _step(self, batch)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}


def _quiet(**kwargs: Any) -> dict[str, Any]:
    return {"enable_progress_bar": False, "enable_model_summary": False, "logger": False, **kwargs}


@pytest.fixture(autouse=True)
def _silence_lightning() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_lightning_checkpoint_loads_and_resumes_in_stepstone(tmp_path: Path) -> None:
    pl_trainer = PL.Trainer(
        max_epochs=2, default_root_dir=tmp_path, callbacks=[PLModelCheckpoint(dirpath=tmp_path)], **_quiet()
    )
    pl_model = PLModel(width=4, lr=0.05)
    pl_trainer.fit(pl_model, loader())
    path = tmp_path / "epoch=1-step=8.ckpt"
    assert path.exists()

    loaded = SSModel.load_from_checkpoint(path)
    assert loaded.hparams == {"width": 4, "lr": 0.05}
    assert torch.equal(loaded.layer.weight, pl_model.layer.weight)

    ss_trainer = L.Trainer(
        max_epochs=3,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ss")],
        **_quiet(),
    )
    ss_trainer.fit(SSModel(), loader(), ckpt_path=path)
    assert (ss_trainer.current_epoch, ss_trainer.global_step) == (3, 12)
    # the scheduler continued from Lightning's state: lr 0.05 halved once per epoch, three epochs
    assert ss_trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 / 8)


def test_stepstone_checkpoint_loads_and_resumes_in_lightning(tmp_path: Path) -> None:
    ss_trainer = L.Trainer(
        max_epochs=2, default_root_dir=tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path)], **_quiet()
    )
    ss_model = SSModel(width=4, lr=0.05)
    ss_trainer.fit(ss_model, loader())
    path = tmp_path / "epoch=1-step=8.ckpt"

    loaded = PLModel.load_from_checkpoint(path)
    assert dict(loaded.hparams) == {"width": 4, "lr": 0.05}
    assert torch.equal(loaded.layer.weight, ss_model.layer.weight)

    pl_trainer = PL.Trainer(
        max_epochs=3,
        default_root_dir=tmp_path,
        callbacks=[PLModelCheckpoint(dirpath=tmp_path / "pl")],
        **_quiet(),
    )
    pl_trainer.fit(PLModel(), loader(), ckpt_path=path)
    assert (pl_trainer.current_epoch, pl_trainer.global_step) == (3, 12)
    assert pl_trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 / 8)


def test_mid_epoch_stepstone_checkpoint_resumes_at_same_batch_in_lightning(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1)
    L.Trainer(max_epochs=2, default_root_dir=tmp_path, callbacks=[cb], **_quiet()).fit(SSModel(), loader())
    path = tmp_path / "epoch=1-step=6.ckpt"
    seen: list[tuple[int, int]] = []

    class Recording(PLModel):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            seen.append((self.current_epoch, batch_idx))

    PL.Trainer(max_epochs=2, default_root_dir=tmp_path, **_quiet()).fit(Recording(), loader(), ckpt_path=path)
    assert seen == [(1, 2), (1, 3)]
