"""``stepstone ckpt ls``, ``show``, ``verify``, ``prune``, ``diff`` and ``export`` on sharded checkpoint directories."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from stepstone.checkpoint import RunIndex, save_file
from stepstone.checkpoint import kinds as kinds_module
from stepstone.checkpoint.sharded import MARKER_NAME, save_sharded
from stepstone.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["ckpt", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _state(step: int, scale: float = 1.0) -> dict[str, Any]:
    return {
        "state_dict": {"layer.weight": torch.arange(12.0).reshape(3, 4) * scale, "layer.bias": torch.ones(4)},
        "optimizer_states": [
            {"state": {0: {"step": torch.tensor(float(step))}}, "param_groups": [{"lr": 0.1}]}
        ],
        "epoch": step // 10,
        "global_step": step,
        "hyper_parameters": {"lr": 0.1 * scale},
        "loops": {"fit_loop": {"epoch": step // 10}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_path": "/old/run/step=10.ckpt"}},
        "rng": torch.zeros(5, dtype=torch.uint8),
    }


def _sharded(directory: Path, step: int, loss: float, scale: float = 1.0) -> Path:
    path = directory / f"step={step}.ckpt"
    save_sharded(
        path, _state(step, scale), metadata={"step": step, "epoch": step // 10, "metrics": {"loss": loss}}
    )
    return path


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Two sharded directories (steps 10 and 20), one file (step 15), as a FSDP run with a full save would leave."""
    directory = tmp_path / "ckpts"
    _sharded(directory, 10, loss=0.5)
    save_file(
        directory / "step=15.ckpt", _state(15), metadata={"step": 15, "epoch": 1, "metrics": {"loss": 0.7}}
    )
    _sharded(directory, 20, loss=0.9, scale=2.0)
    return directory


def test_ls_lists_sharded_directories_with_kind_size_and_step(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "ls", str(run_dir))
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert code == 0 and out.split()[:3] == ["NAME", "KIND", "STEP"]
    assert sorted(lines) == ["step=10.ckpt", "step=15.ckpt", "step=20.ckpt"]
    assert lines["step=10.ckpt"][1:3] == ["sharded", "10"] and lines["step=15.ckpt"][1:3] == ["file", "15"]
    assert "verified" in lines["step=20.ckpt"] and "KiB" in lines["step=20.ckpt"]
    assert lines["step=10.ckpt"][-1] == "best"  # named by the callback state in the newest one's meta.pt
    code, out, _ = _run(capsys, "ls", str(run_dir), "--json", "--no-verify", "--metric", "loss")
    rows = {row["name"]: row for row in json.loads(out)["checkpoints"]}
    assert code == 0 and rows["step=20.ckpt"]["sharded"] and not rows["step=15.ckpt"]["sharded"]
    assert rows["step=20.ckpt"]["size"] == RunIndex(run_dir).entries()[-1].size > 0
    assert not rows["step=20.ckpt"]["verified"] and rows["step=10.ckpt"]["best"]


