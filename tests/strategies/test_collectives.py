"""The process group and collectives: no-ops on one process, real on two gloo ranks, never a hang."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from stepstone.errors import MisconfigurationException
from stepstone.strategies import (
    agree,
    all_gather_object,
    backend_for,
    barrier,
    broadcast_object,
    ddp_spawn,
    init_process_group,
    is_distributed,
    reduce,
    single_process,
)
from stepstone.strategies.collectives import get_rank, get_world_size
from strategies import dist_workers


def test_every_helper_is_a_no_op_on_one_process() -> None:
    value = torch.tensor([1.0, 2.0])
    assert reduce(value, "mean") is value
    assert reduce(value, "max") is value
    box = {"a": 1}
    assert broadcast_object(box) is box
    assert all_gather_object(3) == [3]
    assert agree(True) is True
    assert agree(False, "any") is False
    barrier("nothing to wait for")
    assert not is_distributed()
    assert (get_rank(), get_world_size()) == (0, 1)
    assert init_process_group(single_process()) is False
    assert not dist.is_initialized()


def test_invalid_arguments_name_the_value() -> None:
    with pytest.raises(MisconfigurationException, match="reduction='median'"):
        reduce(torch.tensor(1.0), "median")
    with pytest.raises(MisconfigurationException, match="require='most'"):
        agree(True, "most")
    with pytest.raises(MisconfigurationException, match="backend='mpi'"):
        init_process_group(single_process(), "mpi")
    with pytest.raises(MisconfigurationException, match="timeout="):
        init_process_group(single_process(), "gloo", timedelta(seconds=0))
    assert backend_for("cuda") == "nccl"
    assert backend_for("cpu") == "gloo"


@pytest.mark.timeout(60)
def test_collectives_on_two_gloo_ranks() -> None:
    ranks = ddp_spawn(dist_workers.collectives_roundtrip, 2)
    assert [seen["rank"] for seen in ranks] == [0, 1]
    for seen in ranks:
        assert (seen["world"], seen["get_rank"], seen["distributed"]) == (2, seen["rank"], True)
        assert seen["mean"] == [1.5, 15.0]
        assert seen["avg"] == [1.5, 15.0]
        assert seen["sum"] == [3.0, 30.0]
        assert seen["max"] == [2.0, 20.0]
        assert seen["min"] == [1.0, 10.0]
        assert seen["int_mean"] == 2.5  # an integer mean is not truncated
        assert seen["input_after"] == [seen["rank"] + 1.0, 10.0 * (seen["rank"] + 1)]  # not reduced in place
        assert seen["bcast0"] == {"path": "rank0.ckpt"}
        assert seen["bcast1"] == "from1"
        assert seen["gather"] == [0, 10]
        assert (seen["all"], seen["any"], seen["all_true"], seen["none"]) == (False, True, True, False)
        assert "different barriers" in seen["mismatch"]
        assert "place 0" in seen["mismatch"] and "place 1" in seen["mismatch"]


@pytest.mark.timeout(60)
def test_rank_raising_before_a_barrier_fails_the_other_rank_at_once(tmp_path: Path) -> None:
    out = tmp_path / "rank0.txt"
    # Rank 1 stays alive until rank 0's barrier failed (see raise_before_barrier): no clock involved.
    with pytest.raises(ValueError, match="rank 1 broke before the barrier"):
        ddp_spawn(dist_workers.raise_before_barrier, 2, (str(out),))
    message = out.read_text()
    assert "barrier 'before save'" in message
    assert "rank 0 of 2" in message


@pytest.mark.timeout(60)
def test_a_collective_nobody_joins_fails_within_the_timeout(tmp_path: Path) -> None:
    # Rank 1 stays connected until rank 0's barrier failed (see mismatched_collective): the timeout ended it.
    waited = ddp_spawn(dist_workers.mismatched_collective, 2, (2.0, str(tmp_path / "rank0.txt")))
    assert waited >= 1.6, waited  # and not before the 2 s timeout (a bound the clock can only exceed)
