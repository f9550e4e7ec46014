"""Callbacks: ``from stepstone.callbacks import ModelCheckpoint`` (Lightning's import path, switched).

``RichProgressBar`` needs the optional extra ``rich``; rich is imported only when such a bar is created.
"""

from __future__ import annotations

from stepstone.callbacks.callback import Callback
from stepstone.callbacks.checkpoint import Checkpoint
from stepstone.callbacks.early_stopping import EarlyStopping
from stepstone.callbacks.lambda_function import LambdaCallback
from stepstone.callbacks.lr_monitor import LearningRateMonitor
from stepstone.callbacks.model_checkpoint import ModelCheckpoint
from stepstone.callbacks.model_summary import ModelSummary
from stepstone.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from stepstone.callbacks.progress_bar import ProgressBar, TQDMProgressBar
from stepstone.callbacks.rich_progress import RichProgressBar, RichProgressBarTheme
from stepstone.callbacks.timer import Timer

__all__ = [
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "LambdaCallback",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ProgressBar",
    "RichProgressBar",
    "RichProgressBarTheme",
    "TQDMProgressBar",
    "Timer",
]
