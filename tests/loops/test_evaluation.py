"""The evaluation loop: modes, gradients, several dataloaders, results and counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import stepstone as L
from models import BoringModel, MemoryLogger, iterable_loader, loader, make_trainer


class GradSpy(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.states: list[tuple[bool, bool, bool]] = []

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        out = self(batch)
        self.states.append((self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        self.log("val_loss", self.loss(out))

    test_step = validation_step


def test_validate_runs_in_eval_mode_under_inference_mode(tmp_path: Path) -> None:
    model = GradSpy()
    make_trainer(tmp_path).validate(model, verbose=False)
    assert model.states == [(False, False, True)] * 2
    assert model.training  # the mode is restored afterwards


def test_inference_mode_false_uses_no_grad(tmp_path: Path) -> None:
    model = GradSpy()
    make_trainer(tmp_path, inference_mode=False).test(model, verbose=False)
    assert model.states == [(False, False, False)] * 2


def test_validation_inside_fit_uses_no_grad(tmp_path: Path) -> None:
    model = GradSpy()
    make_trainer(tmp_path, max_epochs=1, limit_val_batches=1, num_sanity_val_steps=1).fit(model)
    assert model.states == [(False, False, False)] * 2  # sanity check and validation, not inference_mode


def test_submodule_modes_are_restored(tmp_path: Path) -> None:
    # Lightning 2.2+: a submodule frozen in eval mode stays in eval mode after validation.
    class Model(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm1d(2)
            self.norm.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.layer(x))

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            assert self.training and not self.norm.training
            return super().training_step(batch, batch_idx)

    model = Model()
    with pytest.warns(
        UserWarning, match=r"Found 1 module\(s\) in eval mode at the start of training \(norm\)"
    ):
        make_trainer(tmp_path, max_epochs=1).fit(model)
    assert model.training and not model.norm.training
    model.eval()
    make_trainer(tmp_path).validate(model, verbose=False)
    assert not model.training  # an eval-mode model stays in eval mode


def test_overridden_model_train_hook_decides(tmp_path: Path) -> None:
    class Model(BoringModel):
        def on_validation_model_train(self) -> None:
            self.train()

    model = Model()
    model.eval()
    make_trainer(tmp_path).validate(model, verbose=False)
    assert model.training


def test_test_returns_one_dict_per_dataloader(tmp_path: Path) -> None:
    class Model(BoringModel):
        def test_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("size", float(len(batch)), reduce_fx="sum")

    result = make_trainer(tmp_path).test(Model(), [loader(8), loader(6), loader(1)], verbose=False)
    assert result == [
        {"size/dataloader_idx_0": 8.0},
        {"size/dataloader_idx_1": 6.0},
        {"size/dataloader_idx_2": 1.0},
    ]


def test_verbose_results_name_each_dataloader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("v", 1.0)

    make_trainer(tmp_path).validate(Model(), [loader(4), loader(4)])
    err = capsys.readouterr().err
    assert "validate metrics (dataloader 1)" in err and "v/dataloader_idx_1" in err


def test_dataloader_idx_reaches_the_batch_hooks(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []

    class Spy(L.Callback):
        def on_validation_batch_end(
            self,
            trainer: L.Trainer,
            pl_module: L.LightningModule,
            outputs: Any,
            batch: Any,
            batch_idx: int,
            dataloader_idx: int = 0,
        ) -> None:
            calls.append(("cb", batch_idx, dataloader_idx))

    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> Any:
            return dataloader_idx

        def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            calls.append(("start", batch_idx, dataloader_idx))

    make_trainer(tmp_path, callbacks=[Spy()]).validate(Model(), [loader(4), loader(8)], verbose=False)
    assert calls == [
        ("start", 0, 0),
        ("cb", 0, 0),
        ("start", 0, 1),
        ("cb", 0, 1),
        ("start", 1, 1),
        ("cb", 1, 1),
    ]


def test_val_dataloaders_property(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
            pass

    single, first, second = loader(4), loader(4), loader(4)
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(Model(), loader(8), single)
    assert trainer.val_dataloaders is single
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(Model(), loader(8), [first, second])
    assert trainer.val_dataloaders == [first, second]
    assert trainer.num_val_batches == [1, 1]


def test_unsized_validation_data(tmp_path: Path) -> None:
    result = make_trainer(tmp_path).validate(BoringModel(), iterable_loader(12), verbose=False)
    assert set(result[0]) == {"val_loss"}
    result = make_trainer(tmp_path, limit_val_batches=1).validate(
        BoringModel(), iterable_loader(12), verbose=False
    )
    assert set(result[0]) == {"val_loss"}


def test_fit_validation_counts_batches(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=2, val_check_interval=2, num_sanity_val_steps=1)
    trainer.fit(BoringModel())
    progress = trainer.fit_loop.val_batch_progress
    assert progress.current.completed == 2  # the last run: 2 batches
    assert progress.total.completed == 4  # reset each training epoch: 2 runs of 2 batches in epoch 1
    assert progress.is_last_batch


def test_validation_metrics_do_not_leak_into_the_next_run(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("v", float(self.current_epoch))

    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_epochs=3, logger=logger, num_sanity_val_steps=0)
    trainer.fit(Model())
    assert logger.values_of("v") == [0.0, 1.0, 2.0]  # each run's mean, not a running mean across runs


def _metrics_seen(name: str, tmp_path: Path) -> list[tuple[str, dict[str, float]]]:
    """Published metrics at each evaluation-end hook, in fit then in a second ``validate``, under ``name``."""
    from both_frameworks import data, framework, quiet

    pl, _ = framework(name)
    seen: list[tuple[str, dict[str, float]]] = []

    def record(where: str, trainer: Any) -> None:
        for kind in ("callback_metrics", "logged_metrics", "progress_bar_metrics"):
            seen.append((f"{where}/{kind}", {k: float(v) for k, v in getattr(trainer, kind).items()}))

    class Watch(pl.Callback):  # type: ignore[misc, name-defined]
        def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
            record("callback.on_validation_epoch_end", trainer)

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            record("callback.on_validation_end", trainer)

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("epoch_only", float(batch_idx + 1), on_step=False, on_epoch=True)
            self.log("step_only", float(batch_idx + 1), on_step=True, on_epoch=False)
            self.log("both", float(batch_idx + 1), on_step=True, on_epoch=True, prog_bar=True)

        def on_validation_epoch_end(self) -> None:
            record("module.on_validation_epoch_end", self.trainer)
            self.log("at_epoch_end", 5.0)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    quiet_args = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
    with quiet():
        trainer = pl.Trainer(
            max_epochs=1,
            num_sanity_val_steps=0,
            callbacks=[Watch()],
            default_root_dir=tmp_path / name,
            enable_checkpointing=False,
            **quiet_args,
        )
        trainer.fit(Model(), data(2), data(2, seed=1))
        trainer.validate(Model(), data(2, seed=1), verbose=False)
    return seen


def test_validation_epoch_metrics_are_published_before_on_validation_epoch_end(tmp_path: Path) -> None:
    lightning = _metrics_seen("lightning", tmp_path)
    assert _metrics_seen("stepstone", tmp_path) == lightning
    assert dict(lightning)["module.on_validation_epoch_end/callback_metrics"]["epoch_only"] == 1.5
