"""Every snippet of Lightning's page "Customize checkpointing behavior", as written, with the imports switched.

Only what the page leaves to the reader is added (a model, its data, ``x``); each snippet's own lines are
kept verbatim. The DDP snippet runs under torchrun in test_seed_page_ddp.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import stepstone as L
from stepstone import LightningModule, Trainer

_QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def _data(n: int = 8) -> DataLoader[Any]:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=4)


class MyLightningModule(L.LightningModule):
    """What the page calls ``model`` / ``MyLightningModule(hparams)``."""

    def __init__(self, hparams: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = torch.nn.Linear(4, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.backbone(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        y_hat = self.backbone(x)
        loss = F.cross_entropy(y_hat, y)
        self.log("val_loss", loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader[Any]:
        return _data()

    def val_dataloader(self) -> DataLoader[Any]:
        return _data()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the page uses relative paths ("my/path/", "example.ckpt")


def test_modify_checkpointing_behavior(tmp_path: Path) -> None:
    model = MyLightningModule()
    # --- page ---
    from stepstone.callbacks import ModelCheckpoint

    checkpoint_callback = ModelCheckpoint(dirpath="my/path/", save_top_k=2, monitor="val_loss")
    trainer = Trainer(callbacks=[checkpoint_callback], max_epochs=5, **_QUIET)
    trainer.fit(model)
    checkpoint_callback.best_model_path  # noqa: B018 (the page ends with this expression)
    # --- end ---
    assert os.path.isfile(checkpoint_callback.best_model_path)
    assert os.path.dirname(checkpoint_callback.best_model_path) == str(tmp_path / "my" / "path")
    assert len(list((tmp_path / "my" / "path").glob("*.ckpt"))) == 2


def test_default_trainer_runs_1000_epochs_and_monitors_val_loss(tmp_path: Path) -> None:
    from stepstone.callbacks import ModelCheckpoint

    # --- page: "Init ModelCheckpoint callback, monitoring 'val_loss'" + "Add your callback to the callbacks list"
    checkpoint_callback = ModelCheckpoint(monitor="val_loss")
    trainer = Trainer(callbacks=[checkpoint_callback], **_QUIET, limit_train_batches=1, limit_val_batches=1)
    # --- end ---
    assert trainer.max_epochs == 1000
    trainer.fit(MyLightningModule())
    assert trainer.current_epoch == 1000
    assert checkpoint_callback.dirpath == str(tmp_path / "lightning_logs" / "version_0" / "checkpoints")
    assert os.path.isfile(checkpoint_callback.best_model_path)


def test_any_logged_value_can_be_monitored() -> None:
    x = torch.tensor(1.5)

    # --- page ---
    class LitModel(MyLightningModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("my_metric", x)
            return super().training_step(batch, batch_idx)

    # 'my_metric' is now able to be monitored
    from stepstone.callbacks import ModelCheckpoint

    checkpoint_callback = ModelCheckpoint(monitor="my_metric")
    # --- end ---
    Trainer(callbacks=[checkpoint_callback], max_epochs=2, **_QUIET).fit(LitModel())
    assert checkpoint_callback.best_model_score == pytest.approx(1.5)


def test_top_k_and_last_k_recipes(tmp_path: Path) -> None:
    from stepstone.callbacks import ModelCheckpoint

    # --- page: saves top-K checkpoints based on "val_loss" metric ---
    checkpoint_callback = ModelCheckpoint(
        save_top_k=10,
        monitor="val_loss",
        mode="min",
        dirpath="my/path/",
        filename="sample-mnist-{epoch:02d}-{val_loss:.2f}",
    )
    # --- end ---
    Trainer(callbacks=[checkpoint_callback], max_epochs=3, **_QUIET).fit(MyLightningModule())
    names = sorted(p.name for p in (tmp_path / "my" / "path").glob("*.ckpt"))
    assert [n[:22] for n in names] == [
        "sample-mnist-epoch=00-",
        "sample-mnist-epoch=01-",
        "sample-mnist-epoch=02-",
    ]
    assert all(n.split("val_loss=")[1][:-5].replace(".", "").isdigit() for n in names)

    class LogsGlobalStep(MyLightningModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("global_step", self.global_step)  # "make sure you log it inside your LightningModule"
            return super().training_step(batch, batch_idx)

    # --- page: saves last-K checkpoints based on "global_step" metric ---
    checkpoint_callback = ModelCheckpoint(
        save_top_k=10,
        monitor="global_step",
        mode="max",
        dirpath="my/path/",
        filename="sample-mnist-{epoch:02d}-{global_step}",
    )
    # --- end ---
    with pytest.warns(UserWarning, match="exists and is not empty"):  # the first recipe wrote there already
        Trainer(callbacks=[checkpoint_callback], max_epochs=12, **_QUIET).fit(LogsGlobalStep())
    kept = sorted(p.name for p in (tmp_path / "my" / "path").glob("*global_step*.ckpt"))
    assert len(kept) == 10
    assert "sample-mnist-epoch=11-global_step=23.0.ckpt" in kept
    assert "sample-mnist-epoch=01-global_step=3.0.ckpt" not in kept  # the two oldest were dropped


def test_filename_with_metrics(tmp_path: Path) -> None:
    class Scripted(MyLightningModule):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.tensor([0.5, 0.4, 0.32][self.current_epoch]))

    from stepstone.callbacks import ModelCheckpoint

    # --- page: saves a file like: my/path/sample-mnist-epoch=02-val_loss=0.32.ckpt ---
    checkpoint_callback = ModelCheckpoint(
        dirpath="my/path/",
        filename="sample-mnist-{epoch:02d}-{val_loss:.2f}",
    )
    # --- end ---
    Trainer(callbacks=[checkpoint_callback], max_epochs=3, **_QUIET).fit(Scripted())
    assert (tmp_path / "my/path/sample-mnist-epoch=02-val_loss=0.32.ckpt").is_file()


def test_save_weights_only(tmp_path: Path) -> None:
    from stepstone.callbacks import ModelCheckpoint

    checkpoint_callback = ModelCheckpoint(dirpath="my/path/", save_weights_only=True)
    Trainer(callbacks=[checkpoint_callback], max_epochs=1, **_QUIET).fit(MyLightningModule())
    saved = torch.load(checkpoint_callback.best_model_path, weights_only=True)
    assert "state_dict" in saved and "optimizer_states" not in saved


def test_save_checkpoints_manually() -> None:
    hparams = {"width": 4}
    trainer = Trainer(max_epochs=2, **_QUIET)
    # --- page ---
    model = MyLightningModule(hparams)
    trainer.fit(model)
    trainer.save_checkpoint("example.ckpt")

    # load the checkpoint later as normal
    new_model = MyLightningModule.load_from_checkpoint(checkpoint_path="example.ckpt")
    # --- end ---
    assert new_model.hparams == {"hparams": {"width": 4}}
    assert torch.equal(new_model.backbone.weight, model.backbone.weight)


def test_page_import_paths() -> None:
    from stepstone.callbacks import ModelCheckpoint

    assert L.LightningModule is LightningModule and L.Trainer is Trainer
    assert ModelCheckpoint.CHECKPOINT_NAME_LAST == "last" and ModelCheckpoint.FILE_EXTENSION == ".ckpt"
