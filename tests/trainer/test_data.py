"""Finding dataloaders and counting batches (``limit_*_batches``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from models import BoringModel, iterable_loader, loader, make_trainer
from stepstone.errors import MisconfigurationException
from stepstone.trainer.data import find_loaders, limited_batches, loader_length


def test_loader_length() -> None:
    assert loader_length(loader(10, batch_size=4)) == 3
    assert loader_length(iterable_loader(10)) == math.inf
    assert loader_length(iter([1, 2])) == math.inf


@pytest.mark.parametrize(
    ("length", "limit", "expected"),
    [
        (10, 1.0, 10),
        (10, 0.5, 5),
        (10, 0.25, 2),
        (10, 3, 3),
        (10, 30, 10),
        (10, 0, 0),
        (10, 0.0, 0),
        (math.inf, 5, 5),
        (math.inf, 1.0, math.inf),
        (0, 0.5, 0),
    ],
)
def test_limited_batches(length: float, limit: float, expected: float) -> None:
    assert limited_batches("limit_train_batches", length, limit) == expected


def test_fraction_rounding_to_zero_batches_raises() -> None:
    with pytest.raises(
        MisconfigurationException, match=r"limit_val_batches=0.1.*at least limit_val_batches=0.34"
    ):
        limited_batches("limit_val_batches", 3, 0.1)


def test_fraction_of_an_unsized_loader_raises() -> None:
    with pytest.raises(MisconfigurationException, match=r"limit_train_batches=0.5.*no length"):
        limited_batches("limit_train_batches", math.inf, 0.5)


def test_fraction_rounding_to_zero_fails_the_fit(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"limit_train_batches=0.1"):
        make_trainer(tmp_path, limit_train_batches=0.1).fit(BoringModel())  # 0.1 * 4 batches < 1


@pytest.mark.parametrize(("limit", "batches"), [(2, 2), (0.5, 2), (0.75, 3), (1.0, 4), (100, 4)])
def test_limit_train_batches(tmp_path: Path, limit: float, batches: int) -> None:
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=limit, limit_val_batches=0)
    trainer.fit(BoringModel())
    assert trainer.num_training_batches == batches
    assert trainer.global_step == 2 * batches


@pytest.mark.parametrize(("limit", "batches"), [(1, 1), (0.5, 1), (0, 0)])
def test_limit_val_batches(tmp_path: Path, limit: float, batches: int) -> None:
    seen: list[int] = []

    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            seen.append(batch_idx)

    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=limit, num_sanity_val_steps=0)
    trainer.fit(Model())
    assert trainer.num_val_batches == [batches]
    assert seen == list(range(batches))


def test_limit_test_and_predict_batches(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, limit_test_batches=1, limit_predict_batches=0.5)
    trainer.test(BoringModel(), verbose=False)
    assert trainer.num_test_batches == [1]
    assert len(trainer.predict(BoringModel()) or []) == 1
    assert trainer.num_predict_batches == [1]


def test_limit_train_batches_zero_skips_training(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=3, limit_train_batches=0)
    trainer.fit(BoringModel())
    assert trainer.global_step == 0 and trainer.current_epoch == 0


def test_explicit_loaders_win_over_the_module(tmp_path: Path) -> None:
    seen: list[int] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            seen.append(len(batch))
            return super().training_step(batch, batch_idx)

    make_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(Model(), loader(6, batch_size=3))
    assert seen == [3, 3]


class TestFindLoaders:
    def test_explicit_single_and_list(self) -> None:
        model = BoringModel()
        dl = loader(4)
        assert find_loaders("val", dl, None, model) == [dl]
        assert find_loaders("val", [dl, dl], None, model) == [dl, dl]
        assert find_loaders("val", (dl,), None, model) == [dl]

    def test_module_method(self) -> None:
        found = find_loaders("train", None, None, BoringModel())
        assert found is not None and isinstance(found[0], DataLoader)

    def test_missing_method_gives_none(self) -> None:
        from stepstone import LightningModule

        class Bare(BoringModel):
            val_dataloader = LightningModule.val_dataloader  # type: ignore[assignment]

        assert find_loaders("val", None, None, Bare()) is None

    def test_dict_of_loaders_raises(self) -> None:
        with pytest.raises(MisconfigurationException, match="dict"):
            find_loaders("val", {"a": loader(4)}, None, BoringModel())

    def test_non_iterable_raises(self) -> None:
        with pytest.raises(MisconfigurationException, match=r"must be an iterable.*int"):
            find_loaders("val", [loader(4), 5], None, BoringModel())

    def test_several_training_loaders_raise(self) -> None:
        with pytest.raises(MisconfigurationException, match="2 training dataloaders"):
            find_loaders("train", [loader(4), loader(4)], None, BoringModel())


def test_no_training_data_error(tmp_path: Path) -> None:
    from stepstone import LightningModule

    class NoData(BoringModel):
        train_dataloader = LightningModule.train_dataloader  # type: ignore[assignment]

    with pytest.raises(MisconfigurationException, match="found no training data"):
        make_trainer(tmp_path).fit(NoData())


def test_iterable_dataset_with_int_limit(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(BoringModel(), iterable_loader(16))
    assert trainer.num_training_batches == 3 and trainer.global_step == 6


def test_iterable_dataset_with_fraction_raises(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="no length"):
        make_trainer(tmp_path, limit_train_batches=0.5).fit(BoringModel(), iterable_loader(16))


def _with_hook_set_to_none(name: str, hook: str, fn: str, tmp_path: Path) -> tuple[Any, ...]:
    """Call ``trainer.<fn>(model)`` after ``setattr(model, hook, None)``: (outcome, global_step, eval batches)."""
    from both_frameworks import data, framework, module_class, quiet

    pl, _ = framework(name)
    evaluated: list[int] = []

    class Model(module_class(name)):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            evaluated.append(batch_idx)

        def test_step(self, batch: Any, batch_idx: int) -> None:
            evaluated.append(batch_idx)

        def train_dataloader(self) -> Any:
            return data(2)

        val_dataloader = test_dataloader = predict_dataloader = train_dataloader

    model = Model()
    setattr(model, hook, None)
    quiet_args = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
    trainer = pl.Trainer(
        max_epochs=1, default_root_dir=tmp_path / name, enable_checkpointing=False, **quiet_args
    )
    with quiet():
        try:
            getattr(trainer, fn)(model)
        except TypeError as exc:
            return "TypeError", "Found None" in str(exc) or "found None" in str(exc)
    return "ran", trainer.global_step, len(evaluated)


@pytest.mark.parametrize(
    ("hook", "fn"),
    [
        ("val_dataloader", "fit"),
        ("val_dataloader", "validate"),
        ("train_dataloader", "fit"),
        ("test_dataloader", "test"),
        ("predict_dataloader", "predict"),
    ],
)
def test_a_dataloader_hook_set_to_none_is_handled_as_in_lightning(tmp_path: Path, hook: str, fn: str) -> None:
    lightning = _with_hook_set_to_none("lightning", hook, fn, tmp_path)
    assert _with_hook_set_to_none("stepstone", hook, fn, tmp_path) == lightning
    # Only validation inside fit is switched off that way; elsewhere the missing data is an error.
    assert lightning == (("ran", 2, 0) if fn == "fit" and hook == "val_dataloader" else ("TypeError", True))
