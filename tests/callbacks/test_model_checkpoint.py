from __future__ import annotations

import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint import CheckpointManager
from stepstone.errors import MisconfigurationException


def ckpts(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.ckpt"))


def fit(tmp_path: Path, cb: ModelCheckpoint, losses: list[float], **kwargs: Any) -> L.Trainer:
    t = trainer(tmp_path, [cb], **kwargs)
    t.fit(ScriptedModel(losses), loader(), loader())
    return t


# --- the seed page's recipes ---------------------------------------------------------------------------
def test_seed_top2_val_loss(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "my/path/", save_top_k=2, monitor="val_loss")
    fit(tmp_path, cb, [0.5, 0.3, 0.4])
    assert ckpts(tmp_path / "my/path") == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    assert cb.best_model_path == str(tmp_path / "my/path/epoch=1-step=8.ckpt")
    assert cb.best_model_score is not None and math.isclose(float(cb.best_model_score), 0.3, rel_tol=1e-6)


def test_seed_sample_mnist_filename(tmp_path: Path) -> None:
    cb = ModelCheckpoint(
        save_top_k=10,
        monitor="val_loss",
        mode="min",
        dirpath=tmp_path,
        filename="sample-mnist-{epoch:02d}-{val_loss:.2f}",
    )
    fit(tmp_path, cb, [0.5, 0.32, 0.4])
    assert ckpts(tmp_path) == [
        "sample-mnist-epoch=00-val_loss=0.50.ckpt",
        "sample-mnist-epoch=01-val_loss=0.32.ckpt",
        "sample-mnist-epoch=02-val_loss=0.40.ckpt",
    ]


def test_seed_last_k_by_global_step(tmp_path: Path) -> None:
    class Logged(ScriptedModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("global_step", self.global_step)
            return super().training_step(batch, batch_idx)

    cb = ModelCheckpoint(
        save_top_k=2,
        monitor="global_step",
        mode="max",
        dirpath=tmp_path,
        filename="sample-mnist-{epoch:02d}-{global_step}",
    )
    t = trainer(tmp_path, [cb])
    t.fit(Logged(), loader(), loader())
    # global_step is logged before the step of each batch, so the epoch ends at 3, 7, 11 (floats, as in Lightning)
    assert ckpts(tmp_path) == [
        "sample-mnist-epoch=01-global_step=7.0.ckpt",
        "sample-mnist-epoch=02-global_step=11.0.ckpt",
    ]


def test_seed_save_and_load_manually(tmp_path: Path) -> None:
    t = fit(tmp_path, ModelCheckpoint(dirpath=tmp_path / "c"), [1.0], max_epochs=1)
    t.save_checkpoint(tmp_path / "example.ckpt")
    new_model = ScriptedModel.load_from_checkpoint(checkpoint_path=tmp_path / "example.ckpt")
    assert torch.equal(new_model.layer.weight, t.lightning_module.layer.weight)
    raw = torch.load(tmp_path / "example.ckpt", weights_only=True)
    for key in (
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "state_dict",
        "loops",
        "callbacks",
        "optimizer_states",
        "lr_schedulers",
        "hparams_name",
        "hyper_parameters",
    ):
        assert key in raw
    assert raw["hyper_parameters"] == {"val_losses": [1.0], "lr": 0.01}


# --- top-k --------------------------------------------------------------------------------------------
def test_top1_keeps_only_best_and_ties_never_enter(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1)
    fit(tmp_path, cb, [0.5, 0.5, 0.4, 0.6], max_epochs=4)
    assert ckpts(tmp_path) == ["epoch=2-step=12.ckpt"]
    assert cb.kth_best_model_path == cb.best_model_path


def test_max_mode_and_nan_is_worst(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", mode="max", save_top_k=2)
    fit(tmp_path, cb, [float("nan"), 0.2, 0.1, 0.3], max_epochs=4)
    assert ckpts(tmp_path) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]
    assert float(cb.kth_value) == pytest.approx(0.2)


def test_save_top_k_all_and_none(tmp_path: Path) -> None:
    cb_all = ModelCheckpoint(dirpath=tmp_path / "all", monitor="val_loss", save_top_k=-1)
    cb_none = ModelCheckpoint(dirpath=tmp_path / "none", monitor="val_loss", save_top_k=0, filename="x")
    for cb in (cb_all, cb_none):  # one Trainer each: both have the same state_key
        trainer(tmp_path, [cb]).fit(ScriptedModel([0.3, 0.2, 0.1]), loader(), loader())
    assert len(ckpts(tmp_path / "all")) == 3
    assert not (tmp_path / "none").exists() or ckpts(tmp_path / "none") == []
    assert cb_none.best_model_path == ""


def test_monitor_none_keeps_newest(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path)
    fit(tmp_path, cb, [1.0])
    assert ckpts(tmp_path) == ["epoch=2-step=12.ckpt"]
    assert cb.best_model_path.endswith("epoch=2-step=12.ckpt") and cb.best_model_score is None
    assert cb.best_k_models == {}


# --- triggers -----------------------------------------------------------------------------------------
def test_every_n_train_steps(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1)
    fit(tmp_path, cb, [1.0])
    assert ckpts(tmp_path) == ["epoch=1-step=5.ckpt", "epoch=2-step=10.ckpt"]


def test_step_trigger_waits_for_validation_metric(tmp_path: Path) -> None:
    cb = ModelCheckpoint(
        dirpath=tmp_path,
        every_n_train_steps=2,
        monitor="val_loss",
        save_top_k=-1,
        save_on_train_epoch_end=False,
    )
    fit(tmp_path, cb, [0.5, 0.4], max_epochs=2, limit_train_batches=3)
    # val_loss exists only after the first validation (step 3): the step-2 trigger waits for it (checks at
    # the training epoch end drop it, as Lightning does: test_model_checkpoint_last_vs_lightning.py)
    names = ckpts(tmp_path)
    assert names[0].startswith("epoch=0-step=3")
    assert all("step=2" not in n for n in names)


def test_every_n_epochs(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=2, save_top_k=-1)
    fit(tmp_path, cb, [1.0], max_epochs=4)
    assert ckpts(tmp_path) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]


def test_train_time_interval(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(0), save_top_k=-1)
    fit(tmp_path, cb, [1.0], max_epochs=1)
    assert len(ckpts(tmp_path)) == 4


@pytest.mark.parametrize(("flag", "expected"), [(None, [1, 3]), (True, [0, 1, 2, 3])])
def test_save_on_train_epoch_end_rule(tmp_path: Path, flag: bool | None, expected: list[int]) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_on_train_epoch_end=flag)
    fit(tmp_path, cb, [1.0], max_epochs=4, check_val_every_n_epoch=2)
    assert [int(n.split("-")[0].split("=")[1]) for n in ckpts(tmp_path)] == expected


