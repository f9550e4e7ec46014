"""Retention policies: pure functions from records to the names to keep."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.retention import (
    AnyOf,
    KeepAll,
    KeepBest,
    KeepEveryNSteps,
    KeepLatest,
    best_of,
    metric_key,
    worst_of,
)
from stepstone.errors import MisconfigurationException


def rec(step: int | None, created: float = 0.0, **metrics: float) -> CheckpointRecord:
    name = f"step={step}.ckpt" if step is not None else f"legacy-{created}.ckpt"
    return CheckpointRecord(
        path=name, name=name, size=1, step=step, epoch=None, metrics=metrics, created=created
    )


def names(*steps: int) -> set[str]:
    return {f"step={s}.ckpt" for s in steps}


def test_keep_all_and_empty_input() -> None:
    records = [rec(1), rec(2)]
    assert KeepAll()(records) == names(1, 2)
    for policy in (KeepAll(), KeepLatest(2), KeepBest(1, "loss"), KeepEveryNSteps(2), AnyOf(KeepAll())):
        assert policy([]) == set()


def test_keep_latest_orders_by_step_then_creation_time() -> None:
    records = [rec(5, created=10.0), rec(9, created=1.0), rec(7, created=5.0), rec(None, created=99.0)]
    assert KeepLatest(2)(records) == names(9, 7)
    assert KeepLatest(10)(records) == {r.name for r in records}


def test_keep_best_min_and_max() -> None:
    records = [rec(1, loss=0.5), rec(2, loss=0.2), rec(3, loss=0.9), rec(4, loss=0.3)]
    assert KeepBest(2, "loss")(records) == names(2, 4)
    assert KeepBest(2, "loss", mode="max")(records) == names(3, 1)


def test_keep_best_nan_and_missing_are_worst_but_fill_free_slots() -> None:
    records = [rec(1, loss=math.nan), rec(2, loss=0.4), rec(3), rec(4, loss=math.inf)]
    assert KeepBest(2, "loss")(records) == names(2, 4)
    assert KeepBest(1, "loss", mode="max")(records) == names(4)
    assert KeepBest(3, "loss")(records) == names(2, 4, 1)  # NaN before missing: older first among worst


def test_keep_best_ties_keep_the_older_checkpoint() -> None:
    records = [rec(3, created=3.0, loss=0.1), rec(1, created=1.0, loss=0.1), rec(2, created=2.0, loss=0.1)]
    assert KeepBest(1, "loss")(records) == names(1)
    assert KeepBest(2, "loss", mode="max")(records) == names(1, 2)


def test_incremental_picks_take_the_first_of_equal_values_at_both_ends() -> None:
    scores = {"a": 1.0, "b": 2.0, "c": 1.0, "d": 2.0, "e": math.nan}
    assert best_of(scores, "min") == "a" and worst_of(scores, "min") == "e"  # NaN is the worst
    del scores["e"]
    assert worst_of(scores, "min") == "b"  # the oldest of the worst leaves (Lightning's ModelCheckpoint)
    assert best_of(scores, "max") == "b" and worst_of(scores, "max") == "a"
    assert metric_key(None, "max") == metric_key(math.nan, "min") > metric_key(math.inf, "min")


def test_keep_every_n_steps_ignores_unknown_steps() -> None:
    records = [rec(0), rec(5), rec(10), rec(15), rec(None, created=1.0)]
    assert KeepEveryNSteps(10)(records) == names(0, 10)


def test_any_of_is_the_union() -> None:
    records = [rec(1, loss=0.1), rec(2, loss=0.5), rec(3, loss=0.4), rec(4, loss=0.9)]
    policy = AnyOf(KeepLatest(1), KeepBest(1, "loss"), KeepEveryNSteps(3))
    assert policy(records) == names(4, 1, 3)


def test_policies_are_pure() -> None:
    records = [rec(1, loss=0.3), rec(2, loss=0.1), rec(3, loss=0.2)]
    before = copy.deepcopy(records)
    policy = AnyOf(KeepLatest(1), KeepBest(1, "loss"))
    first = policy(records)
    assert policy(list(reversed(records))) == first == policy(records)
    assert records == before


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: KeepLatest(0), "KeepLatest(k=0)"),
        (lambda: KeepLatest(True), "KeepLatest(k=True)"),
        (lambda: KeepLatest(1.5), "KeepLatest(k=1.5)"),
        (lambda: KeepBest(0, "loss"), "KeepBest(k=0)"),
        (lambda: KeepBest(1, ""), "metric must be a non-empty str"),
        (lambda: KeepBest(1, "loss", mode="avg"), "mode must be 'min' or 'max'"),
        (lambda: KeepEveryNSteps(-2), "KeepEveryNSteps(n=-2)"),
        (lambda: AnyOf(), "at least one policy"),
        (lambda: AnyOf(KeepAll(), 3), "policy #1"),
    ],
)
def test_arguments_are_validated_with_clear_messages(make: object, fragment: str) -> None:
    with pytest.raises(MisconfigurationException) as error:
        make()  # type: ignore[operator]
    assert fragment in str(error.value)


def test_reprs_name_the_configuration() -> None:
    assert repr(AnyOf(KeepLatest(2), KeepBest(3, "val_loss", "max"))) == (
        "AnyOf(KeepLatest(k=2), KeepBest(k=3, metric='val_loss', mode='max'))"
    )


values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none())


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=12), st.integers(min_value=1, max_value=5), st.sampled_from(["min", "max"]))
def test_keep_best_keeps_k_and_never_drops_a_strictly_better_one(
    losses: list[float | None], k: int, mode: str
) -> None:
    records = [rec(i, created=float(i), **({} if v is None else {"loss": v})) for i, v in enumerate(losses)]
    kept = KeepBest(k, "loss", mode)(records)
    assert len(kept) == min(k, len(records))

    def score(r: CheckpointRecord) -> float:
        value = r.metrics.get("loss", math.nan)
        if math.isnan(value):
            return math.inf
        return value if mode == "min" else -value

    for dropped in (r for r in records if r.name not in kept):
        for keeper in (r for r in records if r.name in kept):
            assert score(keeper) <= score(dropped)
            if score(keeper) == score(dropped) and not math.isinf(score(keeper)):
                assert keeper.step is not None and dropped.step is not None and keeper.step < dropped.step
