"""LightningDataModule: hooks, which data wins, ``from_datasets``, and misuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

import stepstone as L
from models import FEATURES, BoringModel, RandomDataset, RandomIterableDataset, loader, make_trainer
from stepstone.errors import MisconfigurationException


class RecordingDataModule(L.LightningDataModule):
    def __init__(self, events: list[str], value: float = 1.0) -> None:
        super().__init__()
        self.events = events
        self.value = value

    def _loader(self, n: int = 8) -> DataLoader[torch.Tensor]:
        return DataLoader(torch.full((n, FEATURES), self.value), batch_size=4)

    def prepare_data(self) -> None:
        self.events.append("dm.prepare_data")

    def setup(self, stage: str) -> None:
        self.events.append(f"dm.setup:{stage}")

    def teardown(self, stage: str) -> None:
        self.events.append(f"dm.teardown:{stage}")

    def train_dataloader(self) -> DataLoader[torch.Tensor]:
        self.events.append("dm.train_dataloader")
        return self._loader()

    def val_dataloader(self) -> DataLoader[torch.Tensor]:
        self.events.append("dm.val_dataloader")
        return self._loader()

    def test_dataloader(self) -> DataLoader[torch.Tensor]:
        self.events.append("dm.test_dataloader")
        return self._loader()

    def predict_dataloader(self) -> DataLoader[torch.Tensor]:
        self.events.append("dm.predict_dataloader")
        return self._loader()


class SeenModel(BoringModel):
    """Records the first value of every batch it trains/validates on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, float]] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        self.seen.append(("train", float(batch[0, 0])))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        self.seen.append(("val", float(batch[0, 0])))
        return super().validation_step(batch, batch_idx)


def test_datamodule_hook_order(tmp_path: Path) -> None:
    events: list[str] = []

    class Model(BoringModel):
        def prepare_data(self) -> None:
            events.append("model.prepare_data")

        def setup(self, stage: str) -> None:
            events.append(f"model.setup:{stage}")

        def teardown(self, stage: str) -> None:
            events.append(f"model.teardown:{stage}")

    dm = RecordingDataModule(events)
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(Model(), datamodule=dm)
    assert events == [
        "dm.prepare_data",
        "model.prepare_data",
        "dm.setup:fit",
        "model.setup:fit",
        "dm.train_dataloader",
        "dm.val_dataloader",
        "dm.teardown:fit",
        "model.teardown:fit",
    ]
    assert trainer.datamodule is dm and dm.trainer is trainer
    events.clear()
    trainer.test(Model(), datamodule=dm, verbose=False)
    assert events == [
        "dm.prepare_data",
        "model.prepare_data",
        "dm.setup:test",
        "model.setup:test",
        "dm.test_dataloader",
        "dm.teardown:test",
        "model.teardown:test",
    ]
    events.clear()
    trainer.validate(Model(), dm, verbose=False)  # a datamodule as the second positional argument
    trainer.predict(Model(), dm)
    assert "dm.setup:validate" in events and "dm.val_dataloader" in events
    assert "dm.setup:predict" in events and "dm.predict_dataloader" in events


def test_datamodule_as_the_train_dataloaders_argument(tmp_path: Path) -> None:
    events: list[str] = []
    model = SeenModel()
    make_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(model, RecordingDataModule(events, 7.0))
    assert {value for _, value in model.seen} == {7.0}


def test_precedence_explicit_then_datamodule_then_module(tmp_path: Path) -> None:
    def constant(value: float) -> DataLoader[torch.Tensor]:
        return DataLoader(torch.full((4, FEATURES), value), batch_size=4)

    class Model(SeenModel):
        def train_dataloader(self) -> DataLoader[torch.Tensor]:
            return constant(1.0)

        def val_dataloader(self) -> DataLoader[torch.Tensor]:
            return constant(1.0)

    kwargs = {"max_epochs": 1, "num_sanity_val_steps": 0}
    model = Model()
    make_trainer(tmp_path, **kwargs).fit(model)
    assert model.seen == [("train", 1.0), ("val", 1.0)]

    model = Model()
    make_trainer(tmp_path, **kwargs).fit(model, datamodule=RecordingDataModule([], 2.0))
    assert {value for _, value in model.seen} == {2.0}

    model = Model()
    make_trainer(tmp_path, **kwargs).fit(model, constant(3.0), constant(4.0))
    assert model.seen == [("train", 3.0), ("val", 4.0)]

    model = Model()
    make_trainer(tmp_path, **kwargs).fit(model, train_dataloaders=constant(3.0))  # val: the module's
    assert model.seen == [("train", 3.0), ("val", 1.0)]


