"""The engine on ``s3://``, against a real S3-API server on loopback (moto, see ``tests/s3_server.py``)."""

from __future__ import annotations

import importlib
import io
import os
import sys
from collections.abc import Callable
from typing import Any

import fsspec
import pytest
import torch

from s3_server import S3Server
from stepstone.checkpoint import (
    CheckpointManager,
    KeepLatest,
    RunIndex,
    load_file,
    read_info,
    save_file,
    verify_file,
)
from stepstone.checkpoint.filesystems import filesystem, is_folder_like
from stepstone.checkpoint.outputs import StreamOutput
from stepstone.errors import CheckpointCorruptError


def _keys(url: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return sorted(os.path.basename(p) for p in fs.find(path))


def test_save_load_verify_round_trip_bitwise(
    s3: S3Server, s3_dir: str, state: dict[str, Any], same: Callable[[object, object], None]
) -> None:
    url = f"{s3_dir}/a.ckpt"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_ENDPOINT_URL_S3")  # only the explicit storage_options name the server here
        options = s3.storage_options
        record = save_file(
            url, state, metadata={"step": 7, "metrics": {"loss": 0.5}}, storage_options=options
        )
        assert record.step == 7 and record.size > 256 * 300 * 4
        same(load_file(url, storage_options=options), state)
        assert verify_file(url, storage_options=options).verified
    info = read_info(url)  # through the environment's endpoint
    assert info is not None and info.metrics == {"loss": 0.5} and info.size == record.size
    # The object is a plain torch file: torch.load reads the downloaded bytes.
    with fsspec.open(url, "rb") as stream:
        data = stream.read()
    same(torch.load(io.BytesIO(data), weights_only=True), state)


def test_a_damaged_object_is_detected(s3_dir: str, state: dict[str, Any]) -> None:
    url = f"{s3_dir}/a.ckpt"
    save_file(url, state)
    with fsspec.open(url, "rb") as stream:
        data = bytearray(stream.read())
    data[len(data) // 2] ^= 0x01
    with fsspec.open(url, "wb") as stream:
        stream.write(bytes(data))
    with pytest.raises(CheckpointCorruptError, match=r"a\.ckpt"):
        load_file(url)


def _fail_after(monkeypatch: pytest.MonkeyPatch, limit: int, on_failure: Callable[[], None]) -> None:
    """Make the remote output raise once ``limit`` bytes were written (a connection lost mid-upload)."""
    original = StreamOutput.write_all
    written = [0]

    def write_all(self: StreamOutput, data: memoryview) -> None:
        if written[0] + len(data) > limit:
            on_failure()
            written[0] = 0  # the next save fails at the same offset
            raise OSError("connection reset by peer")
        written[0] += len(data)
        original(self, data)

    monkeypatch.setattr(StreamOutput, "write_all", write_all)


@pytest.mark.parametrize("multipart", [False, True], ids=["one-put", "multipart"])
def test_a_failed_write_leaves_no_object(
    s3: S3Server, s3_dir: str, multipart: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With 5 MiB parts (S3's minimum) a failure after 7 MiB happens with a part uploaded: the multipart
    # upload must be aborted, not completed; with the default 50 MiB block the object is one PUT at close.
    options = {**s3.storage_options, "default_block_size": 5 << 20} if multipart else s3.storage_options
    fs = fsspec.filesystem("s3", **options)
    in_flight: list[int] = []
    big = {name: torch.arange(3 << 19, dtype=torch.float32) for name in ("a", "b")}  # 6 MiB each
    save_file(f"{s3_dir}/keep.ckpt", {"w": torch.ones(4)}, storage_options=options)
    _fail_after(monkeypatch, 7 << 20, lambda: in_flight.append(len(fs.list_multipart_uploads(s3.bucket))))
    with pytest.raises(OSError, match="connection reset"):
        save_file(f"{s3_dir}/new.ckpt", big, storage_options=options)
    with pytest.raises(OSError, match="connection reset"):  # an overwrite that fails keeps the old object
        save_file(f"{s3_dir}/keep.ckpt", big, storage_options=options)
    monkeypatch.undo()
    assert in_flight == ([1, 1] if multipart else [0, 0])
    assert _keys(s3_dir) == ["keep.ckpt"]
    assert torch.equal(load_file(f"{s3_dir}/keep.ckpt")["w"], torch.ones(4))
    assert fs.list_multipart_uploads(s3.bucket) == []  # aborted, not left to accumulate storage costs


def test_manager_keeps_the_last_n_on_s3(s3_dir: str) -> None:
    with CheckpointManager(s3_dir, retention=KeepLatest(2)) as manager:
        for step in range(1, 6):
            manager.save(step, {"w": torch.full((3,), float(step))}, metrics={"loss": 1.0 / step})
        assert _keys(s3_dir) == ["step=4.ckpt", "step=5.ckpt"]
        assert torch.equal(manager.restore("latest")["w"], torch.full((3,), 5.0))
        assert torch.equal(manager.restore(4)["w"], torch.full((3,), 4.0))
    index = RunIndex(s3_dir)
    assert [(r.name, r.step) for r in index.newest_first()] == [("step=5.ckpt", 5), ("step=4.ckpt", 4)]
    assert index.verify("step=4.ckpt").verified
    index.delete("step=4.ckpt")
    assert _keys(s3_dir) == ["step=5.ckpt"]


def test_async_manager_on_s3(s3_dir: str) -> None:
    with CheckpointManager(s3_dir, retention=KeepLatest(1), async_save=True) as manager:
        for step in (1, 2):
            weights = torch.full((1000,), float(step))
            handle = manager.save(step, {"w": weights})
            weights.zero_()  # after the snapshot: never reaches the object
            assert handle.result().step == step
    assert _keys(s3_dir) == ["step=2.ckpt"]
    assert torch.equal(load_file(f"{s3_dir}/step=2.ckpt")["w"], torch.full((1000,), 2.0))


def test_without_s3fs_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if the package were not installed
    registry = importlib.import_module("fsspec.registry")._registry  # fsspec's cache of imported classes
    monkeypatch.delitem(registry, "s3", raising=False)
    with pytest.raises(ImportError, match=r"'s3://bucket/a\.ckpt'.*pip install stepstone\[s3\]"):
        save_file("s3://bucket/a.ckpt", {"w": torch.ones(1)})
    with pytest.raises(ImportError, match=r"pip install stepstone\[s3\]"):
        CheckpointManager("s3://bucket/run")


def test_an_empty_prefix_serves_as_a_folder_on_s3_but_not_a_file(s3_dir: str, memory_dir: str) -> None:
    # makedirs creates nothing on an object store, so "does the folder exist" is "is the path not a file"
    # (Lightning's rule); a filesystem with real folders keeps isdir.
    fs, folder = filesystem(f"{s3_dir}/logs/version_0")
    fs.makedirs(folder, exist_ok=True)
    assert not fs.isdir(folder) and is_folder_like(fs, folder)
    fs.pipe_file(f"{folder}/taken", b"x")
    assert not is_folder_like(fs, f"{folder}/taken")
    memory, path = filesystem(f"{memory_dir}/absent")
    assert not is_folder_like(memory, path)
    memory.makedirs(path)
    assert is_folder_like(memory, path)
