"""``stepstone ckpt show``, ``diff`` and ``export``, and hostile files on every loading command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from stepstone.checkpoint import load_file, save_file
from stepstone.cli import main

TOP = ["epoch=1-val_loss=1.00.ckpt", "epoch=3-val_loss=0.50.ckpt"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["ckpt", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_show_prints_keys_tensors_hparams_loops_and_callbacks(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "show", str(run_dir / TOP[1]))
    assert code == 0
    assert "step:     16   epoch: 3" in out and "val_loss=0.5" in out
    assert "state_dict.layer.weight" in out and "(1, 4)" in out and "float32" in out and "16 B" in out
    assert "'val_losses': [3.0, 1.0, 2.0, 0.5]" in out and "fit_loop" in out and "ModelCheckpoint" in out
    assert "rng" not in out.split("tensors:")[1]  # only the weights unless --all


def test_show_json_and_all(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "show", str(run_dir / TOP[1]), "--json", "--all")
    info = json.loads(out)
    assert code == 0 and info["step"] == 16 and "optimizer_states" in info["keys"]
    names = {row["name"]: row for row in info["tensors"]}
    assert names["state_dict.layer.weight"] == {
        "name": "state_dict.layer.weight",
        "shape": [1, 4],
        "dtype": "float32",
        "bytes": 16,
    }
    assert len(names) > 2 and info["hyper_parameters"]["lr"] == 0.01


def test_diff_reports_tensors_hparams_and_metrics(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "diff", str(run_dir / TOP[1]), str(run_dir / "last.ckpt"))
    assert code == 0 and "2 tensor(s) identical, 0 differ" in out
    a, b = load_file(run_dir / TOP[0]), load_file(run_dir / TOP[1])
    expected = float((a["state_dict"]["layer.weight"] - b["state_dict"]["layer.weight"]).abs().max())
    code, out, _ = _run(capsys, "diff", str(run_dir / TOP[0]), str(run_dir / TOP[1]), "--json")
    result = json.loads(out)
    assert code == 1 and not result["identical"]
    changed = {c["name"]: c for c in result["tensors"]["changed"]}
    assert changed["layer.weight"]["max_abs_diff"] == pytest.approx(expected)
    assert result["metrics"]["val_loss"] == [1.0, 0.5] and result["step"] == [8, 16]


def test_diff_reports_shape_dtype_missing_tensors_and_hparams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_file(
        tmp_path / "a.ckpt",
        {
            "state_dict": {"w": torch.zeros(2, 2), "x": torch.ones(3), "i": torch.tensor([1, 5])},
            "hyper_parameters": {"lr": 0.1},
        },
    )
    save_file(
        tmp_path / "b.ckpt",
        {
            "state_dict": {"w": torch.zeros(4), "y": torch.ones(3), "i": torch.tensor([1, 2])},
            "hyper_parameters": {"lr": 0.2},
        },
    )
    code, out, _ = _run(capsys, "diff", str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt"))
    assert code == 1
    assert (
        "only in A: x" in out
        and "only in B: y" in out
        and "(2, 2) torch.float32 -> (4,) torch.float32" in out
    )
    assert "differs:   i  max abs diff 3" in out and "hparam lr: 0.1 -> 0.2" in out


def test_export_writes_safetensors_that_safetensors_reads(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file as load_safetensors

    out_path = tmp_path / "weights.safetensors"
    code, out, _ = _run(capsys, "export", str(run_dir / TOP[1]), str(out_path))
    assert code == 0 and "exported 2 tensor(s)" in out
    exported = load_safetensors(out_path)
    original = load_file(run_dir / TOP[1])["state_dict"]
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)


def test_export_without_the_extra_names_it(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails as if not installed
    code, _, err = _run(capsys, "export", str(run_dir / TOP[1]), str(tmp_path / "w.safetensors"))
    assert code == 1 and "pip install 'stepstone[safetensors]'" in err
    assert not (tmp_path / "w.safetensors").exists()


class Payload:
    """Unpickling this creates the sentinel file: proof that code from the file ran."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.sentinel, "w"))


@pytest.mark.parametrize("command", ["show", "diff", "export", "ls"])
def test_hostile_files_are_refused_by_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    sentinel = tmp_path / "pwned"
    (tmp_path / "d").mkdir()
    evil = tmp_path / "d" / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "callbacks": {"x": Payload(str(sentinel))}}, evil)
    argv = {
        "show": [str(evil)],
        "diff": [str(evil), str(evil)],
        "export": [str(evil), str(tmp_path / "w.safetensors")],
        "ls": [str(tmp_path / "d")],
    }[command]
    code, out, err = _run(capsys, command, *argv)
    assert not sentinel.exists()
    if command == "ls":  # ls reads trailers and checksums only: the file has none to check
        assert code == 1 and "no stepstone trailer" in out
    else:
        assert code == 1 and "UnsafeCheckpointError" not in err and "would run code from the file" in err
