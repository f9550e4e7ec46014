"""``fit(ckpt_path="last")`` chooses and reads the newest valid checkpoint in one pass over its bytes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone.checkpoint.kinds as kinds_module
import stepstone.checkpoint.loading as loading_module
from read_counting import count_reads
from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import Callback, ModelCheckpoint
from stepstone.checkpoint import load_file
from stepstone.checkpoint.sharded import load_sharded
from stepstone.checkpoint.sharded_commit import read_marker
from stepstone.errors import CheckpointCorruptError
from stepstone.strategies import FSDPStrategy


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


def _sharded_trainer(tmp_path: Path, max_steps: int, *callbacks: Any, kind: str = "sharded") -> Any:
    directory = tmp_path / "ckpts"
    return trainer(
        tmp_path,
        [_every_two_steps(directory), *callbacks],
        max_steps=max_steps,
        strategy=FSDPStrategy(state_dict_type=kind),
        accelerator="cpu",
        devices=1,
    )


class _WeightsAtStart(Callback):
    """The module's weights once the checkpoint was restored (before any training step)."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _stored_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.is_file():
        return load_file(path)["state_dict"]  # type: ignore[no-any-return]
    template = {"state_dict": {k: torch.zeros_like(v) for k, v in ScriptedModel().state_dict().items()}}
    return load_sharded(path, template)["state_dict"]  # type: ignore[no-any-return]


def test_resuming_from_a_sharded_directory_reads_each_of_its_files_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sharded_trainer(tmp_path, 6).fit(ScriptedModel(), loader())
    newest = tmp_path / "ckpts" / "epoch=1-step=6.ckpt"
    reads = count_reads(monkeypatch, newest)
    resumed = _sharded_trainer(tmp_path, 8)
    resumed.fit(ScriptedModel(), loader(), ckpt_path="last")
    assert resumed.ckpt_path == str(newest) and resumed.global_step == 8
    sizes = {name: entry["size"] for name, entry in read_marker(str(newest))["files"].items()}
    # Chosen on its marker, then each file read once by the verified load (not a verify pass and a load).
    assert {name: reads[name] for name in sizes} == sizes


@pytest.mark.parametrize("previous_kind", ["directory", "file"])
def test_a_damaged_newest_sharded_directory_falls_back_to_the_previous_checkpoint(
    tmp_path: Path, previous_kind: str
) -> None:
    if previous_kind == "file":  # files up to step 4 ("full"), then a directory: a fallback may cross kinds
        _sharded_trainer(tmp_path, 4, kind="full").fit(ScriptedModel(), loader())
        _sharded_trainer(tmp_path, 6).fit(ScriptedModel(), loader(), ckpt_path="last")
    else:
        _sharded_trainer(tmp_path, 6).fit(ScriptedModel(), loader())
    directory = tmp_path / "ckpts"
    newest, previous = directory / "epoch=1-step=6.ckpt", directory / "epoch=0-step=4.ckpt"
    assert newest.is_dir() and previous.is_file() == (previous_kind == "file")
    expected, newer = _stored_weights(previous), _stored_weights(newest)
    assert not torch.equal(newer["layer.weight"], expected["layer.weight"])
    (shard,) = newest.glob("*.distcp")
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x40  # the last byte: every item was loaded into the model before the damage showed
    shard.write_bytes(bytes(data))
    start = _WeightsAtStart()
    resumed = _sharded_trainer(tmp_path, 8, start)
    with pytest.warns(UserWarning, match=rf"{shard.name}.*CRC32 mismatch.*Falling back to the next newest"):
        resumed.fit(ScriptedModel(), loader(), ckpt_path="last")
    assert resumed.ckpt_path == str(previous) and resumed.global_step == 8
    assert start.weights.keys() == expected.keys()
    assert all(torch.equal(start.weights[k], expected[k]) for k in expected)

    explicit = _sharded_trainer(tmp_path, 8)
    with pytest.raises(CheckpointCorruptError, match=shard.name):  # asked for by path: no fallback
        explicit.fit(ScriptedModel(), loader(), ckpt_path=newest)
