"""``stepstone ckpt`` on an ``s3://`` folder (a real S3-API server on loopback): the same answers as locally."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fsspec
import pytest

from s3_server import S3Server
from stepstone.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(["ckpt", *argv, "--json"])
    out, err = capsys.readouterr()
    assert out, err
    return code, json.loads(out)


def _upload(run_dir: Path, url: str) -> None:
    fs, base = fsspec.core.url_to_fs(url)
    for path in sorted(run_dir.iterdir()):  # last.ckpt is a regular file (save_last=True copies)
        fs.pipe_file(f"{base}/{path.name}", path.read_bytes())


def _rows(listing: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**row, "created": None} for row in listing["checkpoints"]]


def test_ls_verify_and_prune_on_s3_answer_as_locally(
    run_dir: Path, s3_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _upload(run_dir, s3_dir)
    local_code, local = _run(capsys, "ls", str(run_dir))
    code, remote = _run(capsys, "ls", s3_dir)  # the endpoint from boto's environment
    assert (code, remote["directory"]) == (local_code, s3_dir) == (0, s3_dir)
    assert _rows(remote) == _rows(local) and any(row["best"] for row in remote["checkpoints"])

    code, verified = _run(capsys, "verify", s3_dir, f"{s3_dir}/last.ckpt")
    assert code == 0 and verified["ok"] and len(verified["files"]) == 4
    assert all(f["path"].startswith(f"{s3_dir}/") for f in verified["files"])

    local_code, local = _run(capsys, "prune", str(run_dir), "--keep-last", "1")
    code, remote = _run(capsys, "prune", s3_dir, "--keep-last", "1")
    assert (code, remote) == (local_code, local) and remote["deleted"]
    fs, base = fsspec.core.url_to_fs(s3_dir)
    fs.invalidate_cache()
    assert sorted(os.path.basename(p) for p in fs.ls(base)) == sorted(p.name for p in run_dir.iterdir())


def test_a_damaged_object_fails_ls_and_verify(
    run_dir: Path, s3_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _upload(run_dir, s3_dir)
    with fsspec.open(f"{s3_dir}/last.ckpt", "rb") as stream:
        data = bytearray(stream.read())
    data[200] ^= 0x10
    with fsspec.open(f"{s3_dir}/last.ckpt", "wb") as stream:
        stream.write(bytes(data))
    code, listing = _run(capsys, "ls", s3_dir)
    statuses = {row["name"]: row["status"] for row in listing["checkpoints"]}
    assert code == 1 and "corrupt" in statuses["last.ckpt"]
    code, verified = _run(capsys, "verify", s3_dir)
    assert code == 1 and [f["ok"] for f in verified["files"]].count(False) == 1


def test_storage_options_carry_the_endpoint(
    run_dir: Path,
    s3: S3Server,
    s3_dir: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _upload(run_dir, s3_dir)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # only the option names the server now
    options = json.dumps(s3.storage_options)
    code, verified = _run(capsys, "verify", s3_dir, "--storage-options", options)
    assert code == 0 and len(verified["files"]) == 3
    code, listing = _run(capsys, "ls", s3_dir, "--storage-options", options)
    assert code == 0 and len(listing["checkpoints"]) == 3


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_bad_storage_options_are_a_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["ckpt", "ls", "somewhere", "--storage-options", text])
    assert exit_info.value.code == 2 and "JSON object" in capsys.readouterr().err


def test_show_and_diff_read_s3_objects(
    run_dir: Path, s3_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _upload(run_dir, s3_dir)
    local_code, local = _run(capsys, "show", str(run_dir / "last.ckpt"))
    code, remote = _run(capsys, "show", f"{s3_dir}/last.ckpt")
    assert (
        (code, {**remote, "file": None})
        == (local_code, {**local, "file": None})
        == (0, {**local, "file": None})
    )
    code, same = _run(capsys, "diff", f"{s3_dir}/last.ckpt", str(run_dir / "last.ckpt"))
    assert code == 0, same
