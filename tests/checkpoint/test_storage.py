"""Local vs remote storage, and all-or-nothing remote writes."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from stepstone.checkpoint.storage import LocalStorage, RemoteStorage, split_url, storage_for


def test_plain_paths_and_file_urls_are_local(tmp_path: Path) -> None:
    storage, path = split_url(str(tmp_path / "a.ckpt"))
    assert isinstance(storage, LocalStorage) and path == str(tmp_path / "a.ckpt")
    storage, path = split_url(f"file://{tmp_path}/a.ckpt")
    assert isinstance(storage, LocalStorage) and path == str(tmp_path / "a.ckpt")
    assert split_url("relative.ckpt")[1] == os.path.abspath("relative.ckpt")
    assert storage_for(tmp_path).is_local


def test_memory_urls_are_remote_and_round_trip_their_url(memory_dir: str) -> None:
    storage, path = split_url(f"{memory_dir}/a.ckpt")
    assert isinstance(storage, RemoteStorage) and not storage.is_local
    assert storage.url(path) == f"{memory_dir}/a.ckpt"


def test_remote_write_list_size_read_remove(memory_dir: str) -> None:
    storage, directory = split_url(memory_dir)
    path = storage.join(directory, "a.ckpt")
    assert storage.write(path, lambda out: out.write_all(memoryview(b"payload"))) is None
    listed = storage.list_files(directory)
    assert list(listed) == ["a.ckpt"] and listed["a.ckpt"][0] == 7 and listed["a.ckpt"][1]
    assert storage.size(path) == 7 and storage.read_bytes(path) == b"payload"
    assert storage.read_range(path, 3, 5) == b"lo"
    storage.remove(path)
    storage.remove(path)
    assert storage.list_files(directory) == {}


def test_failed_remote_write_leaves_no_object(memory_dir: str) -> None:
    storage, directory = split_url(memory_dir)
    path = storage.join(directory, "a.ckpt")
    storage.write(path, lambda out: out.write_all(memoryview(b"old")))

    def failing(out: object) -> None:
        out.write_all(memoryview(b"partial"))  # type: ignore[attr-defined]
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        storage.write(path, failing)
    assert storage.read_bytes(path) == b"old"
    with pytest.raises(OSError):
        storage.write(storage.join(directory, "new.ckpt"), failing)
    assert "new.ckpt" not in storage.list_files(directory)
    assert not fsspec.filesystem("memory")._intrans  # the transaction ended


def test_local_listing_sizes_and_missing_directory(tmp_path: Path) -> None:
    (tmp_path / "a.ckpt").write_bytes(b"123")
    (tmp_path / "sub").mkdir()
    storage = LocalStorage()
    (size, version) = storage.list_files(str(tmp_path))["a.ckpt"]
    assert size == 3 and list(storage.list_files(str(tmp_path))) == ["a.ckpt"]
    replacement = tmp_path / "b"
    replacement.write_bytes(b"456")
    os.replace(replacement, tmp_path / "a.ckpt")
    assert storage.list_files(str(tmp_path))["a.ckpt"] == (3, storage.list_files(str(tmp_path))["a.ckpt"][1])
    assert storage.list_files(str(tmp_path))["a.ckpt"][1] != version  # same size, new file: new version
    assert storage.list_files(str(tmp_path / "missing")) == {}
