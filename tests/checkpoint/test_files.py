"""The public one-file API: save_file / read_info / verify_file / copy, link, remove, sweep, is_local."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch

from stepstone.checkpoint import (
    copy_file,
    is_local,
    link_file,
    load_file,
    read_info,
    remove_file,
    save_file,
    sweep_stale_temps,
    verify_file,
)
from stepstone.errors import CheckpointCorruptError, CheckpointError, MisconfigurationException

# Every save here runs on both serializers (the fast zip writer and the reference torch.save).
pytestmark = pytest.mark.usefixtures("serializer")


class Unsafe:
    pass


def test_save_returns_the_record_and_read_info_matches(tmp_path: Path, state: dict[str, Any]) -> None:
    path = tmp_path / "step=7.ckpt"
    record = save_file(path, state, metadata={"step": 7, "epoch": 1, "metrics": {"loss": torch.tensor(0.5)}})
    assert record.path == str(path) and record.name == "step=7.ckpt" and record.size == path.stat().st_size
    assert (record.step, record.epoch, record.metrics, record.format_version) == (7, 1, {"loss": 0.5}, 1)
    assert not record.verified and len(record.digest) == 8
    assert read_info(path) == record
    verified = verify_file(path)
    assert verified.verified and verified.digest == record.digest


def test_directory_is_fsynced_after_the_rename(
    tmp_path: Path, state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_file(tmp_path / "a.ckpt", state)
    assert synced == ["file", "dir"]


def test_unsafe_state_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"checkpoint\['hyper_parameters'\]\['cfg'\]: object of type"):
        save_file(tmp_path / "a.ckpt", {"hyper_parameters": {"cfg": Unsafe()}})
    assert os.listdir(tmp_path) == []


def _fail_after(limit: int, error: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    written = [0]

    def write(fd: int, data: Any) -> int:
        if written[0] >= limit:
            raise error
        count = real(fd, memoryview(data)[: max(1, limit - written[0])])  # short writes happen too
        written[0] += count
        return count

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("limit", [0, 1000, 200_000, 10**9])
def test_disk_full_mid_write_keeps_the_previous_file(
    tmp_path: Path, state_factory: Any, same: Any, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    path = tmp_path / "a.ckpt"
    old = state_factory(1)
    save_file(path, old)
    _fail_after(limit, OSError(errno.ENOSPC, "No space left on device"), monkeypatch)
    if limit >= 10**9:
        save_file(path, state_factory(2))  # enough space: the short writes are completed
        monkeypatch.undo()
        same(load_file(path), state_factory(2))
        return
    with pytest.raises(OSError) as error:
        save_file(path, state_factory(2))
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["a.ckpt"]
    same(load_file(path), old)


def test_interrupt_mid_write_leaves_no_temp(
    tmp_path: Path, state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_after(5000, KeyboardInterrupt(), monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_file(tmp_path / "a.ckpt", state)
    assert os.listdir(tmp_path) == []


def _explode(self: torch.Tensor, protocol: int) -> Any:
    raise RuntimeError("boom")


def test_failure_inside_torch_save_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.Tensor, "__reduce_ex__", _explode)  # torch fails while serializing a tensor
    with pytest.raises(RuntimeError, match="boom"):
        save_file(tmp_path / "a.ckpt", {"t": torch.ones(1000)})
    assert os.listdir(tmp_path) == []


def test_expected_size_larger_than_the_free_space_fails_early(tmp_path: Path, state: dict[str, Any]) -> None:
    with pytest.raises(OSError, match="needs about") as error:
        save_file(tmp_path / "a.ckpt", state, expected_size=10**18)
    assert error.value.errno == errno.ENOSPC and os.listdir(tmp_path) == []


def test_saving_over_an_existing_file_replaces_it(tmp_path: Path, state_factory: Any, same: Any) -> None:
    path = tmp_path / "a.ckpt"
    save_file(path, state_factory(1))
    save_file(path, state_factory(2))
    same(load_file(path), state_factory(2))
    assert os.listdir(tmp_path) == ["a.ckpt"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"path": ""}, "non-empty path"),
        ({"path": 3}, "non-empty path"),
        ({"path": "dir/"}, "names a directory"),
        ({"metadata": {"stp": 1}}, "unknown keys"),
        ({"expected_size": -1}, "expected_size"),
        ({"storage_options": "s3"}, "storage_options"),
    ],
)
def test_save_arguments_are_validated(
    tmp_path: Path, state: dict[str, Any], kwargs: dict[str, Any], fragment: str
) -> None:
    arguments = {"path": tmp_path / "a.ckpt", **kwargs}
    with pytest.raises(MisconfigurationException, match=fragment):
        save_file(arguments.pop("path"), state, **arguments)


def test_save_refuses_non_dict_states_and_directories(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="state must be a dict"):
        save_file(tmp_path / "a.ckpt", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationException, match="existing directory"):
        save_file(tmp_path, {"a": 1})


def test_load_arguments_are_validated(tmp_path: Path, state: dict[str, Any], memory_dir: str) -> None:
    save_file(tmp_path / "a.ckpt", state)
    with pytest.raises(MisconfigurationException, match="verify must be True or False"):
        load_file(tmp_path / "a.ckpt", verify="yes")  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationException, match="mmap=True needs a local file"):
        load_file(f"{memory_dir}/a.ckpt", mmap=True)


def test_read_info_and_verify_on_files_without_trailer(tmp_path: Path, state: dict[str, Any]) -> None:
    path = tmp_path / "plain.ckpt"
    torch.save(state, path)
    assert read_info(path) is None
    with pytest.raises(CheckpointError, match="no stepstone trailer"):
        verify_file(path)


def test_remote_round_trip(memory_dir: str, state: dict[str, Any], same: Any) -> None:
    url = f"{memory_dir}/sub/step=3.ckpt"
    record = save_file(url, state, metadata={"step": 3})
    assert record.path == url and not is_local(url)
    same(load_file(url), state)
    assert read_info(url) == record
    assert verify_file(url).verified


def test_remote_corruption_is_detected(memory_dir: str, state: dict[str, Any]) -> None:
    url = f"{memory_dir}/a.ckpt"
    save_file(url, state)
    fs = fsspec.filesystem("memory")
    path = url[len("memory://") :]
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 1
    fs.pipe_file(path, bytes(data))
    with pytest.raises(CheckpointCorruptError) as error:
        load_file(url)
    assert error.value.path == url
    with pytest.raises(CheckpointCorruptError):
        verify_file(url)


def test_remote_failure_mid_write_leaves_no_object(memory_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{memory_dir}/a.ckpt"
    monkeypatch.setattr(torch.Tensor, "__reduce_ex__", _explode)
    with pytest.raises(RuntimeError, match="boom"):
        save_file(url, {"t": torch.ones(3)})
    assert not fsspec.filesystem("memory").exists(url[len("memory://") :])


def test_copy_link_remove_and_sweep(
    tmp_path: Path, state: dict[str, Any], same: Any, memory_dir: str
) -> None:
    source = tmp_path / "step=1.ckpt"
    saved = save_file(source, state, metadata={"step": 1})
    copied = copy_file(source, tmp_path / "last.ckpt")
    assert copied.name == "last.ckpt" and copied.digest == saved.digest and copied.step == 1
    same(load_file(tmp_path / "last.ckpt"), state)
    remote = copy_file(source, f"{memory_dir}/last.ckpt")
    assert remote.digest == saved.digest
    link_file(source, tmp_path / "link.ckpt")
    assert os.readlink(tmp_path / "link.ckpt") == "step=1.ckpt"
    with pytest.raises(MisconfigurationException, match="symlinks need a local path"):
        link_file(source, f"{memory_dir}/link.ckpt")
    remove_file(tmp_path / "link.ckpt")
    remove_file(tmp_path / "link.ckpt")
    remove_file(f"{memory_dir}/last.ckpt")
    (tmp_path / ".x.ckpt.tmp-999999999-0123abcd").write_bytes(b"")
    assert sweep_stale_temps(tmp_path) == [str(tmp_path / ".x.ckpt.tmp-999999999-0123abcd")]
    assert sweep_stale_temps(memory_dir) == []
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "step=1.ckpt"]


def test_copy_refuses_a_source_with_a_damaged_end(tmp_path: Path, state: dict[str, Any]) -> None:
    source = tmp_path / "a.ckpt"
    save_file(source, state)
    source.write_bytes(source.read_bytes()[:-5])
    with pytest.raises(CheckpointCorruptError):
        copy_file(source, tmp_path / "b.ckpt")
    assert not (tmp_path / "b.ckpt").exists()


def test_is_local(tmp_path: Path) -> None:
    assert is_local(tmp_path) and is_local(f"file://{tmp_path}") and is_local("relative/x.ckpt")
    assert not is_local("memory:///x.ckpt")
