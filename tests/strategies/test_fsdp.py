"""FSDPStrategy (FSDP2) on two real gloo ranks, and sharded checkpoints moved between world sizes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

from read_counting import count_reads
from stepstone.checkpoint import load_file
from stepstone.checkpoint.sharded import (
    MARKER_NAME,
    convert_sharded_to_file,
    is_sharded_checkpoint,
    load_sharded,
    save_sharded,
    verify_sharded,
)
from stepstone.checkpoint.sharded_commit import read_marker
from stepstone.errors import CheckpointCorruptError, CheckpointNotFoundError, MisconfigurationException
from stepstone.strategies import ddp_spawn, single_process
from stepstone.strategies.fsdp import FSDPStrategy
from strategies import fsdp_workers
from strategies.fsdp_workers import Net


def _close(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _equal_tree(a: Any, b: Any, close: bool = False) -> bool:
    if isinstance(a, torch.Tensor):
        same = torch.allclose if close else torch.equal
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(same(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal_tree(a[k], b[k], close) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal_tree(x, y, close) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _plain_template(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict[str, Any]:
    return {
        "state_dict": get_model_state_dict(module),
        "optimizer_states": [get_optimizer_state_dict(module, optimizer)],
    }


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(MisconfigurationException, match=r"state_dict_type='local'.*'full'.*'sharded'"):
        FSDPStrategy(state_dict_type="local")
    with pytest.raises(MisconfigurationException, match=r"auto_wrap_policy=.*nn.Module classes"):
        FSDPStrategy(auto_wrap_policy={"Linear"})  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationException, match="setup"):
        FSDPStrategy().model_state_dict()


def test_one_process_keeps_a_plain_module() -> None:
    strategy = FSDPStrategy(single_process(), state_dict_type="full")
    strategy.setup_environment()
    torch.manual_seed(0)
    module = strategy.setup(Net())
    assert module is strategy.unwrap() and not strategy.sharded
    optimizer = torch.optim.Adam(module.parameters(), lr=fsdp_workers.LR)
    fsdp_workers.train(module, optimizer, lambda batch: strategy.call("training_step", batch), slice(0, 8))
    expected, _ = fsdp_workers.reference()
    assert _close(strategy.model_state_dict(), expected.state_dict())
    strategy.teardown()


def test_fsdp_on_two_ranks_and_resharding(tmp_path: Path) -> None:
    # 1 -> 2: a checkpoint written by one process, without a process group, for the two ranks to load.
    torch.manual_seed(7)
    single = Net()
    single_opt = torch.optim.Adam(single.parameters(), lr=fsdp_workers.LR)
    fsdp_workers.train(single, single_opt, single.training_step, slice(0, 8))
    one_rank = str(tmp_path / "one-rank.ckpt")
    save_sharded(one_rank, {**_plain_template(single_opt, single), "epoch": 4, "global_step": 9})
    two_rank = str(tmp_path / "two-rank.ckpt")

    rank0, rank1 = ddp_spawn(fsdp_workers.fsdp_checks, 2, (one_rank, two_rank))

    expected, expected_opt = fsdp_workers.reference()
    # FSDP on two half batches takes the same steps as one process on the whole batch.
    assert rank0["sharded"] and rank0["param_types"] == ["DTensor"]
    assert rank0["local_a_weight"] == torch.Size([4, 5])  # 7 rows over 2 ranks: 4 + 3
    assert _close(rank0["trained"]["model"], expected.state_dict())
    assert _equal_tree(
        rank0["trained"]["optim"], get_optimizer_state_dict(expected, expected_opt), close=True
    )
    # "full": rank 0 gets the whole state dict (plain CPU tensors), the other rank nothing.
    assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in rank0["trained"]["model"].values())
    assert rank1["trained"] == {"model": {}, "optim": {}}
    assert rank0["trained"]["optim"]["param_groups"][0]["params"] == [
        "a.weight",
        "a.bias",
        "b.weight",
        "b.bias",
    ]
    # A damaged shard of rank 1's file: every rank raises the error naming it (not a torch wrapper).
    for seen in (rank0, rank1):
        assert seen["damaged"][:2] == ("CheckpointCorruptError", "__1_0.distcp")
        assert "CRC32 mismatch" in seen["damaged"][2]
    assert rank0["unreadable_on_rank1"] == rank1["unreadable_on_rank1"] == ".metadata: rank 1 cannot read it"
    # 1 -> 2: the two ranks loaded the one-process checkpoint (over the damaged load's partial fill).
    assert _close(rank0["from_one_rank"]["model"], single.state_dict())
    assert _equal_tree(rank0["from_one_rank"]["optim"], get_optimizer_state_dict(single, single_opt))
    assert rank0["from_one_rank_meta"] == {"epoch": 4, "global_step": 9}
    # A full state held by rank 0 only is broadcast, and the caller's dict is left alone.
    assert _equal_tree(rank0["from_rank0"], rank0["trained"]) and rank0["full_untouched"]
    assert rank0["record"] == rank1["record"] and rank0["record"].step == fsdp_workers.STEPS

    # 2 -> 1: the two ranks' shards load into one plain model, each file read once (and verified).
    module = Net()
    optimizer = torch.optim.Adam(module.parameters(), lr=fsdp_workers.LR)
    with pytest.MonkeyPatch.context() as monkeypatch:
        reads = count_reads(monkeypatch, two_rank)
        loaded = load_sharded(two_rank, _plain_template(optimizer, module))
    sizes = {name: entry["size"] for name, entry in read_marker(two_rank)["files"].items()}
    assert {name: reads[name] for name in sizes} == sizes and "__1_0.distcp" in sizes
    assert _close(loaded["state_dict"], expected.state_dict())
    assert _equal_tree(loaded["optimizer_states"][0], rank0["trained"]["optim"])
    assert loaded["loops"] == {"fit": {"batch": 2}} and loaded["epoch"] == 1
    module.load_state_dict(loaded["state_dict"])
    assert _close(module.state_dict(), expected.state_dict())

    # One file, readable without any code from it.
    single_file = str(tmp_path / "converted.ckpt")
    record = convert_sharded_to_file(two_rank, single_file)
    assert record.step == fsdp_workers.STEPS and record.epoch == 1
    plain = torch.load(single_file, weights_only=True)
    assert _close(plain["state_dict"], expected.state_dict())
    assert _equal_tree(plain["optimizer_states"][0], rank0["trained"]["optim"])
    assert _equal_tree(load_file(single_file), plain) and plain["global_step"] == fsdp_workers.STEPS

    _check_refusals(tmp_path, two_rank, optimizer, module)


def _check_refusals(
    tmp_path: Path, committed: str, optimizer: torch.optim.Optimizer, module: nn.Module
) -> None:
    unmarked = str(tmp_path / "unmarked.ckpt")
    shutil.copytree(committed, unmarked)
    (Path(unmarked) / MARKER_NAME).unlink()
    assert not is_sharded_checkpoint(unmarked) and is_sharded_checkpoint(committed)
    with pytest.raises(CheckpointNotFoundError, match=f"no {MARKER_NAME} marker"):
        load_sharded(unmarked, _plain_template(optimizer, module))

    corrupt = tmp_path / "corrupt.ckpt"
    shutil.copytree(committed, corrupt)
    shard = corrupt / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match=r"__1_0\.distcp.*CRC32 mismatch"):
        load_sharded(str(corrupt), _plain_template(optimizer, module))
    with pytest.raises(CheckpointCorruptError, match=r"__1_0\.distcp"):
        verify_sharded(str(corrupt))
    with pytest.raises(CheckpointCorruptError, match=r"__1_0\.distcp"):
        convert_sharded_to_file(str(corrupt), str(tmp_path / "never.ckpt"))
    assert not (tmp_path / "never.ckpt").exists()
