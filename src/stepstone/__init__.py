"""stepstone: a PyTorch training framework with Lightning's surface and checkpoints you can trust.

``import stepstone as L`` gives the names a Lightning user expects: ``L.Trainer``, ``L.LightningModule``,
``L.LightningDataModule``, ``L.Callback``, ``L.seed_everything``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from stepstone.callbacks.callback import Callback
from stepstone.core.datamodule import LightningDataModule
from stepstone.core.module import LightningModule
from stepstone.seed import seed_everything
from stepstone.trainer.trainer import Trainer

__all__ = ["Callback", "LightningDataModule", "LightningModule", "Trainer", "__version__", "seed_everything"]