def test_ls_and_verify_report_damaged_and_uncommitted_directories(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _flip(next((run_dir / "step=20.ckpt").glob("*.distcp")))
    (run_dir / "step=30.ckpt").mkdir()  # an interrupted save: no marker
    code, out, _ = _run(capsys, "ls", str(run_dir))
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 1 and "CRC32 mismatch" in lines["step=20.ckpt"] and MARKER_NAME in lines["step=30.ckpt"]
    assert "FAILED" not in lines["step=10.ckpt"]
    code, out, _ = _run(capsys, "verify", str(run_dir))
    assert code == 1 and "2 of 4 checkpoint(s) verified" in out
    code, out, _ = _run(capsys, "verify", str(run_dir / "step=10.ckpt"), str(run_dir / "step=15.ckpt"))
    assert code == 0 and "2 of 2 checkpoint(s) verified" in out


def test_show_reads_the_metadata_without_the_shards(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_dir / "step=10.ckpt"
    for shard in path.glob("*.distcp"):
        _flip(shard)  # show never reads the shards: damage there goes unnoticed (verify finds it)
    code, out, _ = _run(capsys, "show", str(path))
    assert code == 0 and "sharded checkpoint directory" in out and "saved by 1 rank(s)" in out
    assert "step:     10   epoch: 1   metrics: loss=0.5" in out
    assert "state_dict.layer.weight" in out and "(3, 4)" in out and "float32" in out and "48 B" in out
    assert "hyper_parameters, loops, optimizer_states, rng, state_dict" in out and "fit_loop" in out
    assert "optimizer_states" not in out.split("tensors:")[1]  # only the weights unless --all
    code, out, _ = _run(capsys, "show", str(path), "--json", "--all")
    info = json.loads(out)
    names = {row["name"]: row for row in info["tensors"]}
    assert code == 0 and info["sharded"] and info["step"] == 10 and info["metrics"] == {"loss": 0.5}
    assert names["state_dict.layer.bias"] == {
        "name": "state_dict.layer.bias",
        "shape": [4],
        "dtype": "float32",
        "bytes": 16,
    }
    assert names["optimizer_states[0].state.0.step"]["shape"] == [] and names["rng"]["dtype"] == "uint8"
    assert info["hyper_parameters"] == {"lr": 0.1} and info["files"] == len(os.listdir(path)) - 1


def test_show_refuses_damaged_metadata_and_uncommitted_directories(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _flip(run_dir / "step=10.ckpt" / ".metadata")
    code, _, err = _run(capsys, "show", str(run_dir / "step=10.ckpt"))
    assert code == 1 and ".metadata" in err and "corrupt" in err
    os.remove(run_dir / "step=20.ckpt" / MARKER_NAME)
    code, _, err = _run(capsys, "show", str(run_dir / "step=20.ckpt"))
    assert code == 1 and f"FILE='{run_dir / 'step=20.ckpt'}' is a directory without the {MARKER_NAME}" in err
    code, _, err = _run(capsys, "show", str(run_dir))
    assert code == 1 and "stepstone ckpt ls" in err


def test_prune_deletes_directories_with_remove_sharded(
    run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[str] = []
    remove_dir = kinds_module.sharded_commit.remove_dir
    monkeypatch.setattr(
        kinds_module.sharded_commit,
        "remove_dir",
        lambda path: (removed.append(os.fspath(path)), remove_dir(path)),
    )
    code, out, _ = _run(capsys, "prune", str(run_dir), "--keep-last", "1", "--dry-run")
    assert code == 0 and "would delete: step=10.ckpt" in out and "would delete: step=15.ckpt" in out
    assert removed == [] and len(os.listdir(run_dir)) == 3
    os.symlink("step=10.ckpt", run_dir / "last.ckpt")  # the target of a last link is never pruned
    code, out, _ = _run(capsys, "prune", str(run_dir), "--keep-best", "1", "--metric", "loss", "--json")
    assert code == 0 and json.loads(out)["deleted"] == ["step=15.ckpt", "step=20.ckpt"]
    assert removed == [str(run_dir / "step=20.ckpt")]
    assert sorted(os.listdir(run_dir)) == ["last.ckpt", "step=10.ckpt"]
    assert [r.name for r in RunIndex(run_dir).entries()] == ["step=10.ckpt"]


def test_diff_compares_directories_and_files(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "diff", str(run_dir / "step=10.ckpt"), str(run_dir / "step=20.ckpt"))
    assert code == 1 and "A: " in out and "(step 10)" in out and "(step 20)" in out
    assert "differs:   layer.weight  max abs diff 11" in out and "metric loss: 0.5 -> 0.9" in out
    assert "hparam lr: 0.1 -> 0.2" in out
    save_file(run_dir / "copy.ckpt", _state(10), metadata={"step": 10, "metrics": {"loss": 0.5}})
    code, out, _ = _run(capsys, "diff", "--json", str(run_dir / "step=10.ckpt"), str(run_dir / "copy.ckpt"))
    assert code == 0 and json.loads(out)["identical"]
    (run_dir / "half").mkdir()
    code, _, err = _run(capsys, "diff", str(run_dir / "step=10.ckpt"), str(run_dir / "half"))
    assert code == 1 and "B=" in err and "without the" in err


def test_export_gathers_a_sharded_directory(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file as load_safetensors

    target = tmp_path / "weights.safetensors"
    code, out, _ = _run(capsys, "export", str(run_dir / "step=20.ckpt"), str(target))
    assert code == 0 and "exported 2 tensor(s)" in out
    exported = load_safetensors(target)
    assert torch.equal(exported["layer.weight"], torch.arange(12.0).reshape(3, 4) * 2)
    with safe_open(str(target), "pt") as handle:
        assert handle.metadata()["step"] == "20"
    _flip(next((run_dir / "step=10.ckpt").glob("*.distcp")))  # export verifies every shard first
    code, _, err = _run(capsys, "export", str(run_dir / "step=10.ckpt"), str(tmp_path / "x.safetensors"))
    assert code == 1 and "corrupt" in err and not (tmp_path / "x.safetensors").exists()
