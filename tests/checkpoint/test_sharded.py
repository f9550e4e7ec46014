"""Sharded checkpoint directories on one process: the commit protocol, refusals, conversion, real kills."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import stepstone as L
from stepstone.checkpoint import link_file, load_file, sharded_commit, verify_file
from stepstone.checkpoint.sharded import (
    MARKER_NAME,
    META_NAME,
    convert_sharded_to_file,
    is_sharded_checkpoint,
    load_sharded,
    read_sharded_info,
    remove_sharded,
    save_sharded,
    verify_sharded,
)
from stepstone.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    MisconfigurationException,
    UnsafeCheckpointError,
)


def _state(value: float) -> dict[str, Any]:
    return {
        "state_dict": {"w": torch.full((3, 4), value), "b": torch.arange(5.0) + value},
        "optimizer_states": [{"state": {"w": {"step": torch.tensor(2.0)}}, "param_groups": [{"lr": 0.1}]}],
        "epoch": 2,
        "global_step": 10,
        "hyper_parameters": {"width": 4},
        "loops": {"fit": {"epoch": 2}},
    }


def _template() -> dict[str, Any]:
    return {
        "state_dict": {"w": torch.zeros(3, 4), "b": torch.zeros(5)},
        "optimizer_states": [{"state": {"w": {"step": torch.tensor(0.0)}}, "param_groups": [{"lr": 0.0}]}],
    }


def test_save_commits_a_directory_with_its_marker_last(tmp_path: Path) -> None:
    path = tmp_path / "epoch=2.ckpt"
    record = save_sharded(path, _state(1.0), metadata={"step": 10, "epoch": 2, "metrics": {"val_loss": 0.25}})
    assert os.listdir(tmp_path) == ["epoch=2.ckpt"]  # no temporary directory left
    assert is_sharded_checkpoint(path)
    names = set(os.listdir(path))
    assert {MARKER_NAME, META_NAME, ".metadata"} <= names and any(n.endswith(".distcp") for n in names)
    marker = json.loads((path / MARKER_NAME).read_text())
    assert set(marker["files"]) == names - {MARKER_NAME}
    for name, entry in marker["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}
    marker_time = (path / MARKER_NAME).stat().st_mtime_ns
    assert all((path / name).stat().st_mtime_ns <= marker_time for name in names)
    assert (record.step, record.epoch, record.metrics) == (10, 2, {"val_loss": 0.25})
    assert read_sharded_info(path).digest == record.digest and verify_sharded(path).verified
    # meta.pt needs no code from the file.
    assert torch.load(path / META_NAME, weights_only=True)["loops"] == {"fit": {"epoch": 2}}

    loaded = load_sharded(path, _template())
    assert torch.equal(loaded["state_dict"]["w"], torch.full((3, 4), 1.0))
    assert loaded["optimizer_states"][0]["param_groups"] == [{"lr": 0.1}]
    assert loaded["hyper_parameters"] == {"width": 4} and loaded["global_step"] == 10


def test_saving_again_replaces_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    save_sharded(path, _state(1.0))
    save_sharded(path, _state(2.0))
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.equal(load_sharded(path, _template())["state_dict"]["b"], torch.arange(5.0) + 2.0)
    link_file(path, tmp_path / "alias.ckpt")  # a `last` alias: the one-file link works for directories
    assert is_sharded_checkpoint(tmp_path / "alias.ckpt") and verify_sharded(tmp_path / "alias.ckpt").verified
    remove_sharded(tmp_path / "alias.ckpt")  # removes the link, keeps its target
    assert os.listdir(tmp_path) == ["last.ckpt"]
    remove_sharded(path)
    assert os.listdir(tmp_path) == []
    remove_sharded(path)  # missing: nothing to do


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="weights_only"):
        save_sharded(tmp_path / "x.ckpt", {**_state(1.0), "callbacks": {"cb": object()}})
    assert os.listdir(tmp_path) == []
    with pytest.raises(MisconfigurationException, match=r"s3://bucket/x.*local"):
        save_sharded("s3://bucket/x", _state(1.0))
    with pytest.raises(CheckpointNotFoundError, match="No sharded checkpoint directory"):
        load_sharded(tmp_path / "missing.ckpt", _template())
    (tmp_path / "file.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointNotFoundError, match="load_file"):
        load_sharded(tmp_path / "file.ckpt", _template())
    save_sharded(tmp_path / "ok.ckpt", _state(1.0))
    with pytest.raises(CheckpointError, match=r"ok.ckpt.*template"):
        load_sharded(tmp_path / "ok.ckpt", {**_template(), "extra": {"t": torch.zeros(1)}})


class _Planted:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (os.getpid, ())  # harmless, but a call: exactly what an attacker's file would do


def test_metadata_that_needs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "planted.ckpt"
    save_sharded(path, _state(1.0))
    (path / ".metadata").write_bytes(pickle.dumps(_Planted()))
    sharded_commit.write_marker(str(path), {})  # checksums that match: only the content is wrong
    with pytest.raises(UnsafeCheckpointError, match=r"posix.getpid is not allowed"):
        load_sharded(path, _template())
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata"):
        convert_sharded_to_file(path, tmp_path / "never.ckpt")
    assert not (tmp_path / "never.ckpt").exists()


class _Tiny(L.LightningModule):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 2)


def test_convert_gives_one_verified_file(tmp_path: Path) -> None:
    source = _Tiny(width=3)
    state = {
        "state_dict": source.state_dict(),
        "epoch": 1,
        "global_step": 5,
        "hyper_parameters": dict(source.hparams),
    }
    save_sharded(tmp_path / "sharded.ckpt", state, metadata={"step": 5, "epoch": 1})
    record = convert_sharded_to_file(tmp_path / "sharded.ckpt", tmp_path / "one.ckpt")
    assert (record.step, record.epoch) == (5, 1) and verify_file(tmp_path / "one.ckpt").verified
    plain = torch.load(tmp_path / "one.ckpt", weights_only=True)
    assert plain.keys() == state.keys() and plain["global_step"] == 5
    assert load_file(tmp_path / "one.ckpt")["state_dict"].keys() == source.state_dict().keys()
    restored = _Tiny.load_from_checkpoint(tmp_path / "one.ckpt")
    assert restored.hparams["width"] == 3
    assert torch.equal(restored.layer.weight, source.layer.weight)


def test_convert_gives_optimizer_state_dicts_that_optimizers_load(tmp_path: Path) -> None:
    # torch.distributed.checkpoint stores nothing for an empty dict and turns keys into strings: SGD without
    # momentum came back as its param_groups alone (Optimizer.load_state_dict and FSDP's resume raised
    # KeyError), and a state keyed by parameter index as "0", "1" (loaded, then silently not applied).
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = nn.Linear(3, 2)
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    momentum = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    plain.step()
    momentum.step()
    # Keyed by parameter names (as FSDPStrategy saves them), then by index (optimizer.state_dict()).
    saved = [get_optimizer_state_dict(model, optimizer) for optimizer in (plain, momentum)]
    saved.append(momentum.state_dict())
    assert saved[0]["state"] == {} and list(saved[2]["state"]) == [0, 1]
    save_sharded(tmp_path / "sharded.ckpt", {"state_dict": model.state_dict(), "optimizer_states": saved})
    convert_sharded_to_file(tmp_path / "sharded.ckpt", tmp_path / "one.ckpt")
    converted = torch.load(tmp_path / "one.ckpt", weights_only=True)["optimizer_states"]
    assert [list(state) for state in converted] == [["state", "param_groups"]] * 3
    assert converted[0] == saved[0]
    assert [list(state["state"]) for state in converted[1:]] == [["weight", "bias"], [0, 1]]
    for state, momentum_value in zip(converted, (0.0, 0.9, 0.9), strict=True):
        fresh = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=1.0, momentum=0.5)
        fresh.load_state_dict(state)  # what a user does with the converted file
        assert (fresh.param_groups[0]["lr"], fresh.param_groups[0]["momentum"]) == (0.1, momentum_value)
        buffers = [fresh.state[param].get("momentum_buffer") for param in fresh.param_groups[0]["params"]]
        expected = [momentum.state[param].get("momentum_buffer") for param in model.parameters()]
        for buffer, want in zip(buffers, expected if momentum_value else [None, None], strict=True):
            assert buffer is want is None or torch.equal(buffer, want)


CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from stepstone.checkpoint import sharded_commit
    from stepstone.checkpoint.sharded import save_sharded

    directory, phase = sys.argv[1], sys.argv[2]
    state = {"state_dict": {"w": torch.full((256, 256), 1.0)}, "epoch": 1}
    save_sharded(f"{directory}/first.ckpt", state)

    def stall(*args, **kwargs):
        print("stalled", flush=True)
        time.sleep(60)

    setattr(sharded_commit, phase, stall)  # the parent kills this process while it waits here
    save_sharded(f"{directory}/second.ckpt", {"state_dict": {"w": torch.full((256, 256), 2.0)}, "epoch": 2})
    """
)


@pytest.mark.parametrize("phase", ["write_marker", "commit_dir"])
def test_a_killed_save_leaves_no_checkpoint_and_the_earlier_one_intact(tmp_path: Path, phase: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), phase], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "stalled"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    names = sorted(os.listdir(tmp_path))
    assert "second.ckpt" not in names and "first.ckpt" in names
    (leftover,) = [n for n in names if n != "first.ckpt"]
    assert leftover.startswith(".second.ckpt.shardtmp-")  # hidden, never a checkpoint
    assert not is_sharded_checkpoint(tmp_path / leftover)
    with pytest.raises(CheckpointNotFoundError):
        load_sharded(tmp_path / "second.ckpt", {"state_dict": {"w": torch.zeros(256, 256)}})
    loaded = load_sharded(tmp_path / "first.ckpt", {"state_dict": {"w": torch.zeros(256, 256)}})
    assert torch.equal(loaded["state_dict"]["w"], torch.full((256, 256), 1.0)) and loaded["epoch"] == 1
    save_sharded(tmp_path / "third.ckpt", {"state_dict": {"w": torch.ones(2)}})  # sweeps the dead writer's
    assert sorted(os.listdir(tmp_path)) == ["first.ckpt", "third.ckpt"]
