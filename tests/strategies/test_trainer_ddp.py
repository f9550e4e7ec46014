"""The Trainer under DDP: real 2-process gloo runs started by torchrun, compared with one process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import stepstone as L
from stepstone.errors import MisconfigurationException
from stepstone.strategies import DDPStrategy
from strategies.script_runs import run_script


@pytest.mark.timeout(120)
def test_ddp_under_torchrun_matches_one_process_and_resumes_every_rank(tmp_path: Path) -> None:
    zero, one = run_script(tmp_path / "ddp", 4, "fit", 2)
    (single,) = run_script(tmp_path / "single", 8, "single", 1)
    # Where each process sits.
    assert [(r["rank"], r["local_rank"], r["world_size"], r["num_devices"]) for r in (zero, one)] == [
        (0, 0, 2, 2),
        (1, 1, 2, 2),
    ]
    assert zero["is_global_zero"] and not one["is_global_zero"]
    # Each rank reads half of the data through an injected DistributedSampler.
    assert zero["sampler"] == one["sampler"] == "DistributedSampler"
    assert zero["train_batches"] == one["train_batches"] == single["train_batches"] == 2
    # Gradients are averaged: 2 ranks x batch 4 is SGD with batch 8 on one process.
    for name, value in single["weights"].items():
        assert torch.equal(zero["weights"][name], one["weights"][name])
        assert torch.allclose(zero["weights"][name], value, atol=1e-6)
    # sync_dist=True reduces across ranks; without it each rank keeps its own value.
    assert zero["metrics"]["synced_rank"] == one["metrics"]["synced_rank"] == 0.5
    assert (zero["metrics"]["rank_metric"], one["metrics"]["rank_metric"]) == (0.0, 1.0)
    assert zero["metrics"]["val_loss"] == pytest.approx(single["metrics"]["val_loss"], abs=1e-5)
    # The file name uses a per-rank metric: rank 0's name wins everywhere, one file per checkpoint.
    ckpts = sorted(p.name for p in (tmp_path / "ddp" / "ckpts").glob("*.ckpt"))
    assert ckpts == ["epoch=0-rank_metric=0.ckpt", "epoch=1-rank_metric=0.ckpt", "last.ckpt"]
    assert zero["best_model_path"] == one["best_model_path"] == str(tmp_path / "ddp" / "ckpts" / ckpts[1])
    # A second run (validate) in the same processes reuses the process group.
    assert zero["validate"] == one["validate"]
    assert zero["validate"][0]["val_loss"] == pytest.approx(single["metrics"]["val_loss"], abs=1e-5)
    # trainer.save_checkpoint on every rank writes one file; only rank 0 logs.
    assert (tmp_path / "ddp" / "manual.ckpt").is_file()
    # A path per rank (f"manual-rank{trainer.global_rank}.ckpt"): rank 0's is written and nothing else, as in
    # Lightning; rank 0 warns once, naming both paths.
    assert sorted(p.name for p in (tmp_path / "ddp").glob("manual*.ckpt")) == [
        "manual-rank0.ckpt",
        "manual.ckpt",
    ]
    (warning,) = zero["save_warnings"]
    assert "manual-rank0.ckpt" in warning and "manual-rank1.ckpt" in warning
    assert one["save_warnings"] == []
    assert sorted(p.name for p in (tmp_path / "ddp" / "lightning_logs").iterdir()) == ["version_0"]
    # Each rank draws from its own random stream.
    assert zero["draws"][1] != one["draws"][1]

    # Resume on every rank from the epoch-0 checkpoint (a new Trainer and model): the same weights as the
    # uninterrupted run, and each rank continues its own random stream (all ranks' RNG states are stored).
    run_script(tmp_path / "resume", 4, "first_epoch", 2)
    resumed = run_script(tmp_path / "resume", 4, "resume", 2)
    for before, after in zip((zero, one), resumed, strict=True):
        assert after["draws"] == {1: before["draws"][1]}
        for name, value in before["weights"].items():
            assert torch.equal(after["weights"][name], value)
    assert resumed[0]["best_model_path"] == resumed[1]["best_model_path"]


@pytest.mark.timeout(120)
def test_use_distributed_sampler_false_leaves_each_rank_the_loader_as_given(tmp_path: Path) -> None:
    # Lightning's semantics: without the injected sampler every rank reads the whole loader as given (so both
    # ranks see the same batches and the averaged gradient is one process's).
    zero, one = run_script(tmp_path / "ddp", 4, "fit", 2, kind="ddp_options")
    (single,) = run_script(tmp_path / "single", 4, "single", 1, kind="ddp_options")
    assert zero["sampler"] == one["sampler"] == single["sampler"] == "SequentialSampler"
    assert zero["train_batches"] == one["train_batches"] == single["train_batches"] == 4
    for name, value in single["weights"].items():
        assert torch.allclose(zero["weights"][name], value, atol=1e-6), name


@pytest.mark.timeout(120)
def test_async_saves_under_ddp_are_written_by_rank_zero_in_the_background(tmp_path: Path) -> None:
    from stepstone.checkpoint import verify_file

    (single,) = run_script(tmp_path / "single", 8, "single", 1)
    zero, one = run_script(tmp_path / "ddp", 4, "fit", 2, kind="ddp_async")
    ckpts = tmp_path / "ddp" / "ckpts"
    names = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert names == ["epoch=0-rank_metric=0.ckpt", "epoch=1-rank_metric=0.ckpt", "last.ckpt"]
    # Both ranks name the same committed files once fit has returned.
    assert zero["best_model_path"] == one["best_model_path"] == str(ckpts / names[1])
    for name in names:
        verify_file(str(ckpts / name))
    final = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert final["global_step"] == 4 and len(final["stepstone"]["loop"]["rng_per_rank"]) == 2
    for name, value in single["weights"].items():
        assert torch.allclose(final["state_dict"][name], value, atol=1e-6)


@pytest.mark.timeout(120)
def test_a_signal_on_one_rank_preempts_every_rank_at_the_same_step(tmp_path: Path) -> None:
    (straight,) = run_script(tmp_path / "straight", 8, "single", 1)
    # Only rank 1 gets SIGUSR1 (after step 3): every rank stops after that step, rank 0 writes one file.
    (preempted,) = run_script(tmp_path, 4, "preempt", 2, torchrun=False, returncode=75)
    assert preempted["output"].count("preempted by SIGUSR1") == 1
    checkpoint = torch.load(tmp_path / "ckpts" / "last-preempted.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["stepstone"]["preempted"]
    assert len(checkpoint["stepstone"]["loop"]["rng_per_rank"]) == 2
    # A new run picks it up on every rank and ends where the uninterrupted run ends.
    zero, one = run_script(tmp_path, 4, "auto", 2, torchrun=False)
    for name, value in straight["weights"].items():
        assert torch.equal(zero["weights"][name], one["weights"][name])
        assert torch.allclose(zero["weights"][name], value, atol=1e-6)


@pytest.mark.timeout(60)
def test_a_rank_killed_during_a_save_fails_the_others_fast_and_keeps_earlier_checkpoints(
    tmp_path: Path,
) -> None:
    from stepstone.checkpoint import verify_file

    # Rank 1 is SIGKILLed inside the second checkpoint (after its state was gathered, before the final barrier).
    (zero,) = run_script(tmp_path, 4, "kill_in_save", 2, torchrun=False)
    match = re.search(r"failed on rank 0 of 2 after ([0-9.]+)s \(timeout 0:00:30\)", zero["error"])
    assert match and float(match.group(1)) < 10, zero[
        "error"
    ]  # told by the closed connection, not the timeout
    files = sorted((tmp_path / "ckpts").iterdir())
    # Every file in the folder is a whole checkpoint (no temporaries, nothing half written) and verifies.
    assert files[0].name == "epoch=0-rank_metric=0.ckpt"
    assert all(f.suffix == ".ckpt" for f in files), files
    for file in files:
        verify_file(str(file))
    assert torch.load(files[0], weights_only=True)["epoch"] == 0


@pytest.mark.timeout(60)
def test_save_checkpoint_on_rank_zero_only_fails_fast_on_every_rank(tmp_path: Path) -> None:
    ranks = run_script(tmp_path, 4, "rank0_save", 2)
    for seen in ranks:
        assert "trainer.save_checkpoint must be called on every rank" in seen["error"]
        assert "save_checkpoint" in seen["error"] and "ModelCheckpoint trigger" in seen["error"]
    assert not (tmp_path / "rank0-only.ckpt").exists()


def test_ddp_on_one_process_needs_no_launcher(tmp_path: Path) -> None:
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", default_root_dir=tmp_path, logger=False)
    assert isinstance(trainer._strategy, DDPStrategy)
    assert (trainer.world_size, trainer.global_rank, trainer.num_devices, trainer.is_global_zero) == (
        1,
        0,
        1,
        True,
    )


@pytest.mark.timeout(60)
def test_plain_python_script_starts_the_other_rank_itself(tmp_path: Path) -> None:
    zero, one = run_script(tmp_path, 4, "launch", 2, torchrun=False)
    assert [(r["rank"], r["world_size"]) for r in (zero, one)] == [(0, 2), (1, 2)]
    for name, value in zero["weights"].items():
        assert torch.equal(one["weights"][name], value)
    assert zero["metrics"]["synced_rank"] == 0.5
    assert len(list((tmp_path / "ckpts").glob("*.ckpt"))) == 3  # 2 epochs + last


@pytest.mark.timeout(90)
def test_ddp_spawn_trains_on_new_processes_and_brings_the_results_back(tmp_path: Path) -> None:
    (single,) = run_script(tmp_path / "single", 8, "single", 1)
    (here,) = run_script(tmp_path / "spawn", 4, "spawn", 2, torchrun=False)
    # The calling process reports rank 0 of 2 and holds the weights trained on the spawned ranks.
    assert (here["rank"], here["world_size"], here["is_global_zero"]) == (0, 2, True)
    for name, value in single["weights"].items():
        assert torch.allclose(here["weights"][name], value, atol=1e-6)
    assert here["metrics"]["synced_rank"] == 0.5
    ckpts = sorted((tmp_path / "spawn" / "ckpts").glob("epoch*.ckpt"))
    assert [p.name for p in ckpts] == ["epoch=0-rank_metric=0.ckpt", "epoch=1-rank_metric=0.ckpt"]
    assert here["best_model_path"] == str(ckpts[-1])
    assert here["validate"][0]["val_loss"] == pytest.approx(single["metrics"]["val_loss"], abs=1e-5)
    assert (tmp_path / "spawn" / "manual.ckpt").is_file()  # saved by the calling process after fit


def test_launcher_and_trainer_must_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in dict(
        RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1"
    ).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MisconfigurationException, match=r"devices=3.*world_size=2"):
        L.Trainer(strategy="ddp", accelerator="cpu", devices=3, default_root_dir=tmp_path)
