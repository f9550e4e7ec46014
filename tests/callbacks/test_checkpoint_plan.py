"""ModelCheckpoint's pure top-k plan, against a literal model of Lightning 2.6's dict-based bookkeeping."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepstone.callbacks.checkpoint_plan import (
    Namer,
    TopKState,
    enters,
    plan_newest,
    plan_top_k,
    plan_trigger,
)


def _empty(mode: str = "min") -> TopKState:
    return TopKState((), "", torch.tensor(math.inf if mode == "min" else -math.inf), "", None, None)


def _namer(index: int) -> Namer:
    return lambda replaced: f"f{index}.ckpt"


class LightningModel:
    """Lightning's ``check_monitor_top_k`` + ``_update_best_and_save`` state updates, transcribed literally."""

    def __init__(self, save_top_k: int, mode: str) -> None:
        self.save_top_k, self.mode = save_top_k, mode
        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None

    def step(self, current: torch.Tensor, filepath: str) -> tuple[bool, str | None]:
        if not (self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k):
            op = torch.lt if self.mode == "min" else torch.gt
            if not bool(op(current, self.best_k_models[self.kth_best_model_path])):
                return False, None
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        deleted = None
        if len(self.best_k_models) == k and k > 0:
            deleted = self.kth_best_model_path
            self.best_k_models.pop(deleted)
        if torch.isnan(current):
            current = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        self.best_k_models[filepath] = current
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.__getitem__)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        best = min if self.mode == "min" else max
        self.best_model_path = best(self.best_k_models, key=self.best_k_models.__getitem__)
        self.best_model_score = self.best_k_models[self.best_model_path]
        return True, deleted if deleted != filepath else None


def test_a_tie_with_the_kth_never_enters_and_the_worst_is_replaced() -> None:
    state = _empty()
    for index, value in enumerate([3.0, 1.0]):
        plan = plan_top_k(state, torch.tensor(value), 2, "min", _namer(index))
        assert plan is not None and plan.dropped == ()
        state = plan.state
    assert state.kth_best_model_path == "f0.ckpt" and state.best_model_path == "f1.ckpt"
    assert plan_top_k(state, torch.tensor(3.0), 2, "min", _namer(2)) is None
    plan = plan_top_k(state, torch.tensor(2.0), 2, "min", _namer(2))
    assert plan is not None and plan.filepath == "f2.ckpt" and plan.dropped == ("f0.ckpt",)
    assert plan.state.models() == {"f1.ckpt": torch.tensor(1.0), "f2.ckpt": torch.tensor(2.0)}
    assert plan.state.kth_best_model_path == "f2.ckpt" and float(plan.state.kth_value) == 2.0


def test_nan_is_stored_as_the_worst_value_and_never_enters_when_full() -> None:
    plan = plan_top_k(_empty("max"), torch.tensor(math.nan), 1, "max", _namer(0))
    assert plan is not None and float(plan.state.models()["f0.ckpt"]) == -math.inf
    assert not enters(plan.state, torch.tensor(math.nan), 1, "max")
    assert enters(plan.state, torch.tensor(-1e30), 1, "max")
    assert not enters(plan.state, None, -1, "max")


def test_a_plan_leaves_the_state_it_was_given_untouched() -> None:
    before = plan_top_k(_empty(), torch.tensor(1.0), 1, "min", _namer(0))
    assert before is not None
    after = plan_top_k(before.state, torch.tensor(0.5), 1, "min", _namer(1))
    assert after is not None and after.dropped == ("f0.ckpt",)
    assert before.state.models() == {"f0.ckpt": torch.tensor(1.0)}  # nothing to roll back on a failed save


def test_reusing_the_replaced_name_drops_nothing() -> None:
    first = plan_top_k(_empty(), torch.tensor(1.0), 1, "min", lambda replaced: "same.ckpt")
    assert first is not None
    again = plan_top_k(first.state, torch.tensor(0.5), 1, "min", lambda replaced: str(replaced))
    assert again is not None and again.filepath == "same.ckpt" and again.dropped == ()


def test_newest_plan_drops_the_previous_file_only_with_save_top_k_1() -> None:
    first = plan_newest(_empty(), 1, lambda previous: "a.ckpt")
    assert first.dropped == () and first.state.best_model_path == "a.ckpt"
    assert plan_newest(first.state, 1, lambda previous: "b.ckpt").dropped == ("a.ckpt",)
    assert plan_newest(first.state, -1, lambda previous: "b.ckpt").dropped == ()
    assert plan_newest(first.state, 1, lambda previous: str(previous)).dropped == ()


def test_a_trigger_plan_owes_the_displaced_top_k_file_and_the_previous_last() -> None:
    first = plan_top_k(_empty(), torch.tensor(1.0), 1, "min", _namer(0))
    assert first is not None
    second = plan_top_k(first.state, torch.tensor(0.5), 1, "min", _namer(1))
    assert second is not None
    plan = plan_trigger(first.state, "last-v1.ckpt", second, "last.ckpt")
    assert plan is not None
    assert (plan.top_k_path, plan.last_path, plan.last_model_path) == ("f1.ckpt", "last.ckpt", "last.ckpt")
    assert plan.dropped == ("f0.ckpt", "last-v1.ckpt")  # each file of the trigger records both
    assert plan.state is second.state
    only_last = plan_trigger(first.state, "last.ckpt", None, "last.ckpt")
    assert only_last is not None and only_last.dropped == () and only_last.state is first.state
    assert plan_trigger(first.state, "", None, None) is None  # nothing to write


_VALUES = st.sampled_from([0.0, 1.0, 2.0, 3.0, math.inf, -math.inf, math.nan])


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(_VALUES, max_size=12),
    save_top_k=st.sampled_from([-1, 1, 2, 3]),
    mode=st.sampled_from(["min", "max"]),
    reuse=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_plans_match_lightnings_bookkeeping(
    values: list[float], save_top_k: int, mode: str, reuse: list[bool]
) -> None:
    """Ties, NaN and ±inf, reused names: the same files enter, the same are dropped, the same state results."""
    reference, state = LightningModel(save_top_k, mode), _empty(mode)
    for index, value in enumerate(values):

        def name(replaced: str | None, index: int = index) -> str:
            return replaced if replaced is not None and reuse[index] else f"f{index}.ckpt"

        current = torch.tensor(value)
        plan = plan_top_k(state, current, save_top_k, mode, name)
        full = save_top_k != -1 and len(reference.best_k_models) == save_top_k
        filepath = name(reference.kth_best_model_path if full else None)
        entered, deleted = reference.step(current, filepath)
        assert (plan is not None) == entered
        if plan is None:
            continue
        assert plan.filepath == filepath
        assert plan.dropped == ((deleted,) if deleted else ())
        state = plan.state
        assert list(state.models()) == list(reference.best_k_models)
        assert [float(v) for v in state.models().values()] == [
            float(v) for v in reference.best_k_models.values()
        ]
        assert state.kth_best_model_path == reference.kth_best_model_path
        assert state.best_model_path == reference.best_model_path
        assert float(state.kth_value) == float(reference.kth_value)
