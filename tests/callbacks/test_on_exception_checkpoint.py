"""OnExceptionCheckpoint against Lightning 2.6.6, and with stepstone's preemption save."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as PL
import pytest
import torch
from lightning.pytorch.callbacks import OnExceptionCheckpoint as PLOnExceptionCheckpoint

import stepstone as L
from both_frameworks import quiet
from scripted import loader
from stepstone.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from stepstone.checkpoint import verify_file
from stepstone.trainer.signals import Preempted

FRAMEWORKS = {"lightning": (PL, PLOnExceptionCheckpoint), "stepstone": (L, OnExceptionCheckpoint)}


class Boom(Exception):
    pass


def _module(fw: ModuleType, fail_at: int | None) -> Any:
    class Failing(fw.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if fail_at is not None and self.global_step == fail_at:
                raise Boom(f"failed at step {fail_at}")
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Failing()


def fit(name: str, root: Path, fail_at: int | None, ckpt_path: str | None = None, **kwargs: Any) -> Any:
    fw, cls = FRAMEWORKS[name]
    kwargs.setdefault("callbacks", [cls(dirpath=root / "exc")])
    trainer = fw.Trainer(
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=2,
        **kwargs,
    )
    torch.manual_seed(0)
    with quiet():
        trainer.fit(_module(fw, fail_at), loader(), ckpt_path=ckpt_path)
    return trainer


def _saved(path: Path) -> dict[str, Any]:
    checkpoint = torch.load(path, weights_only=False)
    return {
        "global_step": checkpoint["global_step"],
        "epoch": checkpoint["epoch"],
        "loops": checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"],
        "weights": {k: v.tolist() for k, v in checkpoint["state_dict"].items()},
    }


def test_saves_on_exception_reraises_and_resumes_like_lightning(tmp_path: Path) -> None:
    seen = {}
    for name in FRAMEWORKS:
        root = tmp_path / name
        with pytest.raises(Boom, match="failed at step 5"):
            fit(name, root, fail_at=5)
        path = root / "exc" / "on_exception.ckpt"
        assert sorted(os.listdir(root / "exc")) == ["on_exception.ckpt"]
        seen[name] = _saved(path)
        # Resuming from it and finishing removes the file (Lightning's teardown).
        trainer = fit(name, root, fail_at=None, ckpt_path=str(path))
        assert trainer.global_step == 8 and not path.exists()
    assert seen["stepstone"] == seen["lightning"]
    assert seen["stepstone"]["global_step"] == 5


def test_is_a_checkpoint_callback_as_in_lightning(tmp_path: Path) -> None:
    # No default ModelCheckpoint is added next to it, and enable_checkpointing=False refuses it.
    for name in FRAMEWORKS:
        root = tmp_path / name
        fit(name, root, fail_at=None)
        assert sorted(p.name for p in root.rglob("*") if p.is_file()) == []
        with pytest.raises(Exception, match="enable_checkpointing=False") as info:
            fit(name, root, fail_at=None, enable_checkpointing=False)
        assert type(info.value).__name__ == "MisconfigurationException"


def test_the_file_is_committed_by_the_engine(tmp_path: Path) -> None:
    with pytest.raises(Boom):
        fit("stepstone", tmp_path, fail_at=2)
    verify_file(tmp_path / "exc" / "on_exception.ckpt")


def test_ckpt_path_and_filename_like_lightning(tmp_path: Path) -> None:
    ours, theirs = OnExceptionCheckpoint(tmp_path, "crash"), PLOnExceptionCheckpoint(tmp_path, "crash")
    assert ours.ckpt_path == theirs.ckpt_path == os.path.join(tmp_path, "crash.ckpt")
    with pytest.raises(ValueError, match="The filename cannot be empty"):
        PLOnExceptionCheckpoint(tmp_path, "")
    with pytest.raises(ValueError, match=r"OnExceptionCheckpoint\(filename=''\).*filename='on_exception'"):
        OnExceptionCheckpoint(tmp_path, "")


def test_a_failed_save_does_not_hide_the_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(Boom) as info:  # (fit() silences the RuntimeWarning that says the same)
        fit("stepstone", tmp_path, fail_at=1, callbacks=[OnExceptionCheckpoint(blocker)])
    assert any("could not save" in note for note in getattr(info.value, "__notes__", []))


class SignalAt(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)


def test_preemption_save_is_not_saved_twice(tmp_path: Path) -> None:
    callbacks = [
        SignalAt(),
        OnExceptionCheckpoint(tmp_path / "exc"),
        ModelCheckpoint(tmp_path / "ckpts", save_top_k=0),
    ]
    with pytest.raises(Preempted) as info:
        fit("stepstone", tmp_path, None, callbacks=callbacks)
    assert info.value.path == str(tmp_path / "ckpts" / "last-preempted.ckpt")
    assert not (tmp_path / "exc").exists()  # the step is in last-preempted.ckpt: no second save


def test_preemption_without_a_model_checkpoint_saves_here(tmp_path: Path) -> None:
    with pytest.raises(Preempted) as info:
        fit("stepstone", tmp_path, None, callbacks=[SignalAt(), OnExceptionCheckpoint(tmp_path / "exc")])
    assert info.value.path is None
    assert torch.load(tmp_path / "exc" / "on_exception.ckpt", weights_only=True)["global_step"] == 3
