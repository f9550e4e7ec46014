"""The Logger base class: where ``self.log`` values and hyperparameters go."""

from __future__ import annotations

from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

__all__ = ["Logger"]


class Logger(ABC):
    """Base class for experiment loggers (Lightning's ``Logger`` interface).

    The Trainer calls :meth:`log_hyperparams` once at fit start, :meth:`log_metrics` every
    ``log_every_n_steps`` and at epoch ends, :meth:`after_save_checkpoint` after each *committed*
    checkpoint, and :meth:`finalize` when a run ends. Only global rank 0 logs.
    """

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment name (the folder under ``save_dir``)."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The experiment version: an int ``N`` (folder ``version_N``) or a string used as the folder name."""

    @property
    def root_dir(self) -> str | None:
        """The folder holding all versions of this experiment, or None for loggers that write no files."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The folder of this version, where the logger writes, or None for loggers that write no files."""
        return None

    @property
    def save_dir(self) -> str | None:
        """The base folder under which ``name/version`` lives; ModelCheckpoint uses it for its default dirpath."""
        return None

    @property
    def group_separator(self) -> str:
        """Character that groups metric names (``train/loss``)."""
        return "/"

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metrics.

        Args:
            metrics: metric name to value (already reduced to Python floats).
            step: the global step the values belong to.
        """

    @abstractmethod
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Record hyperparameters.

        Args:
            params: the hyperparameters, usually the LightningModule's ``hparams``.
        """

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Record the model graph; loggers that cannot do this ignore it."""

    def save(self) -> None:
        """Flush what was logged so far to its destination."""

    def finalize(self, status: str) -> None:
        """Flush and close at the end of a run.

        Args:
            status: ``"success"``, ``"failed"`` or ``"finished"``.
        """
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called by ModelCheckpoint after a checkpoint file is committed (never before it exists)."""
