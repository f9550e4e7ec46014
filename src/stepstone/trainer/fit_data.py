"""The dataloaders of a run: overfitting and distributed rebuilding, and fit's loading and reloading.

``overfit_batches`` and ``use_distributed_sampler`` change a loader when it is set up (Lightning's
``_process_dataloader``); ``reload_dataloaders_every_n_epochs`` asks the data source for new loaders every N
epochs, counting from the epoch of the last load (a resumed fit counts from its restored epoch, as Lightning).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from torch.utils.data import SequentialSampler

from stepstone.core.datamodule import LightningDataModule
from stepstone.core.module import LightningModule
from stepstone.errors import MisconfigurationException
from stepstone.strategies.sampler import sequential_loader
from stepstone.trainer.checks import val_check_batch
from stepstone.trainer.data import check_hook_not_none, find_loaders, limited_batches, loader_length
from stepstone.trainer.hooks import is_overridden

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["FitData", "prepare_loaders"]


def _in_order(loader: object) -> bool:
    return not hasattr(loader, "sampler") or isinstance(getattr(loader, "sampler", None), SequentialSampler)


def prepare_loaders(
    trainer: Trainer, kind: str, loaders: list[Iterable[Any]], fitting: bool
) -> list[Iterable[Any]]:
    """The loaders as a run uses them: read in order when overfitting, sharded per rank under DDP.

    Args:
        trainer: the Trainer (its ``overfit_batches``, ``use_distributed_sampler`` and strategy).
        kind: ``"train"``, ``"val"``, ``"test"`` or ``"predict"``.
        loaders: the user's loaders.
        fitting: whether they are for ``fit`` (only fit's train/val loaders are overfitted, as in Lightning).

    Returns:
        The loaders, rebuilt where needed (the user's objects are not changed).
    """
    overfit = fitting and kind in ("train", "val") and trainer.overfit_batches > 0
    if overfit and not all(_in_order(loader) for loader in loaders):
        warnings.warn(
            f"You requested to overfit but enabled {kind} dataloader shuffling. We are turning off the {kind} "
            "dataloader shuffling for you.",
            UserWarning,
            stacklevel=2,
        )
        loaders = [sequential_loader(loader) for loader in loaders]
    strategy = trainer._strategy
    if strategy is not None and trainer.world_size > 1 and trainer._use_distributed_sampler:
        # Each rank reads its own share (DistributedSampler); the loader's other settings are kept.
        loaders = [strategy.replace_sampler(loader) for loader in loaders]
    return loaders


class FitData:
    """Fit's train and validation loaders: loaded at fit start, reloaded every N epochs when asked.

    Args:
        trainer: the Trainer whose ``_train_loader``, ``num_training_batches``, ``_val_loaders``,
            ``num_val_batches`` and ``val_check_batch`` this sets.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self._train_source: Any = None
        self._val_source: Any = None
        self._datamodule: LightningDataModule | None = None
        self._train_epoch = 0  # the epoch each was last loaded at
        self._val_epoch = 0

    def load(self, train: Any, val: Any, datamodule: LightningDataModule | None) -> None:
        """Load both for a new fit from the explicit loaders (None: the datamodule's, else the module's).

        Raises:
            MisconfigurationException: no training data, or invalid loaders or limits.
        """
        self._train_source, self._val_source, self._datamodule = train, val, datamodule
        self._load_train()
        self._load_val()

    def restored(self) -> None:
        """A checkpoint set the epoch: reloads count from it, as Lightning, which loads the data after restoring.

        With ``reload_dataloaders_every_n_epochs`` the loaders are requested again for the restored epoch, so a
        ``*_dataloader()`` that depends on ``current_epoch`` sees the epoch it serves (loaded before the restore,
        they saw the Trainer's earlier epoch).
        """
        t = self.t
        if t.reload_dataloaders_every_n_epochs and t.current_epoch != self._train_epoch:
            self._load_train()
            self._load_val()
        self._train_epoch = self._val_epoch = t.current_epoch

    def _due(self, loaded_at: int) -> bool:
        every = self.t.reload_dataloaders_every_n_epochs
        return bool(every) and self.t.current_epoch - loaded_at >= every

    def reload_train_if_due(self) -> None:
        """At an epoch start: ask the data source for a new training loader if N epochs have passed."""
        if self._due(self._train_epoch):
            self._load_train()
            self.t.val_check_batch = val_check_batch(self.t)

    def reload_val_if_due(self) -> None:
        """Before a validation inside fit: new validation loaders if N epochs have passed."""
        if self._due(self._val_epoch):
            self._load_val()

    def _find(self, kind: str, source: Any) -> list[Iterable[Any]] | None:
        t = self.t
        loaders = find_loaders(kind, source, self._datamodule, t.lightning_module)
        return None if loaders is None else prepare_loaders(t, kind, loaders, fitting=True)

    def _load_train(self) -> None:
        t = self.t
        train = self._find("train", self._train_source)
        if train is None:
            check_hook_not_none("train", "fit", "train_dataloaders", self._datamodule, t.lightning_module)
            raise MisconfigurationException(
                "fit() found no training data: pass train_dataloaders=..., a datamodule, or define "
                "train_dataloader() in the LightningModule."
            )
        t._train_loader = train[0]
        t.num_training_batches = limited_batches(
            "limit_train_batches", loader_length(train[0]), t.limit_train_batches
        )
        self._train_epoch = t.current_epoch

    def _load_val(self) -> None:
        t = self.t
        val = self._find("val", self._val_source)
        val_counts: list[int | float] = []
        t._val_limit_error = None
        if val is not None and not is_overridden("validation_step", t.lightning_module, LightningModule):
            warnings.warn(
                "Validation data was given but the module has no validation_step; validation is skipped.",
                UserWarning,
                stacklevel=8,  # the user's fit() call
            )
            val = None
        try:
            val_counts = [
                limited_batches("limit_val_batches", loader_length(v), t.limit_val_batches) for v in val or []
            ]
        except MisconfigurationException as exc:
            # Lightning checks the limit when validation first needs its data (the sanity check, or the first
            # epoch that validates): a fit that never validates does not fail.
            t._val_limit_error = exc
        t._val_loaders, t.num_val_batches = val, val_counts
        t.val_check_batch = val_check_batch(t)
        self._val_epoch = t.current_epoch
