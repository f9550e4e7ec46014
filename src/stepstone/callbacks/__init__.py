"""Callbacks: ``from stepstone.callbacks import ModelCheckpoint`` (Lightning's import path, switched).

``RichProgressBar`` needs the optional extra ``rich`` and is imported only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepstone.callbacks.callback import Callback
from stepstone.callbacks.lr_monitor import LearningRateMonitor
from stepstone.callbacks.model_checkpoint import ModelCheckpoint
from stepstone.callbacks.model_summary import ModelSummary
from stepstone.callbacks.progress_bar import ProgressBar, TQDMProgressBar

if TYPE_CHECKING:
    from stepstone.callbacks.rich_progress import RichProgressBar, RichProgressBarTheme

__all__ = [
    "Callback",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "ProgressBar",
    "RichProgressBar",
    "RichProgressBarTheme",
    "TQDMProgressBar",
]

_LAZY = ("RichProgressBar", "RichProgressBarTheme")


def __getattr__(name: str) -> Any:
    # rich is optional: its module is imported on first access, so `import stepstone` never needs it.
    if name in _LAZY:
        from stepstone.callbacks import rich_progress

        return getattr(rich_progress, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
