"""``stepstone ckpt convert`` and ``verify`` on sharded checkpoint directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stepstone.checkpoint import save_file
from stepstone.checkpoint.sharded import save_sharded
from stepstone.cli import main


def _sharded(directory: Path) -> Path:
    path = directory / "epoch=1.ckpt"
    state = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 1, "global_step": 4}
    save_sharded(path, state, metadata={"step": 4, "epoch": 1})
    return path


def test_convert_writes_one_loadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _sharded(tmp_path)
    target = tmp_path / "one.ckpt"
    assert main(["ckpt", "convert", str(source), str(target)]) == 0
    assert "step 4" in capsys.readouterr().out
    assert torch.equal(
        torch.load(target, weights_only=True)["state_dict"]["w"], torch.arange(6.0).reshape(2, 3)
    )
    assert main(["ckpt", "convert", str(tmp_path / "missing"), str(tmp_path / "x.ckpt")]) == 1
    assert "No sharded checkpoint directory" in capsys.readouterr().err


def test_verify_checks_sharded_directories_and_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sharded = _sharded(tmp_path)
    save_file(tmp_path / "plain.ckpt", {"w": torch.ones(2)}, metadata={"step": 2})
    assert main(["ckpt", "verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "epoch=1.ckpt" in out and "2 of 2 checkpoint(s) verified" in out
    shard = next(sharded.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["ckpt", "verify", "--json", str(sharded)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and shard.name in report["files"][0]["error"]
