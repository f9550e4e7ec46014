"""``fit(ckpt_path="last" | "auto" | path)``: the newest committed checkpoint that verifies, never a corrupt one."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint import save_file
from stepstone.errors import CheckpointCorruptError
from stepstone.trainer.resume_selection import newest_checkpoint


def _every_two_steps(directory: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=directory, every_n_train_steps=2, save_top_k=-1)


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_last_skips_a_corrupt_newest_checkpoint_with_a_warning_naming_it(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    trainer(tmp_path, [_every_two_steps(directory)], max_steps=6).fit(ScriptedModel(), loader())
    newest = directory / "epoch=1-step=6.ckpt"
    assert sorted(p.name for p in directory.glob("*.ckpt")) == [
        "epoch=0-step=2.ckpt",
        "epoch=0-step=4.ckpt",
        newest.name,
    ]
    _corrupt(newest)
    resumed = trainer(tmp_path, [_every_two_steps(directory)], max_steps=8)
    with pytest.warns(UserWarning, match=r"epoch=1-step=6\.ckpt.*Falling back to the next newest"):
        resumed.fit(ScriptedModel(), loader(), ckpt_path="last")
    assert resumed.ckpt_path == str(directory / "epoch=0-step=4.ckpt")
    assert resumed.global_step == 8


def test_auto_starts_fresh_quietly_when_there_is_nothing_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = trainer(tmp_path, [_every_two_steps(tmp_path / "ckpts")], max_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.fit(ScriptedModel(), loader(), ckpt_path="auto")
    assert fresh.ckpt_path is None
    assert (
        'ckpt_path="auto"): no checkpoint to resume from yet; starting from scratch'
        in capsys.readouterr().err
    )
    again = trainer(tmp_path, [_every_two_steps(tmp_path / "ckpts")], max_steps=6)
    again.fit(ScriptedModel(), loader(), ckpt_path="auto")  # the job's next run continues where it stopped
    assert again.ckpt_path == str(tmp_path / "ckpts" / "epoch=0-step=4.ckpt")


def test_last_warns_when_there_is_nothing_to_resume(tmp_path: Path) -> None:
    fresh = trainer(tmp_path, [_every_two_steps(tmp_path / "ckpts")], max_steps=2)
    with pytest.warns(UserWarning, match='ckpt_path="last"\\) found no checkpoint'):
        fresh.fit(ScriptedModel(), loader(), ckpt_path="last")


def test_an_explicit_path_that_fails_verification_raises(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    trainer(tmp_path, [_every_two_steps(directory)], max_steps=2).fit(ScriptedModel(), loader())
    path = directory / "epoch=0-step=2.ckpt"
    _corrupt(path)
    with pytest.raises(CheckpointCorruptError, match=r"epoch=0-step=2\.ckpt"):
        trainer(tmp_path, [], max_steps=4).fit(ScriptedModel(), loader(), ckpt_path=path)


def test_at_equal_steps_last_wins_whatever_the_names_and_times(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    directory.mkdir()
    callback = ModelCheckpoint(dirpath=directory)
    state = {"state_dict": {}}
    save_file(directory / "last.ckpt", state, metadata={"step": 4})
    save_file(directory / "zz-step=4.ckpt", state, metadata={"step": 4})  # later name, later save time
    os.utime(directory / "last.ckpt", (0, 0))  # an old mtime does not matter either
    chosen = newest_checkpoint([callback], read=False)
    assert chosen is not None and chosen[0].path == str(directory / "last.ckpt")
    save_file(directory / "a-step=5.ckpt", state, metadata={"step": 5})
    chosen = newest_checkpoint([callback])
    assert chosen is not None and chosen[0].path == str(directory / "a-step=5.ckpt")
    assert chosen[1] == state  # read in the same pass
