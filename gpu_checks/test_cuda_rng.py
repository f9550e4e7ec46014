"""CUDA generator states in exact-resume checkpoints (needs a CUDA GPU; not part of the CPU suite)."""

from __future__ import annotations

import io

import torch

from stepstone.trainer.rng import capture_rng, restore_rng


def test_cuda_generator_states_round_trip_through_a_weights_only_checkpoint() -> None:
    torch.cuda.manual_seed_all(5)
    torch.rand(4, device="cuda")  # initializes CUDA and moves its generator along
    state = capture_rng()
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(8, device="cuda").cpu()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    torch.cuda.manual_seed_all(99)
    restore_rng(loaded)
    assert torch.equal(torch.rand(8, device="cuda").cpu(), expected)
