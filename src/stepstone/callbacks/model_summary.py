"""ModelSummary: print the layer table of the module when fit starts (Lightning's callback)."""

from __future__ import annotations

import sys
from typing import Any

from typing_extensions import override

import stepstone
from stepstone.callbacks.callback import Callback
from stepstone.errors import MisconfigurationException
from stepstone.utilities.model_summary import summarize
from stepstone.utilities.summary_table import format_summary_table

__all__ = ["ModelSummary"]


class ModelSummary(Callback):
    """Print a summary of the module's layers at the start of ``fit`` (global rank 0 only, to stderr).

    ``Trainer(enable_model_summary=True)`` (the default) adds one when the callbacks hold none.

    Args:
        max_depth: nesting depth of the layers listed: 1 the direct children (default), -1 all; 0 prints nothing.
        **summarize_kwargs: passed on to :meth:`summarize` (for subclasses that print differently).

    Raises:
        MisconfigurationException: ``max_depth`` is not an int >= -1.
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise MisconfigurationException(
                f"ModelSummary(max_depth={max_depth!r}) is invalid; pass -1 (all layers), 0 (no summary) or a "
                "depth > 0."
            )
        self._max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs

    @override
    def on_fit_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Build the summary (on every rank, as it may run a forward pass) and print it on global rank 0."""
        if not self._max_depth:
            return
        summary = summarize(pl_module, max_depth=self._max_depth)
        if trainer.is_global_zero:
            self.summarize(
                summary._get_summary_data(),
                summary.total_parameters,
                summary.trainable_parameters,
                summary.model_size,
                summary.total_training_modes,
                total_flops=summary.total_flops,
                **self._summarize_kwargs,
            )

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        """Print the table (Lightning's override point for other renderings).

        Args:
            summary_data: the ``(header, cells)`` columns.
            total_parameters: all parameters.
            trainable_parameters: parameters with ``requires_grad``.
            model_size: estimated size in MB.
            total_training_modes: ``{"train": n, "eval": m}`` submodule counts.
            total_flops: FLOPs of the example forward pass.
            **summarize_kwargs: unused here.
        """
        table = format_summary_table(
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            total_flops,
            *summary_data,
        )
        print("\n" + table, file=sys.stderr)
