"""The same tiny program under Lightning 2.6.6 and stepstone, returning what a user observes of each.

Tests call a function here once with ``"lightning"`` and once with ``"stepstone"`` and compare the results:
the oracle is Lightning's behaviour, not a hand-written expectation.
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as PL
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint as PLModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import stepstone as SS
from stepstone.callbacks import ModelCheckpoint as SSModelCheckpoint

FRAMEWORKS = ("lightning", "stepstone")


def framework(name: str) -> tuple[ModuleType, type]:
    """The package (``lightning`` or ``stepstone``) and its ModelCheckpoint class."""
    return (PL, PLModelCheckpoint) if name == "lightning" else (SS, SSModelCheckpoint)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence both frameworks' warnings and Lightning's info logging."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def data(batches: int, seed: int = 0) -> DataLoader[Any]:
    """``batches`` batches of 4 random samples."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(batches * 4, 4, generator=gen)), batch_size=4)


def logging_module_class(
    name: str, train_key: str = "train_loss", val_key: str = "val_loss", squared: bool = False
) -> type:
    """A linear model with ``save_hyperparameters()`` (``lr``) that logs ``train_key`` and ``val_key``.

    The loss is the output's sum, or with ``squared`` its mean square.
    """
    pl, _ = framework(name)

    def loss_of(output: torch.Tensor) -> torch.Tensor:
        return output.pow(2).mean() if squared else output.sum()

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = loss_of(self.layer(batch[0]))
            self.log(train_key, loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log(val_key, loss_of(self.layer(batch[0])))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Model


class _HookRecorder:
    """Mixed into either framework's LightningModule by :func:`module_class` (a plain class: no framework)."""

    def __init__(self, save_at: tuple[Any, ...] | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.save_at = save_at
        self.events: list[tuple[Any, ...]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.events.append(("train", self.current_epoch, batch_idx))
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def _maybe_save(self, hook: str, batch_idx: int | None = None) -> None:
        spot = self.save_at
        if spot is None or spot[0] != hook or spot[1] != self.current_epoch:
            return
        if batch_idx is None or spot[2] == batch_idx:
            self.trainer.save_checkpoint(spot[-1])

    def on_train_start(self) -> None:
        self.events.append(("train_start", self.global_step))

    def on_train_epoch_start(self) -> None:
        self.events.append(("epoch_start", self.current_epoch))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._maybe_save("batch", batch_idx)

    def on_train_epoch_end(self) -> None:
        self.events.append(("epoch_end", self.current_epoch))
        self._maybe_save("epoch")

    def on_validation_end(self) -> None:
        sanity = self.trainer.sanity_checking
        self.events.append(("validation", self.current_epoch, sanity))
        if not sanity:
            self._maybe_save("val")


class _Validation:
    """Mixed in by :func:`module_class` with ``validate=True``: logs ``v`` on 2 validation batches."""

    layer: torch.nn.Linear

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("v", self.layer(batch[0]).sum())

    def val_dataloader(self) -> DataLoader[Any]:
        return data(2, seed=1)


def module_class(name: str, validate: bool = False) -> type:
    """A linear model recording its hooks in ``self.events``; ``save_at`` = (hook, epoch[, batch], path).

    ``hook`` is ``"batch"`` (on_train_batch_end), ``"epoch"`` (on_train_epoch_end) or ``"val"``
    (on_validation_end outside the sanity check).
    """
    pl, _ = framework(name)
    mixins = (_Validation, _HookRecorder) if validate else (_HookRecorder,)

    class Model(*mixins, pl.LightningModule):  # type: ignore[misc, name-defined]
        pass

    return Model


def resume(
    name: str,
    root: Path,
    first: dict[str, Any],
    second: dict[str, Any],
    save_at: tuple[Any, ...] | None = None,
    validate: bool = False,
    checkpoint: dict[str, Any] | None = None,
    resume_file: str | None = None,
    batches: int = 4,
) -> dict[str, Any]:
    """Fit with Trainer(**first), then fit a new model with Trainer(**second) from a checkpoint of the first.

    The checkpoint is the one the first run's model wrote at ``save_at`` (``("final",)``: after fit), or
    ``resume_file`` written by a ModelCheckpoint(dirpath=root/"ckpt", **checkpoint).

    Returns:
        ``first``/``second``: (global_step, current_epoch) after each fit; ``events`` of the resumed run;
        ``files``: the ModelCheckpoint's files after the first and after the second run.
    """
    pl, model_checkpoint = framework(name)
    model_class = module_class(name, validate)
    dirpath = root / "ckpt"
    path = str(root / "resume.ckpt")

    def trainer(kwargs: dict[str, Any]) -> Any:
        callbacks = [model_checkpoint(dirpath=dirpath, **checkpoint)] if checkpoint is not None else []
        options = {"enable_checkpointing": checkpoint is not None, **kwargs}
        return pl.Trainer(
            default_root_dir=root,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            callbacks=callbacks,
            **options,
        )

    def files() -> list[str]:
        return sorted(f for f in os.listdir(dirpath) if not f.startswith(".")) if dirpath.is_dir() else []

    with quiet():
        torch.manual_seed(0)
        spot = (*save_at, path) if save_at and save_at[0] != "final" else None
        trainer1 = trainer(first)
        trainer1.fit(model_class(spot), data(batches))
        if save_at and save_at[0] == "final":
            trainer1.save_checkpoint(path)
        files1 = files()
        model = model_class()
        trainer2 = trainer(second)
        trainer2.fit(model, data(batches), ckpt_path=path if save_at else str(dirpath / str(resume_file)))
    return {
        "first": (trainer1.global_step, trainer1.current_epoch),
        "second": (trainer2.global_step, trainer2.current_epoch),
        "events": model.events,
        "files": (files1, files()),
    }


def logger_files(name: str, logger: str, hparams: str, fn: str, log_metrics: bool, root: Path) -> list[str]:
    """Run ``trainer.<fn>`` with a CSV or TensorBoard logger under ``root``; list what the logger left there.

    Args:
        logger: ``"csv"`` or ``"tensorboard"``.
        hparams: ``"none"`` (no save_hyperparameters call), ``"module"`` (save_hyperparameters()),
            ``"module_no_logger"`` (save_hyperparameters(logger=False)) or ``"datamodule"`` (only the
            datamodule saves its hyperparameters).
        fn: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        log_metrics: whether the steps call ``self.log``.

    Returns:
        Sorted relative paths: folders end with ``/``, event files are ``events.*`` and ``.yaml`` files carry
        their parsed content (``path=content``), ``.csv`` files their columns and ``epoch``/``step`` values.
    """
    pl, _ = framework(name)
    loggers = importlib.import_module(
        "lightning.pytorch.loggers" if name == "lightning" else "stepstone.loggers"
    )
    kind = loggers.CSVLogger if logger == "csv" else loggers.TensorBoardLogger
    trainer = pl.Trainer(
        max_epochs=1,
        logger=kind(save_dir=root, name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    sources: dict[str, Any] = {"datamodule": _datamodule_class(pl)()} if hparams == "datamodule" else {}
    if not sources:
        sources = (
            {"train_dataloaders": data(2), "val_dataloaders": data(2)}
            if fn == "fit"
            else {"dataloaders": data(2)}
        )
    with quiet():
        getattr(trainer, fn)(_every_step_module_class(pl, hparams, log_metrics)(), **sources)
    return _logger_listing(root)


def _every_step_module_class(pl: ModuleType, hparams: str, log_metrics: bool) -> type:
    """A linear model with each of fit/validate/test/predict's steps, for :func:`logger_files`."""

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            if hparams in ("module", "module_no_logger"):
                self.save_hyperparameters(logger=hparams == "module")
            self.layer = torch.nn.Linear(4, 1)

        def _step(self, batch: Any, key: str) -> torch.Tensor:
            loss = self.layer(batch[0]).sum()
            if log_metrics:
                self.log(key, loss)
            return loss

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._step(batch, "train")

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self._step(batch, "val")

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self._step(batch, "test")

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Model


def _datamodule_class(pl: ModuleType) -> type:
    """A datamodule saving its hyperparameters (``batch_size``), with 2 batches for every stage."""

    class DataModule(pl.LightningDataModule):  # type: ignore[misc, name-defined]
        def __init__(self, batch_size: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self) -> DataLoader[Any]:
            return data(2)

        val_dataloader = test_dataloader = predict_dataloader = train_dataloader

    return DataModule


def _logger_listing(root: Path) -> list[str]:
    """What a logger left under ``root``, as :func:`logger_files` returns it."""
    found = []
    for folder, _, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        found.append(f"{rel}/")
        found.extend(_listing_entry(Path(folder), rel, file) for file in names)
    return sorted(found)


def _listing_entry(folder: Path, rel: str, file: str) -> str:
    """One file of :func:`_logger_listing`: event files as ``events.*``, YAML and CSV files with their content."""
    if file.startswith("events."):
        return os.path.join(rel, "events.*")
    if file.endswith(".yaml"):
        return f"{os.path.join(rel, file)}={yaml.safe_load((folder / file).read_text())}"
    if file.endswith(".csv"):  # the header, and the epoch/step columns exactly as written
        with open(folder / file, newline="") as handle:
            rows = list(csv.DictReader(handle))
        columns = [(r.get("epoch"), r["step"]) for r in rows]
        return f"{os.path.join(rel, file)}={sorted(rows[0]) if rows else []}{columns}"
    return os.path.join(rel, file)
