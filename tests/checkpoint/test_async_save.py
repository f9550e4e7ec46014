"""save_file_async and CheckpointManager(async_save=True): snapshot, background commit, failures raised."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone.checkpoint.files as files
from blocking import ReleaseWhenBlocked
from stepstone.checkpoint import (
    AsyncWriter,
    CheckpointManager,
    HostStaging,
    KeepLatest,
    load_file,
    save_file_async,
    verify_file,
)
from stepstone.errors import CheckpointError, MisconfigurationException


@pytest.fixture
def slow_saves(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every background save waits for the returned event before it writes a byte."""
    gate = threading.Event()
    real = files.save_file

    def gated(*args: Any, **kwargs: Any) -> Any:
        assert gate.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "save_file", gated)
    yield gate
    gate.set()


def test_the_file_holds_the_state_at_the_call_not_later_in_place_changes(
    tmp_path: Path, state: dict[str, Any], same: Callable[[object, object], None], slow_saves: threading.Event
) -> None:
    expected = copy.deepcopy(state)
    writer = AsyncWriter()
    handle = save_file_async(tmp_path / "a.ckpt", state, writer=writer, staging=HostStaging())
    state["state_dict"]["layer.weight"].mul_(0.0)  # training goes on while the save is still waiting
    state["global_step"] = 999
    assert not (tmp_path / "a.ckpt").exists()
    slow_saves.set()
    record = handle.result(timeout=10)
    writer.close()
    assert record.name == "a.ckpt"
    same(load_file(tmp_path / "a.ckpt"), expected)


def test_unsafe_state_is_refused_in_the_callers_thread(tmp_path: Path) -> None:
    writer = AsyncWriter()
    with pytest.raises(TypeError, match="weights_only"):
        save_file_async(tmp_path / "a.ckpt", {"x": object()}, writer=writer, staging=HostStaging())
    assert not writer.busy
    writer.close()


def test_a_failed_background_save_leaves_nothing_and_is_raised_at_the_next_save(
    tmp_path: Path, state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("injected: no space left")

    monkeypatch.setattr(files, "save_file", failing)
    writer, staging = AsyncWriter(), HostStaging()
    save_file_async(tmp_path / "a.ckpt", state, writer=writer, staging=staging)
    monkeypatch.undo()
    with pytest.raises(OSError, match="injected"):
        save_file_async(tmp_path / "b.ckpt", state, writer=writer, staging=staging)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    writer.close()


def test_async_manager_commits_indexes_and_applies_retention_in_the_background(
    tmp_path: Path, state_factory: Callable[[int], dict[str, Any]], same: Callable[[object, object], None]
) -> None:
    with CheckpointManager(tmp_path, retention=KeepLatest(2), async_save=True) as manager:
        handles = [manager.save(step, state_factory(step)) for step in range(4)]
        manager.wait()
        assert [h.result().step for h in handles] == [0, 1, 2, 3]
        assert [r.step for r in manager.all_checkpoints()] == [2, 3]
        same(manager.restore("latest"), state_factory(3))
    verify_file(tmp_path / "step=3.ckpt")


def test_async_manager_raises_a_failure_at_the_next_save_and_keeps_earlier_checkpoints(
    tmp_path: Path, state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("injected")

    manager = CheckpointManager(tmp_path, async_save=True)
    manager.save(1, state).result()
    monkeypatch.setattr(files, "save_file", failing)
    manager.save(2, state)
    monkeypatch.undo()
    with pytest.raises(OSError, match="injected"):
        manager.save(3, state)
    assert [r.step for r in manager.all_checkpoints()] == [1]
    manager.save(3, state)
    manager.close()
    assert [r.step for r in manager.all_checkpoints()] == [1, 3]
    with pytest.raises(CheckpointError, match="closed"):
        manager.save(4, state)


def test_async_manager_close_waits_for_the_save_in_flight(
    tmp_path: Path, state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = files.save_file
    release = threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "save_file", held)
    manager = CheckpointManager(tmp_path, async_save=True)
    handle = manager.save(7, state)
    assert not handle.done()  # held before its first byte
    releaser = ReleaseWhenBlocked(threading.main_thread(), "close", release)
    manager.close()
    assert releaser.join()  # close was waiting while the save was still held
    assert handle.done() and (tmp_path / "step=7.ckpt").exists()


def test_async_save_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="async_save"):
        CheckpointManager(tmp_path, async_save="yes")  # type: ignore[arg-type]


def test_snapshot_of_a_large_state_copies_each_tensor_once(tmp_path: Path) -> None:
    staging = HostStaging()
    state = {"w": torch.randn(512, 512)}
    writer = AsyncWriter()
    for step in range(3):
        save_file_async(tmp_path / f"{step}.ckpt", state, writer=writer, staging=staging)
    writer.close()
    assert staging.allocations == 1 and staging.nbytes == 512 * 512 * 4
