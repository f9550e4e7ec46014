"""Decisions every rank shares: a callback that stops training must stop it on all ranks at the same point.

A rank that stops while another trains on would leave the other waiting in its next collective until the
timeout. The stop decisions of ``EarlyStopping`` and ``Timer`` are therefore made common here, as Lightning's
``strategy.reduce_boolean_decision`` and ``strategy.broadcast`` make them. On one process nothing is exchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepstone.strategies import collectives

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["broadcast_decision", "reduce_boolean_decision"]


def reduce_boolean_decision(trainer: Trainer, decision: bool, all: bool = True) -> bool:
    """One decision for all ranks (Lightning's ``strategy.reduce_boolean_decision``).

    Args:
        trainer: the running Trainer.
        decision: this rank's decision.
        all: True: the decision holds only if it holds on every rank; False: if it holds on any rank.

    Returns:
        The shared decision (``decision`` itself on one process).

    Raises:
        CollectiveError: a rank failed or did not arrive within the strategy's timeout.
    """
    if trainer.world_size == 1:
        return bool(decision)
    return collectives.agree(bool(decision), require="all" if all else "any")


def broadcast_decision(trainer: Trainer, decision: bool) -> bool:
    """Rank 0's decision on every rank (Lightning's ``strategy.broadcast`` of a flag).

    Args:
        trainer: the running Trainer.
        decision: this rank's decision (only rank 0's counts).

    Returns:
        Rank 0's decision.

    Raises:
        CollectiveError: a rank failed or did not arrive within the strategy's timeout.
    """
    if trainer.world_size == 1:
        return bool(decision)
    return bool(collectives.broadcast_object(bool(decision), src=0))
