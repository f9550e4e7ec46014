"""stepstone's exact-resume entries: what a resumed run takes from ``checkpoint["stepstone"]`` (and what not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from both_frameworks import FRAMEWORKS, data, framework, module_class, quiet


def _stop_then_resume(name: str, root: Path) -> dict[str, Any]:
    """A callback sets ``should_stop`` at step 2 while a ModelCheckpoint saves every step; a new Trainer
    resumes from the step-2 file with the same limits."""
    pl, model_checkpoint = framework(name)

    class StopAtTwo(pl.Callback):  # type: ignore[misc, name-defined]
        def __init__(self, active: bool) -> None:
            self.active = active

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if self.active and trainer.global_step == 2:
                trainer.should_stop = True

    def fit(stop: bool, ckpt_path: str | None) -> tuple[Any, Any]:
        checkpoint = model_checkpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1)
        trainer = pl.Trainer(
            default_root_dir=root,
            max_epochs=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[checkpoint, StopAtTwo(stop)],
        )
        model = module_class(name)()
        trainer.fit(model, data(4), ckpt_path=ckpt_path)
        return trainer, model

    with quiet():
        torch.manual_seed(0)
        first, _ = fit(stop=True, ckpt_path=None)
        second, model = fit(stop=False, ckpt_path=str(root / "ckpt" / "epoch=0-step=2.ckpt"))
    return {
        "first": (first.global_step, first.current_epoch),
        "second": (second.global_step, second.current_epoch, second.should_stop),
        "trained": [e for e in model.events if e[0] == "train"],
    }


def test_a_file_written_after_should_stop_was_set_resumes_training(tmp_path: Path) -> None:
    runs = {name: _stop_then_resume(name, tmp_path / name) for name in FRAMEWORKS}
    assert runs["stepstone"] == runs["lightning"]
    assert runs["stepstone"]["first"] == (2, 1)
    assert runs["stepstone"]["second"] == (8, 2, False)


def test_should_stop_is_not_stored(tmp_path: Path) -> None:
    _stop_then_resume("stepstone", tmp_path)
    checkpoint = torch.load(tmp_path / "ckpt" / "epoch=0-step=2.ckpt", weights_only=True)
    assert "should_stop" not in checkpoint["stepstone"]


@pytest.mark.parametrize("stored", [True, False])
def test_an_older_file_that_stored_should_stop_resumes_training(tmp_path: Path, stored: bool) -> None:
    _stop_then_resume("stepstone", tmp_path)
    path = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["stepstone"]["should_stop"] = stored  # what stepstone wrote before it stopped storing it
    torch.save(checkpoint, tmp_path / "old.ckpt")
    pl, _ = framework("stepstone")
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    with quiet():
        trainer.fit(module_class("stepstone")(), data(4), ckpt_path=str(tmp_path / "old.ckpt"))
    assert trainer.global_step == 8


def test_each_rank_takes_its_own_dataloader_workers_generators() -> None:
    import stepstone as L
    from stepstone.trainer.resume_state import load_resume_state

    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    own, rank_zero = {"num_workers": 2, "states": [None, None]}, {"num_workers": 2, "states": [None]}
    load_resume_state(trainer, {"loop": {"tail": None, "workers": rank_zero, "workers_per_rank": [own]}})
    assert trainer.fit_loop.data.workers._saved is own
    # Another world size: rank 0's states (the data is sharded differently then anyway).
    load_resume_state(trainer, {"loop": {"tail": None, "workers": rank_zero, "workers_per_rank": [own, own]}})
    assert trainer.fit_loop.data.workers._saved is rank_zero


@pytest.mark.timeout(180)
def test_under_ddp_each_rank_resumes_its_own_augmenting_workers(tmp_path: Path) -> None:
    """2 ranks (torchrun, gloo) x 2 workers with per-sample augmentation whose draws differ per rank: straight
    and interrupted at batch 3 in one launch, resumed in a fresh one; the final checkpoints are equal."""
    import json
    import subprocess
    import sys

    from resume_harness import differences
    from stepstone.strategies import find_free_port

    harness = Path(__file__).parents[1] / "resume_harness.py"
    scenario = {"shuffle": True, "accumulate": 1, "workers": 2, "augment": True, "ranks": 2}

    def launch(name: str, resumes: list[list[Any]]) -> None:
        spec = tmp_path / f"{name}.json"
        spec.write_text(
            json.dumps({"scenario": scenario, "root": str(tmp_path / "root"), "resumes": resumes})
        )
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
        command += [f"--master_port={find_free_port()}", str(harness), str(spec)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=150)
        assert done.returncode == 0, done.stderr[-3000:]

    straight, mid, resumed = (str(tmp_path / f"{n}.ckpt") for n in ("straight", "mid", "resumed"))
    launch("first", [[None, straight], [None, None, [["batch", 3], mid]]])
    launch("resume", [[mid, resumed]])
    per_rank = torch.load(mid, weights_only=True)["stepstone"]["loop"]["workers_per_rank"]
    assert differences(per_rank[0], per_rank[1]) != []  # each rank's workers are in their own state
    assert differences(torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)) == []
