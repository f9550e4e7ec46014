"""A checkpoint folder holds nothing but the checkpoints, as under Lightning 2.6.6: code that lists the folder
and loads every file keeps working (the run index is read from the files' trailers, never stored there)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning as PL
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as PLModelCheckpoint

from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint import RunIndex
from stepstone.checkpoint.index import LEGACY_INDEX_NAME

VAL_LOSSES = [3.0, 1.0, 2.0, 0.5, 4.0]


class PLScriptedModel(PL.LightningModule):
    """``ScriptedModel`` for Lightning: the same scripted ``val_loss`` per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", torch.tensor(VAL_LOSSES[min(self.current_epoch, len(VAL_LOSSES) - 1)]))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _options(save_last: bool | str) -> dict[str, Any]:
    return {"monitor": "val_loss", "save_top_k": 2, "save_last": save_last}


def _lightning_files(directory: Path, save_last: bool | str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PL.Trainer(
            default_root_dir=directory.parent,
            callbacks=[PLModelCheckpoint(dirpath=directory, **_options(save_last))],
            max_epochs=len(VAL_LOSSES),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        ).fit(PLScriptedModel(), loader(), loader())
    return sorted(os.listdir(directory))


def _assert_only_loadable_checkpoints(directory: Path) -> None:
    for name in os.listdir(directory):  # what users do: load every file of the folder
        state = torch.load(directory / name, weights_only=True, map_location="cpu")
        assert isinstance(state, dict) and "state_dict" in state, name


@pytest.mark.parametrize("save_last", [True, "link"])
@pytest.mark.parametrize("async_save", [False, True])
def test_the_folder_holds_the_same_files_as_under_lightning(
    tmp_path: Path, save_last: bool | str, async_save: bool
) -> None:
    directory = tmp_path / "stepstone" / "ckpts"
    callback = ModelCheckpoint(dirpath=directory, async_save=async_save, **_options(save_last))
    trainer(directory.parent, [callback], max_epochs=len(VAL_LOSSES)).fit(
        ScriptedModel(VAL_LOSSES), loader(), loader()
    )
    names = sorted(os.listdir(directory))
    assert names == _lightning_files(tmp_path / "lightning" / "ckpts", save_last)
    assert names == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]
    _assert_only_loadable_checkpoints(directory)
    files = [name for name in names if not (directory / name).is_symlink()]  # a last link is an alias
    assert sorted(r.name for r in RunIndex(directory).entries()) == files


def test_a_legacy_index_file_is_ignored_when_resuming(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    (directory).mkdir()
    (directory / LEGACY_INDEX_NAME).write_text(
        '{"format": "stepstone-index", "version": 1, "entries": [{"name": 1}]}'
    )
    options = {"dirpath": directory, "every_n_train_steps": 2, "save_top_k": -1}
    trainer(tmp_path, [ModelCheckpoint(**options)], max_steps=4).fit(ScriptedModel(), loader())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no complaint about the old file
        resumed = trainer(tmp_path, [ModelCheckpoint(**options)], max_steps=6)
        resumed.fit(ScriptedModel(), loader(), ckpt_path="last")
    assert resumed.global_step == 6
    assert sorted(os.listdir(directory)) == [
        LEGACY_INDEX_NAME,  # a user's folder: left alone (``stepstone ckpt prune`` removes it)
        "epoch=0-step=2.ckpt",
        "epoch=0-step=4.ckpt",
        "epoch=1-step=6.ckpt",
    ]
