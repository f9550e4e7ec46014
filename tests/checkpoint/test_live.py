"""Async saves under a memory budget: staged buffers stay within it, the rest is written before training goes on."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from stepstone.checkpoint import (
    AsyncWriter,
    CheckpointManager,
    HostStaging,
    load_file,
    save_file_async,
    verify_file,
)
from stepstone.checkpoint.checksum import ChunkedCrc32
from stepstone.checkpoint.format import MAGIC
from stepstone.checkpoint.live import LiveGate
from stepstone.checkpoint.outputs import FdOutput
from stepstone.checkpoint.stable_memory import buffer_address
from stepstone.errors import MisconfigurationException

_MIB = 1024 * 1024


def big_state() -> dict[str, Any]:
    """Eight 1 MiB weights (written in this order by torch.save) plus small entries."""
    generator = torch.Generator().manual_seed(0)
    weights = {f"w{i}": torch.randn(_MIB // 4, generator=generator) for i in range(8)}
    return {"state_dict": weights, "step": torch.tensor(7), "hyper_parameters": {"lr": 0.1}}


def bump(state: dict[str, Any]) -> None:
    for tensor in state["state_dict"].values():
        tensor.add_(1.0)
    state["step"].add_(1)


@pytest.fixture
def held_trailer(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The last write of every save (the one holding the trailer) waits for the returned event."""
    release = threading.Event()
    real = FdOutput.write_all

    def write_all(self: FdOutput, data: memoryview) -> None:
        if bytes(data[-len(MAGIC) :]) == MAGIC:
            assert release.wait(10)
        real(self, data)

    monkeypatch.setattr(FdOutput, "write_all", write_all)
    yield release
    release.set()


def test_a_budget_stages_only_the_storages_written_last_up_to_it() -> None:
    state = big_state()
    staging = HostStaging(max_staging_bytes=3 * _MIB + 100)
    staged = staging.snapshot(state)
    assert staging.peak_nbytes <= 3 * _MIB + 100 and staging.nbytes <= 3 * _MIB + 100
    live = [
        name
        for name, tensor in staged["state_dict"].items()
        if tensor.data_ptr() == state["state_dict"][name].data_ptr()
    ]
    assert live == ["w0", "w1", "w2", "w3", "w4"]  # w5, w6, w7 and the small step tensor are copied
    assert staging.live_bytes == 5 * _MIB
    assert all(staged["state_dict"][name] is not state["state_dict"][name] for name in live)
    assert not staging.live_gate().is_open
    unlimited = HostStaging()
    unlimited.snapshot(state)
    assert unlimited.live_bytes == 0 and unlimited.live_gate().is_open


def test_shrinking_the_budget_frees_buffers_before_copying() -> None:
    staging = HostStaging()
    staging.snapshot(big_state())
    assert staging.nbytes >= 8 * _MIB
    staging.max_staging_bytes = 2 * _MIB
    staging.snapshot(big_state())
    assert staging.nbytes <= 2 * _MIB and staging.peak_nbytes <= 8 * _MIB + 64


def test_a_budgeted_async_save_is_isolated_and_verifies(
    tmp_path: Path, held_trailer: threading.Event
) -> None:
    state = big_state()
    expected = copy.deepcopy(state)
    staging, writer = HostStaging(max_staging_bytes=2 * _MIB), AsyncWriter()
    handle = save_file_async(tmp_path / "a.ckpt", state, writer=writer, staging=staging)
    assert not handle.done()  # the staged part (and the commit) is still being written in the background
    bump(state)  # the training step right after the save call
    held_trailer.set()
    handle.result(10)
    writer.close()
    loaded = load_file(tmp_path / "a.ckpt")
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in expected["state_dict"].items())
    assert int(loaded["step"]) == 7
    assert verify_file(tmp_path / "a.ckpt").verified
    assert staging.peak_nbytes <= 2 * _MIB


def test_budget_zero_stages_nothing_and_is_synchronous_for_the_data(
    tmp_path: Path, held_trailer: threading.Event
) -> None:
    state = big_state()
    expected = copy.deepcopy(state)
    staging, writer = HostStaging(max_staging_bytes=0), AsyncWriter()
    handle = save_file_async(tmp_path / "z.ckpt", state, writer=writer, staging=staging)
    assert staging.peak_nbytes == 0 and staging.live_bytes >= 8 * _MIB
    bump(state)
    held_trailer.set()
    handle.result(10)
    writer.close()
    loaded = load_file(tmp_path / "z.ckpt")
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in expected["state_dict"].items())
    assert int(loaded["step"]) == 7


def test_a_failed_budgeted_save_releases_the_caller_and_is_raised_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(self: FdOutput, data: memoryview) -> None:
        raise OSError("injected: disk gone")

    monkeypatch.setattr(FdOutput, "write_all", failing)
    staging, writer = HostStaging(max_staging_bytes=_MIB), AsyncWriter()
    handle = save_file_async(tmp_path / "f.ckpt", big_state(), writer=writer, staging=staging)
    with pytest.raises(OSError, match="disk gone"):
        handle.result(10)
    writer.close()
    assert not any(tmp_path.iterdir())


