"""summarize / ModelSummary: the same table as Lightning 2.6.6's utility for the same modules."""

from __future__ import annotations

from typing import Any

import lightning as PL
import pytest
import torch
from lightning.pytorch.utilities import model_summary as pl_summary
from torch import nn

import stepstone as SS
from stepstone.errors import MisconfigurationException
from stepstone.utilities import model_summary as ss_summary


def _module(base: Any, example: bool, lazy: bool = False) -> Any:
    class Model(base.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            inner = nn.Sequential(nn.ReLU(), nn.LazyLinear(2) if lazy else nn.Linear(64, 2))
            self.net = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), inner)
            self.head = nn.Linear(2, 1)
            self.frozen = nn.Linear(3, 3).requires_grad_(False).eval()  # non-trainable, eval, never called
            self.extra = nn.Parameter(torch.zeros(5))  # a parameter outside any layer: "other params"
            if example:
                self.example_input_array = torch.zeros(4, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.net(x))

    return Model()


@pytest.mark.parametrize("example", [False, True])
@pytest.mark.parametrize("max_depth", [0, 1, 2, -1])
def test_table_matches_lightning(example: bool, max_depth: int) -> None:
    torch.manual_seed(0)
    lightning = str(pl_summary.summarize(_module(PL, example), max_depth=max_depth))
    stepstone = str(ss_summary.summarize(_module(SS, example), max_depth=max_depth))
    assert stepstone == lightning
    assert "Total Flops" in stepstone


def test_example_input_gives_sizes_and_flops_and_keeps_modes() -> None:
    model = _module(SS, example=True)
    summary = ss_summary.ModelSummary(model, max_depth=-1)
    assert summary.layer_names[:2] == ["net", "net.0"]
    assert summary.in_sizes[1] == [4, 32] and summary.out_sizes[1] == [4, 64]
    assert summary.in_sizes[-1] == "?"  # the frozen layer never runs
    assert summary.total_flops == 2 * 4 * (32 * 64 + 64 * 2 + 2 * 1)
    assert summary.total_training_modes == {"train": 7, "eval": 1}
    assert model.training and not model.frozen.training  # the eval() forward pass restored the modes
    assert summary.trainable_parameters == summary.total_parameters - 12


def test_lazy_parameters_warn_like_lightning() -> None:
    with pytest.warns(UserWarning, match="UninitializedParameter"):
        summary = ss_summary.summarize(_module(SS, example=False, lazy=True))
        assert summary.total_parameters == 32 * 64 + 64 + 2 * 64 + 3 + 12 + 5  # the lazy layer counts 0
    with pytest.warns(UserWarning):
        assert str(summary) == str(pl_summary.summarize(_module(PL, example=False, lazy=True)))


@pytest.mark.parametrize("number", [0, 5, 123, 999, 1000, 1234, 99_949, 100_000, 2e6, 3e9, 4e14, 5e15])
def test_human_readable_count_matches_lightning(number: float) -> None:
    assert ss_summary.get_human_readable_count(number) == pl_summary.get_human_readable_count(number)


def test_size_format_matches_lightning() -> None:
    for size in (0.0, 0.0101, 1024.5):
        assert ss_summary.get_formatted_model_size(size) == pl_summary.get_formatted_model_size(size)


@pytest.mark.parametrize("bad", [-2, 1.5, "1", True])
def test_invalid_max_depth_names_the_value(bad: Any) -> None:
    with pytest.raises(MisconfigurationException, match=f"max_depth={bad!r}"):
        ss_summary.ModelSummary(_module(SS, example=False), max_depth=bad)
    assert issubclass(MisconfigurationException, ValueError)  # Lightning raises ValueError here