def test_a_datamodule_without_val_dataloader_disables_validation(tmp_path: Path) -> None:
    # Lightning: with a datamodule, the datamodule is the data source; the module's val_dataloader is not used.
    class TrainOnly(L.LightningDataModule):
        def train_dataloader(self) -> DataLoader[torch.Tensor]:
            return loader(8)

    model = SeenModel()
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=TrainOnly())
    assert [kind for kind, _ in model.seen] == ["train", "train"]
    assert trainer.val_dataloaders is None


def test_datamodule_is_per_call(tmp_path: Path) -> None:
    events: list[str] = []
    dm = RecordingDataModule(events, 5.0)
    trainer = make_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    model = SeenModel()
    trainer.fit(model, datamodule=dm)
    model.seen.clear()
    trainer.validate(model, verbose=False)  # no datamodule this time: the module's own val_dataloader
    assert [kind for kind, _ in model.seen] == ["val", "val"]
    assert all(value != 5.0 for _, value in model.seen)


def test_both_datamodule_and_loaders_raise(tmp_path: Path) -> None:
    dm = RecordingDataModule([])
    trainer = make_trainer(tmp_path)
    with pytest.raises(MisconfigurationException, match="both dataloaders and a datamodule"):
        trainer.fit(BoringModel(), loader(4), datamodule=dm)
    with pytest.raises(MisconfigurationException, match="both dataloaders and a datamodule"):
        trainer.fit(BoringModel(), val_dataloaders=loader(4), datamodule=dm)
    with pytest.raises(MisconfigurationException, match=r"validate\(\) received both"):
        trainer.validate(BoringModel(), loader(4), datamodule=dm)
    with pytest.raises(MisconfigurationException, match=r"predict\(\) received both"):
        trainer.predict(BoringModel(), loader(4), datamodule=dm)


def test_datamodule_without_train_dataloader_raises(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="found no training data"):
        make_trainer(tmp_path).fit(BoringModel(), datamodule=L.LightningDataModule())


def test_not_a_datamodule_raises(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="expects a LightningDataModule"):
        make_trainer(tmp_path).fit(BoringModel(), datamodule=object())  # type: ignore[arg-type]


def test_datamodule_batch_transfer_hooks_replace_the_modules(tmp_path: Path) -> None:
    class DM(L.LightningDataModule):
        def train_dataloader(self) -> DataLoader[torch.Tensor]:
            return DataLoader(torch.zeros(4, FEATURES), batch_size=4)

        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch + 10

    class Model(SeenModel):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch + 1000

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch * 2  # the datamodule does not override this one: the module's runs

    model = Model()
    make_trainer(tmp_path, max_epochs=1).fit(model, datamodule=DM())
    assert model.seen == [("train", 20.0)]


class TestFromDatasets:
    def test_loaders(self) -> None:
        dm = L.LightningDataModule.from_datasets(
            RandomDataset(8), [RandomDataset(4), RandomDataset(6)], RandomIterableDataset(4), batch_size=2
        )
        train = dm.train_dataloader()
        assert isinstance(train.sampler, RandomSampler) and train.batch_size == 2
        val = dm.val_dataloader()
        assert [len(v) for v in val] == [2, 3] and all(isinstance(v.sampler, SequentialSampler) for v in val)
        assert len(list(dm.test_dataloader())) == 2  # an IterableDataset is not shuffled
        with pytest.raises(NotImplementedError):
            dm.predict_dataloader()

    def test_shuffled_iterable_train_dataset_is_not_shuffled(self) -> None:
        dm = L.LightningDataModule.from_datasets(train_dataset=RandomIterableDataset(4), batch_size=4)
        assert len(list(dm.train_dataloader())) == 1

    def test_constructor_arguments(self) -> None:
        class DM(L.LightningDataModule):
            def __init__(self, root: str, batch_size: int = 1) -> None:
                super().__init__()
                self.root, self.batch_size = root, batch_size

        dm = DM.from_datasets(RandomDataset(4), batch_size=3, num_workers=0, root="/data")
        assert isinstance(dm, DM) and dm.root == "/data" and dm.batch_size == 3

    def test_trains(self, tmp_path: Path) -> None:
        dm = L.LightningDataModule.from_datasets(RandomDataset(8), RandomDataset(4), batch_size=4)
        trainer = make_trainer(tmp_path, max_epochs=1)
        trainer.fit(BoringModel(), datamodule=dm)
        assert trainer.global_step == 2 and "val_loss" in trainer.callback_metrics


def test_state_dict_defaults() -> None:
    dm = L.LightningDataModule()
    assert dm.state_dict() == {}
    dm.load_state_dict({})
    assert dm.hparams == {} and dm.hparams_initial == {}