def test_nothing_saved_outside_fit_or_in_fast_dev_run(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "c")
    t = fit(tmp_path, cb, [1.0], fast_dev_run=True)
    t.validate(t.lightning_module, loader())
    assert not (tmp_path / "c").exists()


# --- last ---------------------------------------------------------------------------------------------
def test_last_is_newest_state_even_when_not_top_k(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1, save_last=True)
    fit(tmp_path, cb, [0.5, 0.3, 0.4])
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 12)  # Lightning 2.6 leaves epoch 1 here
    assert cb.last_model_path == str(tmp_path / "last.ckpt")
    assert ckpts(tmp_path) == ["epoch=1-step=8.ckpt", "last.ckpt"]


def test_last_with_save_top_k_zero(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True)
    fit(tmp_path, cb, [1.0], max_epochs=2)
    assert ckpts(tmp_path) == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 8


def test_last_is_serialized_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=-1, save_last=True)
    t = trainer(tmp_path, [cb])
    writes: list[str] = []
    original = CheckpointManager.save_as

    def counting(manager: CheckpointManager, name: str, *args: Any, **kwargs: Any) -> Any:
        writes.append(name)
        return original(manager, name, *args, **kwargs)

    monkeypatch.setattr(CheckpointManager, "save_as", counting)  # every Trainer save goes through it
    t.fit(ScriptedModel([0.3, 0.2, 0.1]), loader(), loader())
    assert writes == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    copy = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert copy["global_step"] == 12
    state = next(v for k, v in copy["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert state["last_model_path"] == str(tmp_path / "last.ckpt")


def test_last_link(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last="link")
    fit(tmp_path, cb, [0.3, 0.2, 0.1])
    link = tmp_path / "last.ckpt"
    assert link.is_symlink() and os.readlink(link) == "epoch=2-step=12.ckpt"
    assert torch.load(link, weights_only=True)["global_step"] == 12


def test_custom_last_name(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb.CHECKPOINT_NAME_LAST = "{epoch}-last"
    fit(tmp_path, cb, [1.0], max_epochs=2)
    assert "epoch=1-last.ckpt" in ckpts(tmp_path)


# --- names and versions -------------------------------------------------------------------------------
def test_version_counter_never_clobbers(tmp_path: Path) -> None:
    fit(tmp_path, ModelCheckpoint(dirpath=tmp_path, save_last=True), [1.0], max_epochs=2)
    first = (tmp_path / "epoch=1-step=8.ckpt").read_bytes()
    with pytest.warns(UserWarning, match="exists and is not empty"):
        fit(tmp_path, ModelCheckpoint(dirpath=tmp_path, save_last=True), [1.0], max_epochs=2)
    assert ckpts(tmp_path) == ["epoch=1-step=8-v1.ckpt", "epoch=1-step=8.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert (tmp_path / "epoch=1-step=8.ckpt").read_bytes() == first


def test_version_counter_off_overwrites(tmp_path: Path) -> None:
    fit(tmp_path, ModelCheckpoint(dirpath=tmp_path, enable_version_counter=False), [1.0], max_epochs=2)
    with pytest.warns(UserWarning):
        fit(tmp_path, ModelCheckpoint(dirpath=tmp_path, enable_version_counter=False), [1.0], max_epochs=2)
    assert ckpts(tmp_path) == ["epoch=1-step=8.ckpt"]


def test_metric_name_with_slash_and_no_auto_insert(tmp_path: Path) -> None:
    class Slash(ScriptedModel):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val/loss", torch.tensor(0.25))

    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", filename="{epoch:02d}-{val/loss:.2f}")
    cb2 = ModelCheckpoint(dirpath=tmp_path / "b", filename="m-{epoch}-{step}", auto_insert_metric_name=False)
    t = trainer(tmp_path, [cb, cb2], max_epochs=1)
    t.fit(Slash(), loader(), loader())
    assert ckpts(tmp_path) == ["b/m-0-4.ckpt", "epoch=00-val/loss=0.25.ckpt"]


def test_default_dirpath_follows_logger_version(tmp_path: Path) -> None:
    cb = ModelCheckpoint()
    t = trainer(tmp_path, [cb], logger=True, max_epochs=1)
    t.fit(ScriptedModel(), loader(), loader())
    assert cb.dirpath == str(tmp_path / "lightning_logs" / "version_0" / "checkpoints")
    cb2 = ModelCheckpoint()
    trainer(tmp_path, [cb2], max_epochs=1).fit(ScriptedModel(), loader(), loader())
    assert cb2.dirpath == str(tmp_path / "checkpoints")


# --- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"save_top_k": -2}, "save_top_k=-2"),
        ({"mode": "avg"}, "mode"),
        ({"every_n_train_steps": -1}, "every_n_train_steps=-1"),
        ({"every_n_epochs": -1}, "every_n_epochs=-1"),
        ({"every_n_train_steps": 2, "every_n_epochs": 1}, "mutually exclusive"),
        ({"every_n_train_steps": 2, "train_time_interval": timedelta(seconds=1)}, "mutually exclusive"),
        ({"save_top_k": 3}, "save_top_k=3, monitor=None"),
        ({"save_last": "yes"}, "save_last='yes'"),
    ],
)
def test_invalid_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        ModelCheckpoint(**kwargs)


def test_zero_trigger_does_not_conflict() -> None:
    cb = ModelCheckpoint(every_n_train_steps=0, every_n_epochs=3)
    assert cb.every_n_epochs == 3


def test_monitor_typo_after_validation_is_an_error(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_lss")
    with pytest.raises(MisconfigurationException, match="could not find the monitored key"):
        fit(tmp_path, cb, [1.0])


def test_monitor_missing_without_validation_warns_and_trains_on(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="train_los", save_last=True)
    t = trainer(tmp_path, [cb])
    with pytest.warns(
        UserWarning, match=r"monitor='train_los'.*\['train_loss', 'epoch', 'step'\].*'last' is still"
    ):
        t.fit(ScriptedModel(), loader())
    assert t.global_step == 12 and ckpts(tmp_path) == ["last.ckpt"] and cb.best_model_path == ""


class PtCheckpoint(ModelCheckpoint):
    FILE_EXTENSION = ".pt"


@pytest.mark.parametrize("how", ["instance", "subclass", "hidden last"])
def test_unsupported_names_are_refused_before_anything_is_written(tmp_path: Path, how: str) -> None:
    cb = (
        PtCheckpoint(dirpath=tmp_path / "c") if how == "subclass" else ModelCheckpoint(dirpath=tmp_path / "c")
    )
    if how == "instance":
        cb.FILE_EXTENSION = ".pt"
    if how == "hidden last":
        cb.CHECKPOINT_NAME_LAST = ".last"
    with pytest.raises(
        MisconfigurationException, match=r"FILE_EXTENSION='\.pt'|CHECKPOINT_NAME_LAST='\.last'"
    ):
        fit(tmp_path, cb, [1.0])
    assert not (tmp_path / "c").exists() or not os.listdir(tmp_path / "c")


def test_extension_ending_in_ckpt_is_used(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb.FILE_EXTENSION = ".model.ckpt"
    fit(tmp_path, cb, [1.0], max_epochs=2)
    assert ckpts(tmp_path) == ["epoch=1-step=8.model.ckpt", "last.model.ckpt"]
    assert cb.best_model_path == str(tmp_path / "epoch=1-step=8.model.ckpt")


# --- state and resume ------------------------------------------------------------------------------------
def test_state_key_matches_lightning() -> None:
    cb = ModelCheckpoint(monitor="val_loss")
    assert cb.state_key == (
        "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, "
        "'train_time_interval': None}"
    )


def test_resume_continues_top_k_and_keeps_resume_source(tmp_path: Path) -> None:
    def cb() -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)

    fit(tmp_path, cb(), [0.5, 0.3, 0.4])
    resume_from = tmp_path / "epoch=2-step=12.ckpt"
    second = cb()
    t = trainer(tmp_path, [second], max_epochs=5)
    t.fit(ScriptedModel([0.5, 0.3, 0.4, 0.35, 0.6]), loader(), loader(), ckpt_path=resume_from)
    # epoch 2 (0.4) drops out of the top 2 when epoch 3 (0.35) arrives, but it is the resume source: kept
    assert set(second.best_k_models) == {
        str(tmp_path / "epoch=1-step=8.ckpt"),
        str(tmp_path / "epoch=3-step=16.ckpt"),
    }
    assert resume_from.exists()
    assert not (tmp_path / "epoch=0-step=4.ckpt").exists()


def test_resume_top_k_deletes_earlier_files(tmp_path: Path) -> None:
    def cb() -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2, save_last=True)

    fit(tmp_path, cb(), [0.5, 0.3, 0.4])
    second = cb()
    trainer(tmp_path, [second], max_epochs=5).fit(
        ScriptedModel([0.5, 0.3, 0.4, 0.35, 0.6]), loader(), loader(), ckpt_path="last"
    )
    assert ckpts(tmp_path) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]


def test_dirpath_change_reloads_only_best_path(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "a", monitor="val_loss")
    state = {**cb.state_dict(), "dirpath": "/elsewhere", "best_model_path": "/elsewhere/x.ckpt"}
    with pytest.warns(UserWarning, match="dirpath has changed"):
        cb.load_state_dict(state)
    assert cb.best_model_path == "/elsewhere/x.ckpt" and cb.best_k_models == {}


def test_failed_save_keeps_state_pointing_at_existing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1, save_last=True)
    t = trainer(tmp_path, [cb])
    original = CheckpointManager.save_as
    calls = {"n": 0}

    def failing(manager: CheckpointManager, name: str, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return original(manager, name, *args, **kwargs)

    monkeypatch.setattr(CheckpointManager, "save_as", failing)
    with pytest.raises(OSError, match="No space left"):
        t.fit(ScriptedModel([0.5, 0.3, 0.1]), loader(), loader())
    assert ckpts(tmp_path) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    for path in (cb.best_model_path, cb.last_model_path, *cb.best_k_models):
        assert os.path.exists(path)
    assert cb.best_model_path.endswith("epoch=0-step=4.ckpt")


def test_weights_only_checkpoint(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)
    fit(tmp_path, cb, [1.0], max_epochs=1)
    raw = torch.load(cb.best_model_path, weights_only=True)
    assert "optimizer_states" not in raw and "callbacks" not in raw and "state_dict" in raw
    with pytest.raises(KeyError, match="holds only model weights"):  # Lightning's type
        trainer(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "b")]).fit(
            ScriptedModel(), loader(), loader(), ckpt_path=cb.best_model_path
        )


def test_to_yaml(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    fit(tmp_path, cb, [0.5, 0.25])
    cb.to_yaml()
    import yaml

    saved = yaml.safe_load((tmp_path / "best_k_models.yaml").read_text())
    assert sorted(saved.values()) == [0.25, 0.25]


def test_logger_notified_after_commit(tmp_path: Path) -> None:
    from stepstone.loggers import CSVLogger

    seen: list[bool] = []

    class Watching(CSVLogger):
        def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
            seen.append(os.path.exists(checkpoint_callback._last_checkpoint_saved))

    cb = ModelCheckpoint(dirpath=tmp_path / "c")
    trainer(tmp_path, [cb], logger=Watching(tmp_path)).fit(ScriptedModel(), loader(), loader())
    assert seen == [True, True, True]
