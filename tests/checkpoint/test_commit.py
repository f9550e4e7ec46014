"""The local commit protocol: temp file, fsync, atomic rename, directory fsync; cleanup on any failure."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepstone.checkpoint import commit


def _write_bytes(data: bytes):  # type: ignore[no-untyped-def]
    def write(fd: int) -> int:
        os.write(fd, data)
        return len(data)

    return write


def _fsync_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


def test_atomic_write_commits_and_fsyncs_file_then_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _fsync_spy(monkeypatch)
    target = tmp_path / "a.ckpt"
    assert commit.atomic_write(str(target), _write_bytes(b"hello")) == 5
    assert target.read_bytes() == b"hello"
    assert synced == ["file", "dir"]
    assert os.listdir(tmp_path) == ["a.ckpt"]


@pytest.mark.parametrize(
    "failure", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt(), RuntimeError("bug")]
)
def test_failure_removes_the_temp_file_and_keeps_the_previous_file(
    tmp_path: Path, failure: BaseException
) -> None:
    target = tmp_path / "a.ckpt"
    commit.atomic_write(str(target), _write_bytes(b"previous"))

    def write(fd: int) -> None:
        os.write(fd, b"partial")
        assert any(commit.is_temp_name(n) for n in os.listdir(tmp_path))  # the temp exists while writing
        raise failure

    with pytest.raises(type(failure)):
        commit.atomic_write(str(target), write)
    assert os.listdir(tmp_path) == ["a.ckpt"]
    assert target.read_bytes() == b"previous"


def test_parents_are_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _fsync_spy(monkeypatch)
    target = tmp_path / "x" / "y" / "a.ckpt"
    commit.atomic_write(str(target), _write_bytes(b"1"))
    assert target.read_bytes() == b"1"
    assert synced.count("dir") == 3  # the parent of each created directory, then the final directory


def test_missing_disk_space_fails_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "a.ckpt"
    with pytest.raises(OSError) as error:
        commit.atomic_write(str(target), _write_bytes(b"1"), expected_size=10**18)
    assert error.value.errno == errno.ENOSPC
    assert "needs about" in str(error.value) and "nothing was written" in str(error.value)
    assert os.listdir(tmp_path) == []


def test_temp_names_are_hidden_unique_and_never_ckpt(tmp_path: Path) -> None:
    names = {os.path.basename(commit.temp_path_for(str(tmp_path / ("n" * 300 + ".ckpt")))) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.startswith(".") and not name.endswith(".ckpt") and len(name) < 255
        assert commit.is_temp_name(name)
    assert not commit.is_temp_name("step=1.ckpt") and not commit.is_temp_name(".stepstone-index.json")


@pytest.mark.parametrize("fast_path", [True, False])
def test_copy_file_is_a_committed_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    source = tmp_path / "src.ckpt"
    source.write_bytes(os.urandom(300_000))
    if not fast_path:

        def unsupported(*args: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", unsupported)
    (tmp_path / "dst.ckpt").write_bytes(b"old")
    commit.copy_file(str(source), str(tmp_path / "dst.ckpt"))
    assert (tmp_path / "dst.ckpt").read_bytes() == source.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["dst.ckpt", "src.ckpt"]


def test_link_file_is_relative_and_replaces_atomically(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    first, second = tmp_path / "runs" / "a.ckpt", tmp_path / "runs" / "b.ckpt"
    first.write_bytes(b"a")
    second.write_bytes(b"b")
    link = tmp_path / "runs" / "last.ckpt"
    commit.link_file(str(first), str(link))
    assert os.readlink(link) == "a.ckpt" and link.read_bytes() == b"a"
    commit.link_file(str(second), str(link))
    assert os.readlink(link) == "b.ckpt" and link.read_bytes() == b"b"
    moved = tmp_path / "moved"
    os.rename(tmp_path / "runs", moved)
    assert (moved / "last.ckpt").read_bytes() == b"b"  # relative links survive moving the directory
    with pytest.raises(FileNotFoundError, match="does not exist"):
        commit.link_file(str(moved / "missing.ckpt"), str(moved / "last.ckpt"))
    assert sorted(os.listdir(moved)) == ["a.ckpt", "b.ckpt", "last.ckpt"]


def test_remove_file_is_durable_and_tolerates_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.ckpt"
    target.write_bytes(b"x")
    synced = _fsync_spy(monkeypatch)
    commit.remove_file(str(target))
    commit.remove_file(str(target))
    assert not target.exists() and synced == ["dir"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sweep_removes_only_stale_temps(tmp_path: Path) -> None:
    dead = tmp_path / f".a.ckpt.tmp-{_dead_pid()}-0123abcd"
    mine = tmp_path / f".b.ckpt.tmp-{os.getpid()}-0123abcd"
    old_mine = tmp_path / f".c.ckpt.tmp-{os.getpid()}-89abcdef"
    keep = [tmp_path / "step=1.ckpt", tmp_path / ".stepstone-index.json", tmp_path / ".other.tmp-1-zz"]
    for path in [dead, mine, old_mine, *keep]:
        path.write_bytes(b"x")
    os.utime(old_mine, (time.time() - 10 * 3600,) * 2)
    removed = commit.sweep_stale_temps(str(tmp_path))
    assert sorted(removed) == sorted([str(dead), str(old_mine)])
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in [mine, *keep])
    assert commit.sweep_stale_temps(str(tmp_path / "missing")) == []


def test_sweep_removes_leftover_temp_symlinks(tmp_path: Path) -> None:
    dangling = tmp_path / f".last.ckpt.tmp-{_dead_pid()}-0123abcd"
    os.symlink("nowhere.ckpt", dangling)
    assert commit.sweep_stale_temps(str(tmp_path)) == [str(dangling)]
    assert os.listdir(tmp_path) == []
