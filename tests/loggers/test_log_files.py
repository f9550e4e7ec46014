"""The loggers' file operations behave the same on a local folder, a ``file://`` URL and a ``memory://`` URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from stepstone.loggers.log_files import (
    append_text,
    is_dir,
    is_file,
    is_url,
    local_path,
    make_dirs,
    read_text,
    subfolders,
    write_whole,
)


@pytest.fixture(params=["local", "file", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path)
    elif request.param == "file":
        yield f"file://{tmp_path}"
    else:
        fs = fsspec.filesystem("memory")
        folder = f"/log_files_{uuid.uuid4().hex}"
        yield f"memory://{folder}"
        if fs.exists(folder):
            fs.rm(folder, recursive=True)


def test_folders_and_files(root: str) -> None:
    assert subfolders(root + "/missing") == [] and not is_dir(root + "/missing")
    make_dirs(root + "/a/version_0")
    make_dirs(root + "/a/version_3")
    write_whole(root + "/a/notes.txt", lambda handle: handle.write("x"))
    assert sorted(subfolders(root + "/a")) == ["version_0", "version_3"]  # the file is no folder
    assert is_dir(root + "/a/version_0") and not is_dir(root + "/a/notes.txt")
    assert is_file(root + "/a/notes.txt") and not is_file(root + "/a/version_0")


def test_write_whole_then_append(root: str) -> None:
    path = root + "/new/metrics.csv"
    write_whole(path, lambda handle: handle.write("a,step\r\n1,0\r\n"))  # the folder is created
    append_text(path, lambda handle: handle.write("2,1\r\n"))
    write_whole(root + "/other.csv", lambda handle: handle.write("ignored"))
    assert read_text(path) == "a,step\r\n1,0\r\n2,1\r\n"  # newlines kept as written (csv module's)
    write_whole(path, lambda handle: handle.write("b\r\n"))
    assert read_text(path) == "b\r\n"


def test_url_kinds() -> None:
    assert is_url("s3://bucket/x") and is_url("memory://x")
    assert not is_url("/tmp/x") and not is_url("file:///tmp/x") and not is_url("relative/x")
    assert local_path("file:///tmp/x") == "/tmp/x" and local_path("/tmp/x") == "/tmp/x"