def test_the_manager_passes_the_budget_and_keeps_isolation(
    tmp_path: Path, held_trailer: threading.Event
) -> None:
    state = big_state()
    expected = copy.deepcopy(state)
    with CheckpointManager(tmp_path, async_save=True, max_staging_bytes=_MIB) as manager:
        handle = manager.save(1, state)
        bump(state)
        held_trailer.set()
        handle.result(10)
        restored = manager.restore("latest")
    assert all(torch.equal(restored["state_dict"][k], v) for k, v in expected["state_dict"].items())
    staging = manager.queue.staging if manager.queue is not None else None
    assert staging is not None and staging.peak_nbytes <= _MIB


@pytest.mark.parametrize("value", [-1, 1.5, True, "1GB"])
def test_invalid_budgets_are_refused(tmp_path: Path, value: object) -> None:
    with pytest.raises(MisconfigurationException, match="max_staging_bytes"):
        HostStaging(max_staging_bytes=value)  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationException, match="max_staging_bytes"):
        CheckpointManager(tmp_path, async_save=True, max_staging_bytes=value)  # type: ignore[arg-type]


def test_a_budget_without_async_save_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="async_save=True"):
        CheckpointManager(tmp_path, max_staging_bytes=_MIB)


def test_the_gate_opens_after_the_live_bytes_or_at_the_end_only() -> None:
    data = bytearray(4096)
    view = memoryview(data)
    address = buffer_address(view)
    assert address is not None
    gate = LiveGate([(address, 4096)])
    gate.before_write()
    assert not gate.is_open
    assert not gate.covers(memoryview(bytearray(10)))
    assert gate.covers(view[:1024]) and gate.covers(view[1024:])
    assert not gate.is_open  # torch may still be busy with this record...
    gate.before_write()
    assert gate.is_open  # ...until its next write
    opaque = LiveGate(opaque=True)
    opaque.before_write()
    assert not opaque.is_open
    opaque.open()
    opaque.wait()
    assert LiveGate().is_open


_RSS_SCRIPT = """
import resource, sys, torch
from stepstone.checkpoint import AsyncWriter, HostStaging, save_file_async
state = {f"w{i}": torch.randn(8 * 1024 * 1024 // 4) for i in range(16)}  # 128 MiB
save_file_async(sys.argv[1] + "/warm.ckpt", {"x": torch.ones(10)}, writer=AsyncWriter(), staging=HostStaging()).result()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
writer = AsyncWriter()
staging = HostStaging(max_staging_bytes=int(sys.argv[2]))
save_file_async(sys.argv[1] + "/big.ckpt", state, writer=writer, staging=staging, progress=False).result()
writer.close()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, staging.peak_nbytes)
"""


def test_peak_rss_of_a_budgeted_save_stays_near_the_budget(tmp_path: Path) -> None:
    budget = 16 * _MIB
    result = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(tmp_path), str(budget)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    extra_rss, peak_staged = (int(word) for word in result.stdout.split())
    assert peak_staged <= budget
    assert extra_rss < budget + 40 * _MIB  # a full copy would be +128 MiB


def test_live_memory_is_checksummed_before_the_caller_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_trailer: threading.Event
) -> None:
    real = ChunkedCrc32.update

    def slow_update(self: ChunkedCrc32, data: memoryview) -> None:
        time.sleep(0.02)  # the CRC worker lags behind the writes
        real(self, data)

    monkeypatch.setattr(ChunkedCrc32, "update", slow_update)
    state = big_state()
    writer = AsyncWriter()
    handle = save_file_async(
        tmp_path / "c.ckpt", state, writer=writer, staging=HostStaging(max_staging_bytes=0), progress=False
    )
    bump(state)
    held_trailer.set()
    handle.result(10)
    writer.close()
    assert verify_file(tmp_path / "c.ckpt").verified


def test_model_checkpoint_passes_its_budget_to_the_trainers_async_saves(tmp_path: Path) -> None:
    # The Trainer-side pass-through (ModelCheckpoint -> the port's SaveQueue -> HostStaging), tested with the engine.
    from scripted import ScriptedModel, loader, trainer
    from stepstone.callbacks import ModelCheckpoint

    with pytest.raises(MisconfigurationException, match="max_staging_bytes"):
        ModelCheckpoint(async_save=True, max_staging_bytes=-1)
    cb = ModelCheckpoint(
        dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=-1, async_save=True, max_staging_bytes=0
    )
    t = trainer(tmp_path, [cb], max_steps=3, limit_val_batches=0)
    t.fit(ScriptedModel([0.5]), loader())
    staging = t.checkpoint_port.queue.staging
    assert staging is not None and staging.peak_nbytes == 0 and staging.max_staging_bytes == 0
    files = sorted((tmp_path / "c").glob("*.ckpt"))
    assert len(files) == 3 and all(verify_file(path).verified for path in files)
