"""FSDP2 in the Trainer: 2 gloo processes under torchrun, "full" and "sharded" checkpoints, resharding on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typing_extensions import override

import stepstone as L
from models import BoringModel
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint.sharded import convert_sharded_to_file, is_sharded_checkpoint, verify_sharded
from stepstone.errors import MisconfigurationException
from stepstone.strategies import FSDPStrategy
from stepstone.trainer.resume_selection import newest_checkpoint
from strategies.script_runs import run_script

EPOCH0 = "epoch=0-rank_metric=0.ckpt"
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),  # no per-parameter state at all
    "momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.1),
}


def _assert_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.allclose(got[name], value, atol=1e-6), name


@pytest.mark.timeout(180)
def test_fsdp_full_writes_one_consolidated_file_and_matches_one_process(tmp_path: Path) -> None:
    (single,) = run_script(tmp_path / "single", 8, "single", 1)
    zero, one = run_script(tmp_path / "fsdp", 4, "fit", 2, kind="fsdp_full")
    _assert_weights(zero["weights"], single["weights"])
    _assert_weights(one["weights"], single["weights"])
    files = sorted((tmp_path / "fsdp" / "ckpts").glob("epoch*.ckpt"))
    assert [f.name for f in files] == [EPOCH0, "epoch=1-rank_metric=0.ckpt"]
    assert zero["best_model_path"] == one["best_model_path"] == str(files[-1])
    # An ordinary single file (gathered on rank 0), readable without stepstone or FSDP.
    checkpoint = torch.load(files[-1], weights_only=True)
    _assert_weights(checkpoint["state_dict"], single["weights"])
    assert checkpoint["global_step"] == 4
    assert zero["validate"][0]["val_loss"] == pytest.approx(single["metrics"]["val_loss"], abs=1e-5)


@pytest.mark.timeout(240)
def test_fsdp_sharded_directories_reshard_2_to_1_and_1_to_2(tmp_path: Path) -> None:
    (single,) = run_script(tmp_path / "single", 8, "single", 1)
    zero, one = run_script(tmp_path / "two", 4, "fit", 2, kind="fsdp_sharded")
    _assert_weights(zero["weights"], single["weights"])
    ckpts = tmp_path / "two" / "ckpts"
    epoch0 = ckpts / EPOCH0
    assert is_sharded_checkpoint(epoch0) and (epoch0 / "__1_0.distcp").is_file()  # shards of both ranks
    verify_sharded(epoch0)
    assert is_sharded_checkpoint(ckpts / "last.ckpt")  # last of a sharded run: the directory written again
    # ckpt_path="last"/"auto" pick the newest committed checkpoint, directories included.
    newest = newest_checkpoint([ModelCheckpoint(dirpath=ckpts)])
    assert newest is not None and (newest[0].path, newest[0].step) == (str(ckpts / "last.ckpt"), 4)
    assert newest[1] is None  # a directory is chosen on its marker, then read (verified) into the shards
    assert (tmp_path / "two" / "manual.ckpt").is_dir()  # trainer.save_checkpoint writes a directory too
    # 2 -> 1: one process resumes from the 2-rank directory and ends where the uninterrupted run ends.
    (resumed,) = run_script(tmp_path / "two", 8, "resume", 1, kind="fsdp_sharded")
    _assert_weights(resumed["weights"], single["weights"])
    # The 2-rank directory gathered into one file (SGD without momentum: no per-parameter optimizer state)
    # resumes on two ranks (one process: test_a_converted_sharded_checkpoint_resumes_with_and_without_fsdp).
    convert_sharded_to_file(epoch0, tmp_path / "converted" / "ckpts" / EPOCH0)
    zero, one = run_script(tmp_path / "converted", 4, "resume", 2, kind="fsdp_sharded")
    _assert_weights(zero["weights"], single["weights"])
    _assert_weights(one["weights"], single["weights"])
    # 1 -> 2: a directory written by one process, resumed on two.
    run_script(tmp_path / "one", 8, "first_epoch", 1, kind="fsdp_sharded")
    assert is_sharded_checkpoint(tmp_path / "one" / "ckpts" / EPOCH0)
    zero, one = run_script(tmp_path / "one", 4, "resume", 2, kind="fsdp_sharded")
    _assert_weights(zero["weights"], single["weights"])
    _assert_weights(one["weights"], single["weights"])


def test_async_saves_of_sharded_checkpoints_are_refused_before_training(tmp_path: Path) -> None:
    trainer = L.Trainer(
        strategy=FSDPStrategy(state_dict_type="sharded"),
        accelerator="cpu",
        callbacks=[ModelCheckpoint(dirpath=tmp_path, async_save=True)],
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        max_epochs=1,
    )
    with pytest.raises(MisconfigurationException, match="async_save=False, or state_dict_type='full'"):
        trainer.fit(BoringModel())
    assert not list(tmp_path.iterdir())  # nothing written


class _Optimized(BoringModel):
    def __init__(self, optimizer: str) -> None:
        super().__init__()
        self.optimizer = optimizer

    @override
    def configure_optimizers(self) -> Any:
        return OPTIMIZERS[self.optimizer](self.parameters())


def _fit_sharded(
    tmp_path: Path, optimizer: str, max_epochs: int, fsdp: bool, ckpt_path: Path | None = None
) -> Any:
    torch.manual_seed(0)
    model = _Optimized(optimizer)
    trainer = L.Trainer(
        strategy=FSDPStrategy(state_dict_type="sharded") if fsdp else "auto",
        accelerator="cpu",
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpts")],
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=max_epochs,
    )
    trainer.fit(model, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return trainer.global_step, model.state_dict()


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # each run checkpoints into its own folder
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_converted_sharded_checkpoint_resumes_with_and_without_fsdp(tmp_path: Path, optimizer: str) -> None:
    # SGD without momentum used to lose its empty optimizer "state" in the conversion: the resume under FSDP
    # failed with KeyError: 'param_groups.layer.weight.lr', and without FSDP with KeyError: 'state'.
    straight = _fit_sharded(tmp_path / "straight", optimizer, 2, fsdp=True)
    _fit_sharded(tmp_path / "first", optimizer, 1, fsdp=True)
    (directory,) = (tmp_path / "first" / "ckpts").iterdir()
    assert is_sharded_checkpoint(directory)
    converted = tmp_path / "converted.ckpt"
    convert_sharded_to_file(directory, converted)
    for fsdp in (True, False):
        step, weights = _fit_sharded(tmp_path / f"resumed-{fsdp}", optimizer, 2, fsdp, converted)
        assert step == straight[0] == 8
        assert weights.keys() == straight[1].keys()
        assert all(torch.equal(weights[name], value) for name, value in straight[1].items()), fsdp
