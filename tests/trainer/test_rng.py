"""Generator states survive a weights_only checkpoint round trip and continue the same random streams."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from stepstone.trainer.rng import capture_rng, restore_rng


def _draw() -> tuple[float, float, float, list[float]]:
    return random.random(), random.gauss(0, 1), float(np.random.rand()), torch.rand(3).tolist()


def test_a_captured_state_round_trips_through_weights_only_load_and_continues_every_stream() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = capture_rng()
    expected = _draw()
    buffer = io.BytesIO()
    torch.save({"rng": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["rng"]
    random.seed(10)
    np.random.seed(20)
    torch.manual_seed(30)
    restore_rng(loaded)
    assert _draw() == expected


def test_missing_generators_are_left_alone() -> None:
    torch.manual_seed(4)
    before = random.getstate()
    restore_rng({"torch": torch.get_rng_state()})
    assert random.getstate() == before


@pytest.mark.filterwarnings("error")  # numpy warns if captured with get_state(legacy=True)
def test_a_numpy_bit_generator_other_than_mt19937_round_trips_and_is_reinstalled() -> None:
    original = np.random.get_bit_generator()
    try:
        np.random.set_bit_generator(np.random.PCG64(7))
        np.random.normal()  # leaves a cached gaussian in the legacy state
        buffer = io.BytesIO()
        torch.save(capture_rng(), buffer)
        expected = [float(np.random.normal()) for _ in range(3)]
        # A fresh process that has not installed the bit generator yet: restoring installs it.
        np.random.set_bit_generator(np.random.MT19937(0))
        buffer.seek(0)
        restore_rng(torch.load(buffer, weights_only=True))
        assert type(np.random.get_bit_generator()).__name__ == "PCG64"
        assert [float(np.random.normal()) for _ in range(3)] == expected
    finally:
        np.random.set_bit_generator(original)
