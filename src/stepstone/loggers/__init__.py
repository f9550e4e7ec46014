"""Experiment loggers: where ``self.log`` values and hyperparameters go.

``TensorBoardLogger`` imports ``tensorboard`` only when constructed, so importing this package never needs it.
"""

from __future__ import annotations

from stepstone.loggers.csv_logs import CSVLogger
from stepstone.loggers.logger import Logger
from stepstone.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]
