"""CheckpointManager: save, retention after commit, restore latest/best/step with verified fallback."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from stepstone.checkpoint import (
    AnyOf,
    CheckpointManager,
    KeepBest,
    KeepEveryNSteps,
    KeepLatest,
    save_file,
)
from stepstone.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    MisconfigurationException,
)


def _state(step: int) -> dict[str, Any]:
    return {"step": step, "w": torch.full((1000,), float(step))}


def _ckpts(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".ckpt"))


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_save_restore_latest_and_by_step(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        for step in (10, 20, 30):
            handle = manager.save(step, _state(step), metrics={"loss": 1.0 / step}, epoch=step // 10)
            assert handle.done() and handle.result().step == step
        assert manager.latest_step() == 30
        assert manager.restore()["step"] == 30
        assert manager.last_restored is not None and manager.last_restored.verified
        assert manager.restore(20)["step"] == 20
        assert [r.step for r in manager.all_checkpoints()] == [10, 20, 30]
    assert sorted(os.listdir(tmp_path)) == ["step=10.ckpt", "step=20.ckpt", "step=30.ckpt"]  # nothing else


@pytest.mark.parametrize("async_save", [False, True])
def test_the_folder_holds_nothing_but_loadable_checkpoints(tmp_path: Path, async_save: bool) -> None:
    with CheckpointManager(tmp_path, retention=KeepLatest(2), async_save=async_save) as manager:
        for step in range(1, 6):
            manager.save(step, _state(step), metrics={"loss": 1.0 / step})
    assert sorted(os.listdir(tmp_path)) == ["step=4.ckpt", "step=5.ckpt"]
    for name in os.listdir(tmp_path):  # what users do with a folder of checkpoints
        assert torch.load(tmp_path / name, weights_only=True)["step"] == int(name[5:-5])
    with CheckpointManager(tmp_path) as reopened:  # a new manager (and process) sees the same run
        assert [(r.step, r.metrics) for r in reopened.all_checkpoints()] == [
            (4, {"loss": 0.25}),
            (5, {"loss": 0.2}),
        ]
        assert reopened.restore()["step"] == 5


def test_retention_deletes_only_after_the_new_checkpoint_is_committed(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, retention=KeepLatest(2))
    for step in range(1, 6):
        manager.save(step, _state(step))
    assert _ckpts(tmp_path) == ["step=4.ckpt", "step=5.ckpt"]
    assert [r.step for r in manager.all_checkpoints()] == [4, 5]
    manager.close()


def test_failed_save_deletes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = CheckpointManager(tmp_path, retention=KeepLatest(1))
    manager.save(1, _state(1))

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        manager.save(2, _state(2))
    monkeypatch.undo()
    assert _ckpts(tmp_path) == ["step=1.ckpt"]
    assert manager.restore()["step"] == 1
    manager.save(2, _state(2))  # the step was not taken by the failed attempt
    assert _ckpts(tmp_path) == ["step=2.ckpt"]


@pytest.mark.parametrize("async_save", [False, True])
def test_the_free_space_preflight_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, async_save: bool
) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100, 100))
    with CheckpointManager(tmp_path, retention=KeepLatest(1), async_save=async_save) as manager:
        with pytest.raises(OSError, match="Not enough free space") as error:
            manager.save(1, _state(1)).result()
        assert error.value.errno == errno.ENOSPC
    assert _ckpts(tmp_path) == [] and os.listdir(tmp_path) == []


def test_foreign_checkpoints_are_never_deleted(tmp_path: Path) -> None:
    torch.save({"lightning": True}, tmp_path / "lightning.ckpt")
    manager = CheckpointManager(tmp_path, retention=KeepLatest(1))
    for step in (1, 2):
        manager.save(step, _state(step))
    assert _ckpts(tmp_path) == ["lightning.ckpt", "step=2.ckpt"]


def test_restore_latest_falls_back_on_a_corrupt_newest_with_a_warning(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    for step in (1, 2, 3):
        manager.save(step, _state(step))
    _corrupt(tmp_path / "step=3.ckpt")
    with pytest.warns(UserWarning, match=r"step=3\.ckpt.*corrupt.*next candidate \(step=2\.ckpt\)"):
        state = manager.restore("latest")
    assert state["step"] == 2 and manager.last_restored is not None and manager.last_restored.step == 2
    with pytest.raises(CheckpointCorruptError):
        manager.restore(3)  # an explicit step never falls back


def test_restore_when_nothing_valid_is_left(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="No valid checkpoint matches restore\\('latest'\\)"):
        manager.restore()
    manager.save(1, _state(1))
    _corrupt(tmp_path / "step=1.ckpt")
    with (
        pytest.warns(UserWarning),
        pytest.raises(CheckpointNotFoundError, match=r"corrupt: \['step=1.ckpt'\]"),
    ):
        manager.restore()
    with pytest.raises(CheckpointNotFoundError):
        manager.restore(7)


def test_restore_best_by_the_keep_best_metric(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, retention=AnyOf(KeepLatest(1), KeepBest(2, "loss")))
    for step, loss in [(1, 0.9), (2, 0.1), (3, 0.5), (4, 0.7)]:
        manager.save(step, _state(step), metrics={"loss": loss})
    assert _ckpts(tmp_path) == ["step=2.ckpt", "step=3.ckpt", "step=4.ckpt"]
    assert manager.restore("best")["step"] == 2
    _corrupt(tmp_path / "step=2.ckpt")
    with pytest.warns(UserWarning, match="step=2.ckpt"):
        assert manager.restore("best")["step"] == 3


def test_restore_best_with_an_explicit_metric(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, best_metric="acc", best_mode="max")
    manager.save(1, _state(1), metrics={"acc": 0.5})
    manager.save(2, _state(2), metrics={"acc": 0.8})
    manager.save(3, _state(3))  # no metric: never "best"
    assert manager.restore("best")["step"] == 2


def test_restore_best_needs_a_metric(tmp_path: Path) -> None:
    for retention in (None, KeepLatest(2), AnyOf(KeepBest(1, "a"), KeepBest(1, "b"))):
        with pytest.raises(MisconfigurationException, match="best_metric="):
            CheckpointManager(tmp_path, retention=retention).restore("best")


def test_same_step_twice_is_a_clear_error(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save(5, _state(5))
    with pytest.raises(CheckpointError, match="step 5 already exists"):
        manager.save(5, _state(5))


def test_filename_templates(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, filename="epoch={epoch}-step={step}-loss={val/loss:.2f}.ckpt")
    record = manager.save(12, _state(12), metrics={"val/loss": 0.3456}, epoch=2).result()
    assert record.name == "epoch=2-step=12-loss=0.35.ckpt"
    with pytest.raises(MisconfigurationException, match="got no value for them"):
        manager.save(13, _state(13), metrics={})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"filename": "last.ckpt"}, "must contain '{step}'"),
        ({"filename": "step={step}.pt"}, "must end with '.ckpt'"),
        ({"filename": "sub/step={step}.ckpt"}, "plain, non-hidden file name"),
        ({"filename": "step={step.ckpt"}, "not a valid format string"),
        ({"retention": 3}, "is not a policy"),
        ({"best_mode": "max"}, "needs best_metric"),
        ({"best_metric": "loss", "best_mode": "up"}, "mode must be 'min' or 'max'"),
    ],
)
def test_constructor_arguments_are_validated(tmp_path: Path, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MisconfigurationException, match=fragment.replace("(", r"\(").replace("{", r"\{")):
        CheckpointManager(tmp_path, **kwargs)


def test_save_and_restore_arguments_are_validated(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    with pytest.raises(MisconfigurationException, match="metadata\\['step'\\] = -1"):
        manager.save(-1, _state(1))
    with pytest.raises(MisconfigurationException, match="'latest', 'best' or a step"):
        manager.restore("newest")


def test_closed_manager_refuses_saves(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.close()
    manager.close()
    with pytest.raises(CheckpointError, match="closed"):
        manager.save(1, _state(1))


def test_construction_sweeps_stale_temps(tmp_path: Path) -> None:
    stale = tmp_path / ".step=1.ckpt.tmp-999999999-0123abcd"
    stale.write_bytes(b"partial")
    CheckpointManager(tmp_path)
    assert not stale.exists()


def test_every_n_steps_retention(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, retention=AnyOf(KeepLatest(1), KeepEveryNSteps(10)))
    for step in range(0, 35, 5):
        manager.save(step, _state(step))
    assert _ckpts(tmp_path) == ["step=0.ckpt", "step=10.ckpt", "step=20.ckpt", "step=30.ckpt"]


def test_remote_manager(memory_dir: str) -> None:
    with CheckpointManager(memory_dir, retention=KeepLatest(2)) as manager:
        for step in (1, 2, 3):
            manager.save(step, _state(step))
        assert [r.step for r in manager.all_checkpoints()] == [2, 3]
        assert manager.restore()["step"] == 3
        assert manager.directory == memory_dir


def test_restore_sees_checkpoints_written_by_others(tmp_path: Path) -> None:
    save_file(tmp_path / "step=100.ckpt", _state(100), metadata={"step": 100})
    assert CheckpointManager(tmp_path).restore()["step"] == 100
