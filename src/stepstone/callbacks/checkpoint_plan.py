"""ModelCheckpoint's top-k decision as a pure plan: which file to write, the state afterwards, what it drops.

A plan changes nothing: the callback writes the planned file (the planned state goes into it, so a resumed
run continues the same top k) and adopts the planned state only once the file is committed. A failed save
therefore leaves the callback's state as it was, with nothing to roll back.

Lightning 2.6's rules: a score enters while fewer than ``save_top_k`` files are kept, or when it is strictly
better than the k-th (a tie never enters); it replaces the k-th; NaN is stored as the worst value (+inf for
``"min"``, -inf for ``"max"``); the best and the k-th are the first of equal values in insertion order. The
value ordering is the engine's (``stepstone.checkpoint.retention``), shared with ``KeepBest``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from stepstone.checkpoint.retention import best_of, metric_key, worst_of

__all__ = [
    "Namer",
    "TopKPlan",
    "TopKState",
    "TriggerPlan",
    "enters",
    "plan_newest",
    "plan_top_k",
    "plan_trigger",
]

#: Names the file of a trigger, given the path it replaces (None: none); the name is reused when it equals it.
Namer = Callable[[str | None], str]


@dataclass(frozen=True)
class TopKState:
    """ModelCheckpoint's top-k bookkeeping (Lightning's attribute names), immutable.

    Args:
        best_k_models: (path, score) pairs in insertion order.
        kth_best_model_path: the path that the next entering score replaces once ``save_top_k`` are kept.
        kth_value: its score.
        best_model_path: the best file ("" before any).
        best_model_score: its score.
        current_score: the score of the newest top-k file.
    """

    best_k_models: tuple[tuple[str, torch.Tensor], ...]
    kth_best_model_path: str
    kth_value: torch.Tensor
    best_model_path: str
    best_model_score: torch.Tensor | None
    current_score: torch.Tensor | None

    def models(self) -> dict[str, torch.Tensor]:
        """``best_k_models`` as Lightning's dict (a new one each call).

        Returns:
            path -> score, in insertion order.
        """
        return dict(self.best_k_models)


@dataclass(frozen=True)
class TopKPlan:
    """What one top-k save does.

    Args:
        filepath: the file to write.
        state: the state once that file is committed.
        dropped: the files it displaces, to delete after the commit.
    """

    filepath: str
    state: TopKState
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class TriggerPlan:
    """Everything one trigger does: the files it writes, the state once they are committed, what it drops.

    Args:
        top_k_path: the top-k file to write ("" for none).
        last_path: the ``last`` file to write, copy or link ("" for none).
        state: the top-k state once the files are committed.
        last_model_path: ``last_model_path`` once the files are committed.
        dropped: the files to delete after the commit (displaced top-k files, the previous ``last``); each
            file of the trigger records them, so a run resumed from it finishes them after a crash.
    """

    top_k_path: str
    last_path: str
    state: TopKState
    last_model_path: str
    dropped: tuple[str, ...]


def plan_trigger(
    state: TopKState, last_model_path: str, top_k: TopKPlan | None, last_path: str | None
) -> TriggerPlan | None:
    """Combine a trigger's top-k plan and its ``last`` file into one plan.

    Args:
        state: the current top-k state.
        last_model_path: the current ``last_model_path``.
        top_k: the top-k plan (None: no top-k file at this trigger).
        last_path: the ``last`` file of this trigger (None: ``save_last`` is off).

    Returns:
        The plan, or None when the trigger writes nothing.
    """
    if top_k is None and last_path is None:
        return None
    dropped = top_k.dropped if top_k is not None else ()
    if last_path is not None and last_model_path and last_model_path != last_path:
        dropped = (*dropped, last_model_path)
    return TriggerPlan(
        top_k.filepath if top_k is not None else "",
        last_path or "",
        top_k.state if top_k is not None else state,
        last_path if last_path is not None else last_model_path,
        dropped,
    )


def _float(score: torch.Tensor) -> float:
    return float(score.item())


def enters(state: TopKState, score: torch.Tensor | None, save_top_k: int, mode: str) -> bool:
    """Whether ``score`` earns a place (Lightning's ``check_monitor_top_k``).

    Args:
        state: the current state.
        score: the monitored value (None: not logged).
        save_top_k: the callback's ``save_top_k`` (-1: all).
        mode: ``"min"`` or ``"max"``.

    Returns:
        True while fewer than ``save_top_k`` files are kept, or if ``score`` is strictly better than the k-th.
    """
    if score is None:
        return False
    if save_top_k == -1 or len(state.best_k_models) < save_top_k:
        return True
    kth = state.models()[state.kth_best_model_path]
    return metric_key(_float(score), mode) < metric_key(_float(kth), mode)


def plan_top_k(
    state: TopKState, score: torch.Tensor, save_top_k: int, mode: str, name: Namer
) -> TopKPlan | None:
    """Plan a top-k save of ``score``.

    Args:
        state: the current state.
        score: the monitored value.
        save_top_k: the callback's ``save_top_k`` (-1 or >= 1).
        mode: ``"min"`` or ``"max"``.
        name: names the new file from the path it replaces.

    Returns:
        The plan, or None when ``score`` does not enter.
    """
    if not enters(state, score, save_top_k, mode):
        return None
    models = state.models()
    k = len(models) + 1 if save_top_k == -1 else save_top_k
    replaced = state.kth_best_model_path if len(models) == k else None
    if replaced is not None:
        models.pop(replaced)
    if torch.isnan(score):
        score = torch.tensor(math.inf if mode == "min" else -math.inf, device=score.device)
    filepath = name(replaced)
    models[filepath] = score
    values = {path: _float(value) for path, value in models.items()}
    kth_path, kth_value = state.kth_best_model_path, state.kth_value
    if len(models) == k:
        kth_path = worst_of(values, mode)
        kth_value = models[kth_path]
    best_path = best_of(values, mode)
    after = TopKState(tuple(models.items()), kth_path, kth_value, best_path, models[best_path], score)
    dropped = (replaced,) if replaced is not None and replaced != filepath else ()
    return TopKPlan(filepath, after, dropped)


def plan_newest(state: TopKState, save_top_k: int, name: Namer) -> TopKPlan:
    """Plan a save without a monitored metric: the newest file becomes ``best_model_path``.

    Args:
        state: the current state.
        save_top_k: the callback's ``save_top_k`` (-1 or 1).
        name: names the new file from the path it may replace (the current ``best_model_path``).

    Returns:
        The plan; with ``save_top_k=1`` it drops the previous file.
    """
    previous = state.best_model_path
    filepath = name(previous)
    dropped = (previous,) if save_top_k == 1 and previous and previous != filepath else ()
    return TopKPlan(filepath, replace(state, best_model_path=filepath), dropped)
