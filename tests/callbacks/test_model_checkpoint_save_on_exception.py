"""ModelCheckpoint(save_on_exception=True) against Lightning 2.6.6, with the preemption save and a failed save."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from both_frameworks import FRAMEWORKS, framework, quiet
from callbacks.ddp_runs import ddp_results
from scripted import loader
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint import verify_file
from stepstone.cli import main
from stepstone.errors import MisconfigurationException
from stepstone.trainer.signals import Preempted


class Boom(Exception):
    pass


def _module(name: str, fail_at: int | None, before_raise: Any = None) -> Any:
    fw, _ = framework(name)

    class Failing(fw.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if fail_at is not None and self.global_step == fail_at:
                if before_raise is not None:
                    before_raise()
                raise Boom(f"failed at step {fail_at}")
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Failing()


def fit(
    name: str,
    root: Path,
    fail_at: int | None,
    ckpt_path: str | None = None,
    extra: list[Any] | None = None,
    before_raise: Any = None,
    **checkpoint_kwargs: Any,
) -> Any:
    """Three epochs of 4 batches (global steps 1..12) with ModelCheckpoint(root/'ckpts', save_on_exception=True)."""
    fw, cls = framework(name)
    callback = cls(dirpath=root / "ckpts", save_on_exception=ckpt_path is None, **checkpoint_kwargs)
    trainer = fw.Trainer(
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=3,
        callbacks=[*(extra or []), callback],
    )
    torch.manual_seed(0)
    with quiet():
        trainer.fit(_module(name, fail_at, before_raise), loader(), ckpt_path=ckpt_path)
    return trainer


def _files(folder: Path) -> list[tuple[str, bool]]:
    return sorted((p.name, p.is_symlink()) for p in folder.iterdir()) if folder.exists() else []


def _saved(path: Path) -> tuple[int, int]:
    checkpoint = torch.load(path, weights_only=False)
    return checkpoint["epoch"], checkpoint["global_step"]


CASES = {
    "default": (5, {}),
    "save_last": (5, {"save_last": True}),
    "save_last_link": (6, {"save_last": "link"}),
    "already_saved_at_the_step": (5, {"every_n_train_steps": 5}),
    "before_the_first_step": (0, {}),
}


@pytest.mark.parametrize("case", CASES)
def test_files_contents_and_resume_as_in_lightning(tmp_path: Path, case: str) -> None:
    fail_at, kwargs = CASES[case]
    seen: dict[str, Any] = {}
    for name in FRAMEWORKS:
        root = tmp_path / name
        with pytest.raises(Boom, match=f"failed at step {fail_at}"):
            fit(name, root, fail_at, **kwargs)
        folder = root / "ckpts"
        files = _files(folder)
        contents = {file: _saved(folder / file) for file, _ in files}
        resumed = None
        exception_file = folder / f"epoch={fail_at // 4}-step={fail_at}.ckpt"
        if fail_at and exception_file.exists():
            trainer = fit(name, root, None, ckpt_path=str(exception_file), **kwargs)
            resumed = (trainer.global_step, trainer.current_epoch, _files(folder))
        seen[name] = (files, contents, resumed)
    assert seen["stepstone"] == seen["lightning"]
    if case in ("default", "save_last", "save_last_link"):
        assert seen["stepstone"][2][0] == 12  # resumed from the exception file to the end


def test_the_file_is_committed_and_marked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Boom):
        fit("stepstone", tmp_path, 5, save_last=True)
    folder = tmp_path / "ckpts"
    for name in ("epoch=1-step=5.ckpt", "last.ckpt"):
        verify_file(folder / name)
        marks = torch.load(folder / name, weights_only=False)["stepstone"]
        assert marks["saved_on_exception"] == {"type": "Boom", "message": "failed at step 5"}
    assert (
        "saved_on_exception"
        not in torch.load(folder / "epoch=0-step=4.ckpt", weights_only=False)["stepstone"]
    )
    capsys.readouterr()
    assert main(["ckpt", "show", str(folder / "epoch=1-step=5.ckpt")]) == 0
    assert "saved on: exception Boom: failed at step 5" in capsys.readouterr().out
    assert main(["ckpt", "show", str(folder / "epoch=0-step=4.ckpt")]) == 0
    assert "saved on:" not in capsys.readouterr().out


def test_weights_only_file_is_marked_too(tmp_path: Path) -> None:
    with pytest.raises(Boom):
        fit("stepstone", tmp_path, 5, save_weights_only=True)
    checkpoint = torch.load(tmp_path / "ckpts" / "epoch=1-step=5.ckpt", weights_only=False)
    assert (
        "optimizer_states" not in checkpoint
        and checkpoint["stepstone"]["saved_on_exception"]["type"] == "Boom"
    )


def test_an_existing_file_of_that_name_is_not_replaced(tmp_path: Path) -> None:
    # A resumed run failing again at its restored step: the file it resumed from stays as it was.
    with pytest.raises(Boom):
        fit("stepstone", tmp_path, 5, filename="{epoch}")
    source = tmp_path / "ckpts" / "epoch=1.ckpt"
    before = source.read_bytes()
    with pytest.raises(Boom, match="failed at step 6"):
        _fit_resumed_and_failing(tmp_path, source)
    assert source.read_bytes() == before
    assert _saved(tmp_path / "ckpts" / "epoch=1-v1.ckpt") == (1, 6)


def _fit_resumed_and_failing(root: Path, source: Path) -> None:
    callback = ModelCheckpoint(dirpath=root / "ckpts", filename="{epoch}", save_on_exception=True)
    trainer = L.Trainer(
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=3,
        callbacks=[callback],
    )
    with quiet():
        trainer.fit(_module("stepstone", 6), loader(), ckpt_path=str(source))


class SignalAt(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_preemption_writes_one_file(tmp_path: Path) -> None:
    with pytest.raises(Preempted) as info:
        fit("stepstone", tmp_path, None, extra=[SignalAt()], save_last=True)
    assert info.value.path == str(tmp_path / "ckpts" / "last-preempted.ckpt")
    assert _files(tmp_path / "ckpts") == [("last-preempted.ckpt", False)]


def test_a_failed_save_keeps_the_original_exception(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"

    def block_the_folder() -> None:
        shutil.rmtree(folder)
        folder.write_text("not a folder")

    with pytest.raises(Boom, match="failed at step 5") as info:
        fit("stepstone", tmp_path, 5, before_raise=block_the_folder)
    notes = getattr(info.value, "__notes__", [])
    assert any(
        "save_on_exception=True) could not save a checkpoint at epoch 1, step 5" in note for note in notes
    )
    assert folder.read_text() == "not a folder"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_invalid_value_is_refused(value: Any) -> None:
    with pytest.raises(MisconfigurationException, match=rf"save_on_exception={value!r}\).*pass True"):
        ModelCheckpoint(save_on_exception=value)


def test_under_ddp_every_rank_takes_part_and_rank_0_writes_once() -> None:
    # Every rank raised at global step 3 (see early_stopping_ddp_script.py): one file, the same on both ranks.
    rank0, rank1 = ddp_results("save_on_exception")
    assert rank0["raised"] == ("rank 0 failed", []) and rank1["raised"] == ("rank 1 failed", [])
    assert rank0["files"] == rank1["files"] == ["epoch=0-step=3.ckpt", "last.ckpt"]
    assert rank0["last_model_path"] == rank1["last_model_path"]
    assert rank0["last_model_path"].endswith("last.ckpt")


def test_asynchronous_checkpointing_saves_the_same_files(tmp_path: Path) -> None:
    seen = []
    for async_save in (False, True):
        root = tmp_path / str(async_save)
        with pytest.raises(Boom):
            fit("stepstone", root, 5, save_last=True, async_save=async_save)
        folder = root / "ckpts"
        seen.append([(file, link, _saved(folder / file)) for file, link in _files(folder)])
    assert seen[0] == seen[1]
    assert [entry[0] for entry in seen[1]] == ["epoch=0-step=4.ckpt", "epoch=1-step=5.ckpt", "last.ckpt"]
    assert seen[1][2][2] == (1, 5)  # last holds the exception's state, not the earlier background save's
