"""The columns of :class:`~stepstone.callbacks.RichProgressBar`, drawn with ``rich`` (the optional extra).

Only ``stepstone.callbacks.rich_progress`` imports this module, and only when a RichProgressBar is created,
so that stepstone itself never needs rich.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from rich.progress import BarColumn, ProgressColumn, Task, TextColumn
from rich.progress_bar import ProgressBar as RichBar
from rich.text import Text
from typing_extensions import override

__all__ = ["MetricsTextColumn", "columns"]


class _PulsingBarColumn(BarColumn):
    """A bar that pulses while the total is unknown (an iterable dataset) instead of staying empty."""

    @override
    def render(self, task: Task) -> RichBar:
        return RichBar(
            total=max(0.0, task.total) if task.total is not None else None,
            completed=max(0.0, task.completed),
            width=None if self.bar_width is None else max(1, self.bar_width),
            pulse=not task.started or task.total is None,
            animation_time=task.get_time(),
            style=self.style,
            complete_style=self.complete_style,
            finished_style=self.finished_style,
            pulse_style=self.pulse_style,
        )


class _BatchesColumn(ProgressColumn):
    """``done/total`` batches (``--`` for an unknown total)."""

    def __init__(self, style: Any) -> None:
        self.style = style
        super().__init__()

    @override
    def render(self, task: Task) -> Text:
        total = "--" if task.total is None else int(task.total)
        return Text(f"{int(task.completed)}/{total}", style=self.style)


class _TimeColumn(ProgressColumn):
    """``elapsed • remaining`` as ``H:MM:SS`` (``-:--:--`` when not known)."""

    max_refresh: float | None = 0.5  # redraw at most twice a second, against jitter

    def __init__(self, style: Any) -> None:
        self.style = style
        super().__init__()

    @override
    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        remaining = task.time_remaining
        shown = ["-:--:--" if t is None else str(timedelta(seconds=int(t))) for t in (elapsed, remaining)]
        return Text(" • ".join(shown), style=self.style)


class _SpeedColumn(ProgressColumn):
    """Batches per second, ``0.00it/s`` before the first measurement."""

    def __init__(self, style: Any) -> None:
        self.style = style
        super().__init__()

    @override
    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed if speed is not None else 0.0:>.2f}it/s", style=self.style)


class MetricsTextColumn(ProgressColumn):
    """``name: value`` for each metric, on the training bar only (empty on every other bar).

    Args:
        shows: called with a task id; whether this task is the training bar of a running fit.
        style: rich style of the text.
        delimiter: between two metrics.
        number_format: format spec of non-str values (``".3f"``).
    """

    def __init__(self, shows: Callable[[Any], bool], style: Any, delimiter: str, number_format: str) -> None:
        self._shows = shows
        self._style = style
        self._delimiter = delimiter
        self._format = number_format
        self.metrics: dict[str, Any] = {}
        super().__init__()

    def update(self, metrics: dict[str, Any]) -> None:
        """Show ``metrics`` from the next redraw on."""
        self.metrics = dict(metrics)

    def text(self) -> str:
        """The metrics as drawn on the training bar."""
        return self._delimiter.join(
            f"{name}: {self._formatted(value)}" for name, value in self.metrics.items()
        )

    def _formatted(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        try:
            return f"{value:{self._format}}"
        except (TypeError, ValueError):
            return str(value)

    @override
    def render(self, task: Task) -> Text:
        if not self._shows(task.id):
            return Text()
        return Text(self.text(), justify="left", style=self._style)


def columns(theme: Any) -> list[ProgressColumn]:
    """Description, bar, batches, time and speed columns in ``theme``'s styles (Lightning's defaults).

    Args:
        theme: a :class:`~stepstone.callbacks.RichProgressBarTheme`.

    Returns:
        The columns, before the metrics column.
    """
    return [
        TextColumn("[progress.description]{task.description}"),
        _PulsingBarColumn(
            complete_style=theme.progress_bar,
            finished_style=theme.progress_bar_finished,
            pulse_style=theme.progress_bar_pulse,
        ),
        _BatchesColumn(style=theme.batch_progress),
        _TimeColumn(style=theme.time),
        _SpeedColumn(style=theme.processing_speed),
    ]
