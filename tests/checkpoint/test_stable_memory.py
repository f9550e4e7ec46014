"""Recognizing buffers that belong to the state's CPU storages."""

from __future__ import annotations

import torch

from stepstone.checkpoint.stable_memory import StableMemory, buffer_address, memory_view


def test_buffer_address_is_the_data_pointer() -> None:
    tensor = torch.arange(100, dtype=torch.float32)
    view = memoryview(tensor.numpy()).cast("B")
    assert buffer_address(view) == tensor.data_ptr()
    assert buffer_address(view[8:].toreadonly()) == tensor.data_ptr() + 8


def test_views_inside_state_storages_are_stable() -> None:
    base = torch.arange(1000, dtype=torch.int64)
    state = {"a": [base[10:20]], "b": {"c": torch.ones(3)}}
    memory = StableMemory(state)
    whole = memoryview(base.numpy()).cast("B")
    assert memory.contains(whole)  # the view's whole storage counts
    assert memory.contains(whole[100:200])
    assert not memory.contains(memoryview(torch.ones(1000).numpy()).cast("B"))
    assert not memory.contains(memoryview(bytes(100)))


def test_a_buffer_reaching_past_a_storage_is_not_stable() -> None:
    tensor = torch.zeros(16, dtype=torch.uint8)
    memory = StableMemory({"t": tensor})
    assert not StableMemory({}).contains(memoryview(tensor.numpy()))
    assert memory.contains(memoryview(tensor.numpy()))
    bigger = torch.zeros(64, dtype=torch.uint8)
    assert not StableMemory({"t": bigger[:16].clone()}).contains(memoryview(bigger.numpy()))


def test_non_cpu_and_non_strided_tensors_are_ignored() -> None:
    state = {
        "meta": torch.empty(4, device="meta"),
        "sparse": torch.ones(2, 2).to_sparse(),
        "empty": torch.empty(0),
    }
    memory = StableMemory(state)
    assert not memory.contains(memoryview(bytes(8)))


def test_memory_view_reads_a_storage_without_a_copy() -> None:
    tensor = torch.arange(16, dtype=torch.int32)
    storage = tensor.untyped_storage()
    view = memory_view(storage.data_ptr(), storage.nbytes())
    assert view.format == "B" and view.readonly and view.nbytes == 64
    assert bytes(view) == tensor.numpy().tobytes()
    tensor[0] = 99  # the view shows the memory itself
    assert view[0] == 99 and buffer_address(view) == storage.data_ptr()
