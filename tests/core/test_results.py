"""The metric store behind ``self.log``: conversion, batch sizes, reductions and names."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stepstone.core.results import MetricMeta, Results, extract_batch_size, resolve_meta, to_metric_tensor
from stepstone.errors import MisconfigurationException


def _meta(
    name: str = "m",
    reduce_fx: Any = "mean",
    on_step: bool = False,
    on_epoch: bool = True,
    sync_dist: bool = False,
    **kw: Any,
) -> MetricMeta:
    return resolve_meta(
        name,
        default_on_step=False,
        default_on_epoch=True,
        on_step=on_step,
        on_epoch=on_epoch,
        prog_bar=False,
        logger=None,
        reduce_fx=reduce_fx,
        sync_dist=sync_dist,
        **kw,
    )


class TestToMetricTensor:
    def test_numbers(self) -> None:
        for value in (1, 2.5, True, np.float32(1.5), np.int64(4)):
            tensor = to_metric_tensor("x", value)
            assert tensor.shape == () and tensor.dtype == torch.float32
            assert tensor.item() == float(value)

    def test_tensors_are_detached_and_squeezed(self) -> None:
        leaf = torch.ones(1, 1, requires_grad=True)
        tensor = to_metric_tensor("x", leaf * 3)
        assert tensor.shape == () and not tensor.requires_grad and tensor.item() == 3.0
        assert to_metric_tensor("x", torch.tensor(7)).dtype == torch.float32
        assert to_metric_tensor("x", torch.tensor(0.5, dtype=torch.float64)).dtype == torch.float64

    @pytest.mark.parametrize("value", [torch.ones(3), torch.ones(0), "a", None, [1.0], 1j])
    def test_invalid(self, value: Any) -> None:
        with pytest.raises(MisconfigurationException, match=r"self.log\('x'"):
            to_metric_tensor("x", value)


class TestExtractBatchSize:
    def test_forms(self) -> None:
        Pair = namedtuple("Pair", "a b")
        assert extract_batch_size(torch.zeros(5, 2)) == 5
        assert extract_batch_size(torch.tensor(1.0)) == 1
        assert extract_batch_size([torch.zeros(3), torch.zeros(7)]) == 3
        assert extract_batch_size({"label": "x", "data": (torch.zeros(2, 9),)}) == 2
        assert extract_batch_size(Pair(a="s", b=torch.zeros(4))) == 4
        assert extract_batch_size(["no", "tensors"]) is None
        assert extract_batch_size(object()) is None


class TestResults:
    def test_weighted_mean(self) -> None:
        results = Results()
        meta = _meta()
        results.log(meta, torch.tensor(1.0), batch_size=1)
        results.log(meta, torch.tensor(4.0), batch_size=3)
        [(got_meta, value)] = results.epoch_values()
        assert got_meta is meta and value.item() == pytest.approx(13 / 4)

    @pytest.mark.parametrize(
        ("reduce_fx", "expected"), [("sum", 6.0), ("max", 4.0), ("min", -1.0), ("MAX", 4.0)]
    )
    def test_other_reductions_ignore_batch_size(self, reduce_fx: str, expected: float) -> None:
        results = Results()
        meta = _meta(reduce_fx=reduce_fx)
        for value, size in ((3.0, 10), (4.0, 1), (-1.0, 5)):
            results.log(meta, torch.tensor(value), batch_size=size)
        assert results.epoch_values()[0][1].item() == expected

    def test_step_only_metrics_have_no_epoch_value(self) -> None:
        results = Results()
        metric = results.log(_meta(on_step=True, on_epoch=False), torch.tensor(2.0), batch_size=1)
        assert metric.step_value is not None and metric.step_value.item() == 2.0
        assert results.epoch_values() == []

    def test_changed_flags_in_one_hook_raise_but_other_hooks_are_separate(self) -> None:
        results = Results()
        results.log(_meta(fx="training_step"), torch.tensor(1.0), batch_size=1)
        results.log(_meta(fx="on_train_epoch_end", reduce_fx="max"), torch.tensor(1.0), batch_size=1)
        assert len(results.epoch_values()) == 2
        with pytest.raises(MisconfigurationException, match=r"training_step.*reduce_fx='sum'"):
            results.log(_meta(fx="training_step", reduce_fx="sum"), torch.tensor(1.0), batch_size=1)

    def test_contains_and_reset(self) -> None:
        results = Results()
        results.log(_meta("acc", fx="validation_step"), torch.tensor(1.0), batch_size=1)
        assert "acc" in results and "loss" not in results
        results.reset()
        assert "acc" not in results and results.epoch_values() == []

    def test_sync_is_applied_to_synced_values(self) -> None:
        calls: list[str] = []

        def sync(value: torch.Tensor, reduction: str) -> torch.Tensor:
            calls.append(reduction)
            return value * 2

        results = Results(sync)
        meta = resolve_meta(
            "m",
            default_on_step=True,
            default_on_epoch=True,
            on_step=None,
            on_epoch=None,
            prog_bar=False,
            logger=None,
            reduce_fx="sum",
            sync_dist=True,
        )
        for _ in range(3):
            metric = results.log(meta, torch.tensor(1.0), batch_size=1)
        assert metric.step_value is not None and metric.step_value.item() == 2.0  # the step value is synced
        assert calls == ["sum"] * 3
        # The epoch value accumulates local values and is synced once: 3 steps * 1.0, then * 2.
        assert results.epoch_values()[0][1].item() == 6.0

    def test_synced_mean_stays_weighted(self) -> None:
        # Two "processes": the sync doubles totals and weights alike, so the mean is unchanged.
        results = Results(lambda value, reduction: value * 2)
        meta = _meta(sync_dist=True)
        results.log(meta, torch.tensor(1.0), batch_size=1)
        results.log(meta, torch.tensor(3.0), batch_size=3)
        assert results.epoch_values()[0][1].item() == pytest.approx(2.5)

    @given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.integers(1, 64)), min_size=1, max_size=20))
    def test_mean_matches_a_weighted_average(self, items: list[tuple[float, int]]) -> None:
        results = Results()
        meta = _meta()
        for value, size in items:
            results.log(meta, torch.tensor(value, dtype=torch.float64), batch_size=size)
        expected = sum(v * s for v, s in items) / sum(s for _, s in items)
        assert results.epoch_values()[0][1].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


class TestResolveMeta:
    def test_defaults_and_keys(self) -> None:
        meta = _meta("loss", on_step=True, on_epoch=True)
        assert meta.forked and meta.key == "loss"
        assert meta.forked_key("step") == "loss_step" and meta.forked_key("epoch") == "loss_epoch"
        plain = _meta("acc")
        assert not plain.forked and plain.forked_key("epoch") == "acc"

    def test_dataloader_suffix_comes_after_the_fork(self) -> None:
        meta = _meta("loss", on_step=True, on_epoch=True, dataloader_idx=1)
        assert meta.key == "loss/dataloader_idx_1"
        assert meta.forked_key("epoch") == "loss_epoch/dataloader_idx_1"
        assert _meta("loss", dataloader_idx=1, add_dataloader_idx=False).key == "loss"

    def test_invalid(self) -> None:
        with pytest.raises(MisconfigurationException, match="would record nothing"):
            _meta(on_step=False, on_epoch=False)
        with pytest.raises(MisconfigurationException, match="reduce_fx"):
            _meta(reduce_fx=torch.std)


def test_partial_epoch_accumulators_round_trip_through_state_dict() -> None:

    def meta(name: str, reduce_fx: str) -> Any:
        return resolve_meta(
            name,
            default_on_step=True,
            default_on_epoch=True,
            on_step=None,
            on_epoch=None,
            prog_bar=False,
            logger=None,
            reduce_fx=reduce_fx,
            sync_dist=False,
            fx="training_step",
        )

    straight, first_half = Results(), Results()
    values = [(1.0, 2), (4.0, 1), (2.5, 3), (0.5, 2)]
    for i, (value, size) in enumerate(values):
        for results in (straight, first_half) if i < 2 else (straight,):
            results.log(meta("loss", "mean"), torch.tensor(value), size)
            results.log(meta("peak", "max"), torch.tensor(value), size)
    resumed = Results()
    resumed.load_state_dict(first_half.state_dict())
    for value, size in values[2:]:
        resumed.log(meta("loss", "mean"), torch.tensor(value), size)
        resumed.log(meta("peak", "max"), torch.tensor(value), size)
    got = [(m.key, v) for m, v in resumed.epoch_values()]
    want = [(m.key, v) for m, v in straight.epoch_values()]
    assert [k for k, _ in got] == [k for k, _ in want] == ["loss", "peak"]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))
