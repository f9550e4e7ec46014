"""HostStaging: snapshots into reusable host buffers, isolated from later in-place changes."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from stepstone.checkpoint import HostStaging, load_file, save_file


def test_snapshot_equals_the_state_and_ignores_later_in_place_changes(
    state: dict[str, Any], same: Callable[[object, object], None]
) -> None:
    expected = copy.deepcopy(state)
    staged = HostStaging().snapshot(state)
    state["state_dict"]["layer.weight"].add_(1.0)
    state["optimizer_states"][0]["param_groups"][0]["lr"] = 99.0
    state["hyper_parameters"]["name"] = "changed"
    same(staged, expected)


def test_buffers_are_allocated_once_and_reused(state_factory: Callable[[int], dict[str, Any]]) -> None:
    staging = HostStaging()
    first = staging.snapshot(state_factory(0))
    pointers = {key: buffer.data_ptr() for key, buffer in staging.buffers().items()}
    allocations = staging.allocations
    second = staging.snapshot(state_factory(1))
    assert staging.allocations == allocations
    assert {key: buffer.data_ptr() for key, buffer in staging.buffers().items()} == pointers
    weight = second["state_dict"]["layer.weight"]
    assert weight.untyped_storage().data_ptr() in pointers.values()
    assert torch.equal(weight, state_factory(1)["state_dict"]["layer.weight"])
    # The first snapshot's tensors are views of the same buffers: overwritten, as documented.
    assert first["state_dict"]["layer.weight"].data_ptr() == weight.data_ptr()


def test_memory_is_one_copy_of_the_distinct_storages() -> None:
    base = torch.arange(1000, dtype=torch.float32)
    state = {"a": base, "tied": base, "view": base[10:20], "other": torch.ones(50, dtype=torch.float64)}
    staging = HostStaging()
    staged = staging.snapshot(state)
    assert staging.nbytes == 1000 * 4 + 50 * 8
    storages = {staged[name].untyped_storage().data_ptr() for name in ("a", "tied", "view")}
    assert len(storages) == 1  # ties and views stay shared, as torch.save would write them
    assert staged["view"].storage_offset() == 10 and torch.equal(staged["view"], base[10:20])


def test_positions_no_longer_in_the_state_free_their_buffers() -> None:
    staging = HostStaging()
    staging.snapshot({"a": torch.zeros(100), "b": torch.zeros(200)})
    staging.snapshot({"a": torch.zeros(100)})
    assert staging.nbytes == 400
    staging.release()
    assert staging.nbytes == 0


def test_containers_are_copied_with_their_attributes() -> None:
    weights: OrderedDict[str, Any] = OrderedDict(w=torch.ones(3))
    weights._metadata = {"": {"version": 2}}  # type: ignore[attr-defined]  # what module.state_dict() carries
    state = {"state_dict": weights, "steps": [1, 2], "pair": (torch.zeros(2), 3), "tags": {"x"}}
    staged = HostStaging().snapshot(state)
    assert type(staged["state_dict"]) is OrderedDict and staged["state_dict"]._metadata == {
        "": {"version": 2}
    }
    assert (
        staged["state_dict"] is not weights
        and staged["steps"] == [1, 2]
        and staged["steps"] is not state["steps"]
    )
    assert isinstance(staged["pair"], tuple) and staged["tags"] == {"x"}


def test_parameters_and_sparse_tensors_are_copied() -> None:
    parameter = torch.nn.Parameter(torch.ones(4))
    sparse = torch.eye(3).to_sparse()
    staged = HostStaging().snapshot({"p": parameter, "s": sparse})
    assert isinstance(staged["p"], torch.nn.Parameter) and staged["p"].requires_grad
    assert staged["p"].data_ptr() != parameter.data_ptr()
    assert torch.equal(staged["s"].to_dense(), torch.eye(3))


def test_a_snapshot_saves_and_loads_like_the_state(
    tmp_path: Any, state: dict[str, Any], same: Callable[[object, object], None]
) -> None:
    path = str(tmp_path / "a.ckpt")
    save_file(path, HostStaging().snapshot(state))
    same(load_file(path), state)


def test_large_storages_are_copied_in_pieces_by_several_threads_and_land_whole() -> None:
    import threading

    from stepstone.checkpoint import staging

    # Odd sizes (not a multiple of the piece size), a view into the middle, and a small tensor beside them.
    big = torch.arange(staging._SPLIT_MIN // 4 * 3 + 7, dtype=torch.float32)
    state = {
        "big": big,
        "view": big[1000:5000],
        "odd": torch.randn(staging._SPLIT_MIN // 2 + 3),
        "small": torch.ones(3),
    }
    seen: set[str] = set()
    copy_ = torch.Tensor.copy_

    def spy(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.add(threading.current_thread().name)
        return copy_(self, *args, **kwargs)

    torch.Tensor.copy_ = spy  # type: ignore[method-assign]
    try:
        staged = HostStaging().snapshot(state)
    finally:
        torch.Tensor.copy_ = copy_  # type: ignore[method-assign]
    for name, value in state.items():
        assert torch.equal(staged[name], value), name
    assert staged["view"].untyped_storage().data_ptr() == staged["big"].untyped_storage().data_ptr()
    if staging._COPY_THREADS > 1:
        assert any(name.startswith("stepstone-snapshot") for name in seen)
    assert not any(t.name.startswith("stepstone-snapshot") for t in threading.enumerate())
