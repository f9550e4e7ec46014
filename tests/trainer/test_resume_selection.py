"""``fit(ckpt_path="last")`` chooses and reads the newest valid checkpoint in one pass over its bytes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import stepstone.checkpoint.kinds as kinds_module
import stepstone.checkpoint.loading as loading_module
from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import ModelCheckpoint


def _count_full_reads(monkeypatch: pytest.MonkeyPatch) -> tuple[Counter[str], Counter[str]]:
    """Counts, per file name, verified loads (each opens the file once) and separate checksum passes."""
    loads: Counter[str] = Counter()
    verifies: Counter[str] = Counter()
    open_local, verify = loading_module.open_local, kinds_module.verify

    def counting_open(path: str) -> int:
        loads[Path(path).name] += 1
        return open_local(path)

    def counting_verify(storage: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        verifies[Path(path).name] += 1
        return verify(storage, path, *args, **kwargs)

    monkeypatch.setattr(loading_module, "open_local", counting_open)
    monkeypatch.setattr(kinds_module, "verify", counting_verify)
    return loads, verifies


def _every_two_steps(directory: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=directory, every_n_train_steps=2, save_top_k=-1, filename="{epoch}-{step}")


def test_resuming_from_last_reads_the_newest_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ckpts"
    trainer(tmp_path, [_every_two_steps(directory)], max_steps=6).fit(ScriptedModel(), loader())
    loads, verifies = _count_full_reads(monkeypatch)
    resumed = trainer(tmp_path, [_every_two_steps(directory)], max_steps=8)
    resumed.fit(ScriptedModel(), loader(), ckpt_path="last")
    assert resumed.ckpt_path == str(directory / "epoch=1-step=6.ckpt")
    assert loads["epoch=1-step=6.ckpt"] == 1  # the verified load is the check: no second read
    assert sum(verifies.values()) == 0


def test_a_corrupt_newest_file_is_read_once_then_the_next_newest_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ckpts"
    trainer(tmp_path, [_every_two_steps(directory)], max_steps=6).fit(ScriptedModel(), loader())
    newest = directory / "epoch=1-step=6.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    loads, verifies = _count_full_reads(monkeypatch)
    resumed = trainer(tmp_path, [_every_two_steps(directory)], max_steps=8)
    with pytest.warns(UserWarning, match=r"epoch=1-step=6\.ckpt.*Falling back to the next newest"):
        resumed.fit(ScriptedModel(), loader(), ckpt_path="last")
    assert resumed.ckpt_path == str(directory / "epoch=0-step=4.ckpt")
    assert (loads[newest.name], loads["epoch=0-step=4.ckpt"], sum(verifies.values())) == (1, 1, 0)
