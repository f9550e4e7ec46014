"""Callbacks: ``from stepstone.callbacks import ModelCheckpoint`` (Lightning's import path, switched).

``RichProgressBar`` needs the optional extra ``rich``; rich is imported only when such a bar is created.
"""

from __future__ import annotations

from stepstone.callbacks.callback import Callback
from stepstone.callbacks.lr_monitor import LearningRateMonitor
from stepstone.callbacks.model_checkpoint import ModelCheckpoint
from stepstone.callbacks.model_summary import ModelSummary
from stepstone.callbacks.progress_bar import ProgressBar, TQDMProgressBar
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
