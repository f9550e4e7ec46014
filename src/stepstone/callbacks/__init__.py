"""Callbacks: ``from stepstone.callbacks import ModelCheckpoint`` (Lightning's import path, switched)."""

from __future__ import annotations

from stepstone.callbacks.callback import Callback
from stepstone.callbacks.model_checkpoint import ModelCheckpoint
from stepstone.callbacks.progress_bar import ProgressBar, TQDMProgressBar

__all__ = ["Callback", "ModelCheckpoint", "ProgressBar", "TQDMProgressBar"]
