"""LightningDataModule: the data side of an experiment, reusable across models."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from typing_extensions import Self

from stepstone.core.mixins.hparams_mixin import HyperparametersMixin
from stepstone.core.saving import instantiate_from_hparams, read_checkpoint
from stepstone.core.transfer import move_to_device

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["LightningDataModule"]


class LightningDataModule(HyperparametersMixin):
    """Groups ``prepare_data``, ``setup`` and the ``*_dataloader`` methods (Lightning's DataModule).

    Stateful datamodules return their state from :meth:`state_dict`; it is stored in checkpoints under the
    class name and given back through :meth:`load_state_dict` on resume.
    """

    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Trainer | None = None
        self.prepare_data_per_node = True

    def prepare_data(self) -> None:
        """Download or prepare data (called once before setup)."""

    def setup(self, stage: str) -> None:
        """Build datasets for ``stage`` (``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``)."""

    def teardown(self, stage: str) -> None:
        """Release what setup built."""

    def train_dataloader(self) -> Any:
        """Return the training data."""
        raise NotImplementedError

    def val_dataloader(self) -> Any:
        """Return the validation data."""
        raise NotImplementedError

    def test_dataloader(self) -> Any:
        """Return the test data."""
        raise NotImplementedError

    def predict_dataloader(self) -> Any:
        """Return the prediction data."""
        raise NotImplementedError

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch before it is moved to the device (used instead of the module's when overridden here)."""
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move ``batch`` to ``device`` (used instead of the module's when overridden here)."""
        return move_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch after it is moved to the device (used instead of the module's when overridden here)."""
        return batch

    def state_dict(self) -> dict[str, Any]:
        """State to store in checkpoints (weights_only-safe); empty means nothing is stored."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add entries to a checkpoint dict being built."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read entries from a checkpoint dict being restored."""

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset[Any] | Iterable[Dataset[Any]] | None = None,
        val_dataset: Dataset[Any] | Iterable[Dataset[Any]] | None = None,
        test_dataset: Dataset[Any] | Iterable[Dataset[Any]] | None = None,
        predict_dataset: Dataset[Any] | Iterable[Dataset[Any]] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> LightningDataModule:
        """Build a datamodule whose ``*_dataloader`` methods wrap the given datasets (Lightning's semantics).

        The training loaders shuffle (unless the dataset is an ``IterableDataset``), the others do not. A list of
        datasets gives a list of loaders. ``datamodule_kwargs`` go to the constructor of ``cls``, and so do
        ``batch_size`` and ``num_workers`` when it accepts them.

        Returns:
            The datamodule.
        """

        def loaders(datasets: Any, shuffle: bool) -> Any:
            def one(dataset: Dataset[Any]) -> DataLoader[Any]:
                return DataLoader(
                    dataset,
                    batch_size=batch_size,
                    shuffle=shuffle and not isinstance(dataset, IterableDataset),
                    num_workers=num_workers,
                )

            if isinstance(datasets, Dataset):
                return one(datasets)
            return [one(dataset) for dataset in datasets]

        params = inspect.signature(cls.__init__).parameters
        candidates = {"batch_size": batch_size, "num_workers": num_workers}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            candidates = {k: v for k, v in candidates.items() if k in params}
        dm = cls(**datamodule_kwargs, **candidates)
        given = {"train": train_dataset, "val": val_dataset, "test": test_dataset, "predict": predict_dataset}
        for kind, datasets in given.items():
            if datasets is not None:
                setattr(dm, f"{kind}_dataloader", partial(loaders, datasets, kind == "train"))
        return dm

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Build the datamodule from the hyperparameters (and state) saved in a checkpoint.

        Args:
            checkpoint_path: the checkpoint file.
            map_location: as in ``torch.load``.
            weights_only: ``False`` allows pickled objects — only for files you trust.
            **kwargs: constructor arguments that override the saved ones.

        Returns:
            The new datamodule.
        """
        checkpoint = read_checkpoint(checkpoint_path, map_location, weights_only)
        dm = instantiate_from_hparams(cls, checkpoint, "datamodule_", kwargs)
        state = checkpoint.get(cls.__qualname__)
        if state:
            dm.load_state_dict(state)
        return dm
