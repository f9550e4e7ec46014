"""``stepstone ckpt ls``, ``verify`` and ``prune`` on a real run's directory, driven through ``main(argv)``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stepstone.checkpoint import RunIndex
from stepstone.checkpoint.index import LEGACY_INDEX_NAME
from stepstone.cli import main

TOP = ["epoch=1-val_loss=1.00.ckpt", "epoch=3-val_loss=0.50.ckpt"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["ckpt", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _flip(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_ls_lists_step_epoch_metrics_status_best_and_last(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "ls", str(run_dir))
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(lines) == [*TOP, "last.ckpt"]
    assert "val_loss=0.5" in lines[TOP[1]] and " 16 " in lines[TOP[1]] and "verified" in lines[TOP[1]]
    assert lines[TOP[1]].rstrip().endswith("best") and lines["last.ckpt"].rstrip().endswith("last")
    assert "KiB" in lines[TOP[0]] and not lines[TOP[0]].rstrip().endswith(("best", "last"))


def test_ls_json_and_best_by_metric(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "ls", str(run_dir), "--json", "--metric", "val_loss", "--mode", "max")
    rows = {row["name"]: row for row in json.loads(out)["checkpoints"]}
    assert code == 0 and rows[TOP[0]]["best"] and not rows[TOP[1]]["best"]  # max val_loss: epoch 1
    assert rows[TOP[0]] | {"created": 0, "size": 0} == {
        "name": TOP[0], "sharded": False, "step": 8, "epoch": 1, "metrics": rows[TOP[0]]["metrics"], "size": 0, "created": 0,
        "status": "ok", "verified": True, "link": None, "best": True, "last": False,
    }  # fmt: skip
    assert rows[TOP[0]]["metrics"]["val_loss"] == 1.0 and rows["last.ckpt"]["last"]


def test_ls_reports_a_damaged_file_and_exits_1(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _flip(run_dir / TOP[0])
    code, out, _ = _run(capsys, "ls", str(run_dir))
    assert code == 1 and "FAILED" in out and "corrupt" in out
    code, out, _ = _run(capsys, "ls", str(run_dir), "--no-verify")  # the trailer alone is intact
    assert code == 0


def test_ls_refuses_a_file_argument(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "ls", str(run_dir / TOP[0]))
    assert code == 2 and "is not a directory" in err


def test_verify_files_and_directories(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "verify", str(run_dir))
    assert code == 0 and "3 of 3 file(s) verified" in out
    _flip(run_dir / TOP[1], offset=-300)
    code, out, _ = _run(capsys, "verify", str(run_dir / TOP[0]), str(run_dir / TOP[1]))
    assert code == 1 and f"FAILED    {run_dir / TOP[1]}" in out and "1 of 2" in out
    code, out, _ = _run(capsys, "verify", "--json", str(run_dir / TOP[0]))
    assert code == 0 and json.loads(out)["ok"] is True


def test_verify_fails_on_missing_empty_and_trailerless(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert _run(capsys, "verify", str(tmp_path / "empty"))[0] == 1
    assert _run(capsys, "verify", str(tmp_path / "missing.ckpt"))[0] == 1
    import torch

    torch.save({"x": torch.ones(2)}, tmp_path / "plain.ckpt")
    code, out, _ = _run(capsys, "verify", str(tmp_path / "plain.ckpt"))
    assert code == 1 and "trailer" in out


def test_prune_dry_run_deletes_nothing(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(os.listdir(run_dir))
    code, out, _ = _run(capsys, "prune", str(run_dir), "--keep-last", "1", "--dry-run")
    assert code == 0 and f"would delete: {TOP[0]}" in out and TOP[1] not in out.split("kept")[0]
    assert sorted(os.listdir(run_dir)) == before


def test_prune_keeps_best_and_last(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "prune", str(run_dir), "--keep-best", "1", "--metric", "val_loss", "--json")
    assert code == 0 and json.loads(out)["deleted"] == [TOP[0]] and json.loads(out)["legacy_index"] is None
    assert sorted(os.listdir(run_dir)) == [TOP[1], "last.ckpt"]
    assert [r.name for r in RunIndex(run_dir).entries()] == [TOP[1], "last.ckpt"]


def test_prune_removes_the_index_file_of_earlier_versions(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / LEGACY_INDEX_NAME).write_text('{"format": "stepstone-index", "version": 1, "entries": []}')
    code, out, _ = _run(capsys, "ls", "--no-verify", str(run_dir))
    assert code == 0 and LEGACY_INDEX_NAME not in out  # ignored by everything that reads
    code, out, _ = _run(capsys, "prune", str(run_dir), "--keep-last", "5", "--dry-run")
    assert (
        code == 0 and f"would delete: {LEGACY_INDEX_NAME}" in out and (run_dir / LEGACY_INDEX_NAME).exists()
    )
    code, out, _ = _run(capsys, "prune", str(run_dir), "--keep-last", "5", "--json")
    assert code == 0 and json.loads(out) == {
        "dry_run": False,
        "deleted": [],
        "kept": sorted([*TOP, "last.ckpt"]),
        "legacy_index": LEGACY_INDEX_NAME,
    }
    assert sorted(os.listdir(run_dir)) == sorted([*TOP, "last.ckpt"])


def test_prune_never_deletes_the_target_of_a_last_link(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / "last.ckpt").unlink()
    os.symlink(TOP[0], run_dir / "last.ckpt")  # last -> the older file, which the policy would drop
    code, out, _ = _run(capsys, "prune", str(run_dir), "--keep-last", "1")
    assert code == 0 and "deleted 0 checkpoint(s)" in out and (run_dir / TOP[0]).exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "pass --keep-best K and/or --keep-last N"),
        (["--keep-best", "1"], "--keep-best needs --metric NAME"),
    ],
)
def test_prune_needs_a_policy(
    run_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = _run(capsys, "prune", str(run_dir), *argv)
    assert code == 2 and message in err


def test_prune_rejects_zero(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["ckpt", "prune", str(run_dir), "--keep-last", "0"])
    assert exit_info.value.code == 2 and "must be an integer >= 1" in capsys.readouterr().err
