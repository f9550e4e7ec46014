"""Accelerator, devices, strategy and precision resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import BoringModel, make_trainer
from stepstone.errors import MisconfigurationException
from stepstone.trainer.device import resolve_placement


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this machine look GPU-less, so these tests run (and mean the same) on GPU machines too."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


no_cuda = pytest.mark.usefixtures("no_gpu")


def test_cpu_placement() -> None:
    placement = resolve_placement("cpu", "auto", "auto", None)
    assert placement.accelerator == "cpu"
    assert placement.device == torch.device("cpu")
    assert placement.precision == "32-true"
    assert placement.scaler is None


@no_cuda
def test_auto_is_cpu_without_cuda() -> None:
    assert resolve_placement("auto", "auto", "auto", None).device == torch.device("cpu")


@pytest.mark.parametrize("devices", ["auto", 1, "1", -1, None])
def test_single_device_forms(devices: object) -> None:
    assert resolve_placement("cpu", devices, "auto", None).device == torch.device("cpu")


@pytest.mark.parametrize(
    ("precision", "resolved"),
    [
        (None, "32-true"),
        (32, "32-true"),
        ("32", "32-true"),
        ("32-true", "32-true"),
        ("bf16-mixed", "bf16-mixed"),
        ("bf16", "bf16-mixed"),
    ],
)
def test_precision_aliases(precision: object, resolved: str) -> None:
    assert resolve_placement("cpu", "auto", "auto", precision).precision == resolved


def test_strategy_names_are_case_insensitive() -> None:
    assert resolve_placement("cpu", 1, "SINGLE_DEVICE", None).device == torch.device("cpu")


def test_device_index_list_on_cpu_raises() -> None:
    with pytest.raises(MisconfigurationException, match=r"devices=\[0\].*on CPU pass devices=1"):
        resolve_placement("cpu", [0], "auto", None)


def test_several_devices_raise_with_the_fix() -> None:
    with pytest.raises(MisconfigurationException, match=r"devices=4.*pass devices=1"):
        resolve_placement("cpu", 4, "auto", None)


@no_cuda
def test_16_mixed_needs_cuda() -> None:
    with pytest.raises(MisconfigurationException, match=r"precision='16-mixed'.*bf16-mixed"):
        resolve_placement("cpu", 1, "auto", "16-mixed")


@no_cuda
def test_mps_unavailable_raises() -> None:
    with pytest.raises(MisconfigurationException, match="mps"):
        resolve_placement("mps", 1, "auto", None)


def test_autocast_context_is_a_noop_in_32_bit() -> None:
    placement = resolve_placement("cpu", 1, "auto", "32-true")
    with placement.forward_context():
        assert (torch.ones(2) @ torch.ones(2)).dtype == torch.float32


def test_bf16_mixed_trains_on_cpu(tmp_path: Path) -> None:
    seen: list[torch.dtype] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            out = self(batch)
            seen.append(out.dtype)
            return self.loss(out.float())

    model = Model()
    trainer = make_trainer(tmp_path, precision="bf16-mixed", max_steps=2, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.precision == "bf16-mixed"
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert model.layer.weight.dtype == torch.float32  # mixed: the weights stay in float32
    assert trainer.global_step == 2
