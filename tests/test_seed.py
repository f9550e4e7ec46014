"""``seed_everything``: reproducible python/numpy/torch draws, validation, and DataLoader worker seeding."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

import stepstone as L
from models import BoringModel, make_trainer


@pytest.fixture(autouse=True)
def _clean_seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # seed_everything writes these; monkeypatch puts the environment back after each test.
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_same_seed_same_draws() -> None:
    assert L.seed_everything(123, verbose=False) == 123
    first = _draws()
    L.seed_everything(123, verbose=False)
    second = _draws()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
    L.seed_everything(124, verbose=False)
    third = _draws()
    assert third[0] != first[0] and not torch.equal(third[2], first[2])


def test_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    L.seed_everything(5)
    assert capsys.readouterr().out == "Seed set to 5\n"
    assert os.environ["PL_GLOBAL_SEED"] == "5" and os.environ["PL_SEED_WORKERS"] == "0"
    L.seed_everything(5, workers=True, verbose=False)
    assert os.environ["PL_SEED_WORKERS"] == "1"
    assert capsys.readouterr().out == ""


def test_seed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "77")
    assert L.seed_everything(verbose=False) == 77
    monkeypatch.setenv("PL_GLOBAL_SEED", "seventy")
    with pytest.raises(ValueError, match="PL_GLOBAL_SEED='seventy'"):
        L.seed_everything(verbose=False)


def test_no_seed_warns_and_uses_zero() -> None:
    with pytest.warns(UserWarning, match="using 0"):
        assert L.seed_everything(verbose=False) == 0


def test_numpy_integers_are_accepted() -> None:
    assert L.seed_everything(np.int64(9), verbose=False) == 9  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "42", True])
def test_invalid_seeds_raise(seed: Any) -> None:
    with pytest.raises(ValueError, match=r"seed_everything\(seed="):
        L.seed_everything(seed, verbose=False)


class RandomDraws(Dataset[torch.Tensor]):
    """Each item is a fresh draw from python, numpy and torch, plus the id of the worker that drew it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        info = get_worker_info()
        worker = -1 if info is None else info.id
        return torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(())), worker])


class Passthrough(BoringModel):
    def predict_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return batch


def _predict_draws(tmp_path: Path, seed: int) -> tuple[torch.Tensor, DataLoader[torch.Tensor]]:
    L.seed_everything(seed, workers=True, verbose=False)
    data = DataLoader(RandomDraws(), batch_size=2, num_workers=2)
    outputs = make_trainer(tmp_path).predict(Passthrough(), data)
    assert outputs is not None
    return torch.cat(outputs), data


def test_workers_true_seeds_dataloader_workers(tmp_path: Path) -> None:
    first, data = _predict_draws(tmp_path, 11)
    assert data.worker_init_fn is not None  # set by the Trainer because of workers=True
    second, _ = _predict_draws(tmp_path, 11)
    assert torch.equal(first, second)  # reproducible per-worker draws
    workers = first[:, 3]
    assert set(workers.tolist()) == {0.0, 1.0}
    by_worker = [first[workers == w][:, :3] for w in (0.0, 1.0)]
    for column in range(3):  # python, numpy and torch each give the two workers different streams
        assert not torch.equal(by_worker[0][:, column], by_worker[1][:, column])
    other, _ = _predict_draws(tmp_path, 12)
    assert not torch.equal(first, other)


def test_workers_false_leaves_the_loader_alone(tmp_path: Path) -> None:
    L.seed_everything(1, verbose=False)
    data = DataLoader(RandomDraws(), batch_size=4, num_workers=2)
    make_trainer(tmp_path).predict(Passthrough(), data)
    assert data.worker_init_fn is None


def test_user_worker_init_fn_is_kept(tmp_path: Path) -> None:
    def mine(worker_id: int) -> None:
        pass

    L.seed_everything(1, workers=True, verbose=False)
    data = DataLoader(RandomDraws(), batch_size=4, num_workers=2, worker_init_fn=mine)
    make_trainer(tmp_path).predict(Passthrough(), data)
    assert data.worker_init_fn is mine


def test_seeded_training_is_reproducible(tmp_path: Path) -> None:
    def run() -> torch.Tensor:
        L.seed_everything(3, verbose=False)
        model = BoringModel()
        data = DataLoader(torch.randn(16, 4), batch_size=4, shuffle=True)
        make_trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(model, data)
        return model.layer.weight.detach().clone()

    assert torch.equal(run(), run())
