"""RichProgressBarTheme: the styles of a RichProgressBar (plain data; needs no rich to import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RichProgressBarTheme"]


@dataclass
class RichProgressBarTheme:
    """Styles of the parts of a :class:`RichProgressBar` (a rich style string or ``rich.style.Style`` each).

    Args:
        description: the bar's title (``Epoch 0/9``, ``Validation``...).
        progress_bar: the bar while running.
        progress_bar_finished: the finished bar.
        progress_bar_pulse: the bar while the total is unknown.
        batch_progress: the ``done/total`` counter.
        time: elapsed and remaining time.
        processing_speed: batches per second.
        metrics: the metrics text.
        metrics_text_delimiter: between two metrics.
        metrics_format: format spec of numeric metrics.
    """

    description: Any = ""
    progress_bar: Any = "#6206E0"
    progress_bar_finished: Any = "#6206E0"
    progress_bar_pulse: Any = "#6206E0"
    batch_progress: Any = ""
    time: Any = "dim"
    processing_speed: Any = "dim underline"
    metrics: Any = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"
