"""Fixtures shared by the checkpoint engine tests (helpers are fixtures: test modules import nothing from here)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import pytest
import torch


def make_state(seed: int = 0) -> dict[str, Any]:
    """A small Lightning-like checkpoint with nested containers and tensors of several sizes."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(256, 300, generator=generator)  # > 256 KiB: exercises the large-buffer path
    return {
        "epoch": 3,
        "global_step": 120 + seed,
        "state_dict": {"layer.weight": weight, "layer.bias": torch.randn(300, generator=generator)},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 0.1}]}],
        "hyper_parameters": {"lr": 0.1, "name": "demo", "layers": (1, 2, 3)},
        "loops": {"fit_loop": {"epoch_progress": {"total": {"completed": 3}}}},
    }


def assert_same(actual: object, expected: object) -> None:
    """Deep equality for nested checkpoint structures holding tensors."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert torch.equal(actual, expected)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys()
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected)  # type: ignore[arg-type]
        for left, right in zip(actual, expected, strict=True):  # type: ignore[call-overload]
            assert_same(left, right)
    else:
        assert actual == expected


@pytest.fixture
def state() -> dict[str, Any]:
    """A fresh small checkpoint state."""
    return make_state()


@pytest.fixture
def state_factory() -> Callable[[int], dict[str, Any]]:
    """``make_state(seed)``: small checkpoint states that differ by seed."""
    return make_state


@pytest.fixture
def same() -> Callable[[object, object], None]:
    """``assert_same(actual, expected)``: deep equality for nested structures holding tensors."""
    return assert_same


@pytest.fixture
def memory_dir() -> Iterator[str]:
    """A unique directory URL on fsspec's in-memory filesystem, removed afterwards."""
    url = f"memory:///stepstone-tests/{uuid.uuid4().hex}"  # the canonical form fsspec gives back
    yield url
    fs = fsspec.filesystem("memory")
    path = url[len("memory://") :]
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture(params=["fast", "reference"])
def serializer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test on both serializers: stepstone's zip writer and plain ``torch.save`` (STEPSTONE_SERIALIZER)."""
    from stepstone.checkpoint import torch_zip

    monkeypatch.setenv(torch_zip.SERIALIZER_ENV, request.param)
    assert torch_zip.supported() is (request.param == "fast")
    return str(request.param)
