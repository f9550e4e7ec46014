"""Async checkpointing of CUDA state (needs a GPU): pinned, reused host buffers; isolated snapshots."""

from __future__ import annotations

from pathlib import Path

import torch

from stepstone.checkpoint import AsyncWriter, HostStaging, load_file, save_file_async


def test_cuda_state_is_staged_in_pinned_reused_buffers_and_isolated(tmp_path: Path) -> None:
    state = {"w": torch.randn(4096, 1024, device="cuda"), "tied": None}
    state["tied"] = state["w"][:16]
    expected = state["w"].cpu()
    staging, writer = HostStaging(), AsyncWriter()
    handle = save_file_async(tmp_path / "a.ckpt", state, writer=writer, staging=staging)
    state["w"].add_(1.0)  # on the GPU, right after the snapshot
    handle.result()
    buffers = staging.buffers()
    assert len(buffers) == 1 and all(b.is_pinned() for b in buffers.values())
    pointers = {k: b.data_ptr() for k, b in buffers.items()}
    save_file_async(tmp_path / "b.ckpt", state, writer=writer, staging=staging)
    writer.close()
    assert {k: b.data_ptr() for k, b in staging.buffers().items()} == pointers and staging.allocations == 1
    loaded = load_file(tmp_path / "a.ckpt")
    assert loaded["w"].device.type == "cpu" and torch.equal(loaded["w"], expected)
    assert torch.equal(loaded["tied"], expected[:16])
    assert torch.equal(load_file(tmp_path / "b.ckpt")["w"], expected + 1.0)
