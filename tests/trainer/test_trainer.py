"""The Trainer's entry points and stopping conditions, and its attributes."""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from models import BoringModel, MemoryLogger, loader, make_trainer
from stepstone.errors import MisconfigurationException
from stepstone.trainer.state import RunningStage, TrainerFn, TrainerStatus
from twin_models import fit_twin


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_fit_trains_and_counts(tmp_path: Path) -> None:
    model = BoringModel()
    before = _weights(model)
    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(model)
    assert trainer.current_epoch == 2
    assert trainer.global_step == 8  # 4 batches x 2 epochs
    assert trainer.state.status == TrainerStatus.FINISHED
    assert trainer.state.fn == TrainerFn.FITTING
    assert trainer.state.stage is None
    assert not trainer.interrupted
    assert trainer.lightning_module is model
    assert model.trainer is trainer
    assert any(not torch.equal(a, b) for a, b in zip(before, _weights(model), strict=True))
    assert "val_loss" in trainer.callback_metrics
    assert trainer.num_training_batches == 4
    assert trainer.num_val_batches == [2]


def test_fit_loss_goes_down(tmp_path: Path) -> None:
    model = BoringModel()
    trainer = make_trainer(tmp_path, max_epochs=5)
    trainer.fit(model)
    first = make_trainer(tmp_path).validate(BoringModel(), verbose=False)[0]["val_loss"]
    last = trainer.validate(model, verbose=False)[0]["val_loss"]
    assert last < first


def test_validate_test_predict(tmp_path: Path) -> None:
    model = BoringModel()
    trainer = make_trainer(tmp_path)
    val = trainer.validate(model, verbose=False)
    assert len(val) == 1 and set(val[0]) == {"val_loss"} and isinstance(val[0]["val_loss"], float)
    assert trainer.state.fn == TrainerFn.VALIDATING
    test = trainer.test(model, verbose=False)
    assert set(test[0]) == {"test_loss"}
    predictions = trainer.predict(model)
    assert predictions is not None and len(predictions) == 2
    assert predictions[0].shape == (4, 2)
    assert trainer.global_step == 0  # evaluation takes no optimizer step


def test_evaluation_leaves_weights_alone(tmp_path: Path) -> None:
    model = BoringModel()
    before = _weights(model)
    trainer = make_trainer(tmp_path)
    trainer.validate(model, verbose=False)
    trainer.test(model, verbose=False)
    trainer.predict(model)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model), strict=True))


def test_validate_reuses_the_attached_model(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=1)
    model = BoringModel()
    trainer.fit(model)
    assert trainer.validate(verbose=False)[0]["val_loss"] >= 0
    with pytest.raises(MisconfigurationException, match="needs a model"):
        make_trainer(tmp_path).validate()


def test_validate_verbose_prints_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_trainer(tmp_path).validate(BoringModel())
    assert "val_loss" in capsys.readouterr().err


def test_fit_rejects_non_modules(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="LightningModule"):
        make_trainer(tmp_path).fit(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_max_steps_stops_mid_epoch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=6, limit_val_batches=0)
    trainer.fit(BoringModel())
    assert trainer.global_step == 6
    # Epoch 1 was cut short after 2 of its 4 batches, but (as in Lightning) it still ran its end hooks and counts.
    assert trainer.current_epoch == 2
    assert trainer.max_epochs == -1


def test_max_epochs_zero_trains_nothing(tmp_path: Path) -> None:
    calls: list[str] = []

    class Model(BoringModel):
        def on_train_start(self) -> None:
            calls.append("on_train_start")

    trainer = make_trainer(tmp_path, max_epochs=0)
    trainer.fit(Model())
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    assert calls == []  # as in Lightning: nothing to train, no training hooks


class StopAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_should_stop_ends_training_after_the_epoch_end_hooks(tmp_path: Path) -> None:
    epochs_ended: list[int] = []

    class Model(BoringModel):
        def on_train_epoch_end(self) -> None:
            epochs_ended.append(self.current_epoch)

    trainer = make_trainer(tmp_path, max_epochs=10, callbacks=[StopAt(2)], limit_val_batches=0)
    trainer.fit(Model())
    assert trainer.global_step == 2
    assert epochs_ended == [0]
    assert trainer.current_epoch == 1


def test_min_epochs_overrides_should_stop(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=10, min_epochs=3, callbacks=[StopAt(1)], limit_val_batches=0)
    trainer.fit(BoringModel())
    assert trainer.current_epoch == 3
    assert trainer.global_step == 12


def test_min_steps_overrides_should_stop(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=10, min_steps=6, callbacks=[StopAt(1)], limit_val_batches=0)
    trainer.fit(BoringModel())
    assert trainer.global_step == 6


def test_should_stop_in_on_fit_start_with_min_steps(tmp_path: Path) -> None:
    class Stop(L.Callback):
        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            trainer.should_stop = True

    trainer = make_trainer(tmp_path, max_epochs=10, min_steps=2, callbacks=[Stop()], limit_val_batches=0)
    trainer.fit(BoringModel())
    # min_steps implies min_epochs=1 (Lightning), so the first epoch runs to its end, then training stops.
    assert trainer.global_step == 4 and trainer.current_epoch == 1


def test_max_time_stops_training(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_time=timedelta(0), max_epochs=5, limit_val_batches=0)
    trainer.fit(BoringModel())
    assert trainer.global_step == 0  # the time was up before the first epoch
    trainer = make_trainer(tmp_path, max_time=timedelta(0), min_epochs=1, max_epochs=5, limit_val_batches=0)
    trainer.fit(BoringModel())
    assert trainer.global_step == 4  # min_epochs still holds, as with Lightning's Timer


def test_fit_twice_continues_with_larger_max_epochs(tmp_path: Path) -> None:
    model = BoringModel()
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model)
    trainer.fit_loop.max_epochs = 2
    trainer.fit(model)
    assert trainer.current_epoch == 2 and trainer.global_step == 8


def test_estimated_stepping_batches(tmp_path: Path) -> None:
    seen: list[float] = []

    class Model(BoringModel):
        def configure_optimizers(self) -> Any:
            seen.append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()

    make_trainer(tmp_path, max_epochs=3, accumulate_grad_batches=3, limit_val_batches=0).fit(Model())
    make_trainer(tmp_path, max_epochs=3, max_steps=5, limit_val_batches=0).fit(Model())
    make_trainer(tmp_path, max_epochs=-1, max_steps=5, limit_val_batches=0).fit(Model())
    assert seen == [6, 5, 5]  # ceil(4 / 3) * 3; then min(4 * 3, 5); then max_steps


@pytest.fixture
def restore_determinism(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.mark.usefixtures("restore_determinism")
def test_deterministic_flag(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, deterministic=True)
    assert trainer.deterministic is True
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    make_trainer(tmp_path, deterministic="warn")
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    make_trainer(tmp_path, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.usefixtures("restore_determinism")
def test_deterministic_runs_are_identical(tmp_path: Path) -> None:
    def run() -> list[torch.Tensor]:
        torch.manual_seed(7)
        model = BoringModel()
        make_trainer(tmp_path, deterministic=True, max_epochs=2, limit_val_batches=0).fit(
            model, loader(16, shuffle=True)
        )
        return _weights(model)

    assert all(torch.equal(a, b) for a, b in zip(run(), run(), strict=True))


def test_fast_dev_run_runs_one_batch_without_loggers_or_checkpoints(tmp_path: Path) -> None:
    steps: list[str] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            steps.append("train")
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            steps.append("sanity" if self.trainer.sanity_checking else "val")
            return super().validation_step(batch, batch_idx)

    trainer = L.Trainer(
        default_root_dir=tmp_path, fast_dev_run=True, enable_progress_bar=False, enable_model_summary=False
    )
    assert trainer.checkpoint_callback is not None  # present, but it must not write
    trainer.fit(Model(), loader(16), loader(8))
    assert steps == ["train", "val"]
    assert trainer.global_step == 1 and trainer.current_epoch == 1
    assert trainer.loggers == []
    assert list(tmp_path.iterdir()) == []  # no log folder, no checkpoint


def test_fast_dev_run_n_batches(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, fast_dev_run=3, max_epochs=5)
    trainer.fit(BoringModel())
    assert trainer.global_step == 3 and trainer.current_epoch == 1
    assert trainer.num_val_batches == [2]  # the val loader has only 2 batches
    assert trainer.test(BoringModel(), verbose=False)[0]["test_loss"] > 0
    assert trainer.num_test_batches == [2]


def test_fast_dev_run_sends_nothing_to_loggers(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, fast_dev_run=True, logger=MemoryLogger())
    assert trainer.loggers == []


def test_stage_flags_during_the_run(tmp_path: Path) -> None:
    seen: dict[str, list[RunningStage | None]] = {}

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            seen.setdefault("train", []).append(self.trainer.state.stage)
            assert self.trainer.training and not self.trainer.validating
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            key = "sanity" if self.trainer.sanity_checking else "val"
            seen.setdefault(key, []).append(self.trainer.state.stage)
            return super().validation_step(batch, batch_idx)

        def test_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            assert self.trainer.testing
            return super().test_step(batch, batch_idx)

        def predict_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> Any:
            assert self.trainer.predicting
            return super().predict_step(batch, batch_idx)

    trainer = make_trainer(
        tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=1
    )
    model = Model()
    trainer.fit(model)
    trainer.test(model, verbose=False)
    trainer.predict(model)
    assert seen == {
        "sanity": [RunningStage.SANITY_CHECKING],
        "train": [RunningStage.TRAINING],
        "val": [RunningStage.VALIDATING],
    }


def test_model_is_back_in_train_mode_after_validation(tmp_path: Path) -> None:
    modes: list[bool] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            modes.append(self.training)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            modes.append(self.training)
            return super().validation_step(batch, batch_idx)

    make_trainer(tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=1).fit(Model())
    assert modes == [False, True, False, True, False]  # sanity (1 batch), then train/val twice


def test_trainer_properties(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    assert trainer.model is None
    with pytest.raises(MisconfigurationException, match="No LightningModule"):
        _ = trainer.lightning_module
    assert trainer.is_global_zero and trainer.world_size == 1 and trainer.num_devices == 1
    assert trainer.global_rank == trainer.local_rank == trainer.node_rank == 0
    assert trainer.logger is None and trainer.loggers == []
    assert trainer.log_dir == str(tmp_path)
    assert trainer.checkpoint_callback is None and trainer.checkpoint_callbacks == []
    assert trainer.progress_bar_callback is None
    logger = MemoryLogger()
    trainer.logger = logger
    assert trainer.loggers == [logger]
    trainer.logger = None
    assert trainer.loggers == []


def test_default_logger_and_callbacks(tmp_path: Path) -> None:
    from stepstone.callbacks import ModelCheckpoint, TQDMProgressBar
    from stepstone.loggers import CSVLogger

    trainer = L.Trainer(default_root_dir=tmp_path)
    assert isinstance(trainer.logger, CSVLogger)
    assert isinstance(trainer.checkpoint_callback, ModelCheckpoint)
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)


def test_checkpoint_callbacks_run_last(tmp_path: Path) -> None:
    from stepstone.callbacks import ModelCheckpoint

    first, last = L.Callback(), L.Callback()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(), first, last],
        logger=False,
        enable_progress_bar=False,
    )
    assert trainer.callbacks[:2] == [first, last]
    assert isinstance(trainer.callbacks[-1], ModelCheckpoint)


def test_enable_flags_conflicting_with_callbacks(tmp_path: Path) -> None:
    from stepstone.callbacks import ModelCheckpoint, TQDMProgressBar

    with pytest.raises(MisconfigurationException, match="enable_checkpointing=False"):
        L.Trainer(default_root_dir=tmp_path, enable_checkpointing=False, callbacks=[ModelCheckpoint()])
    with pytest.raises(MisconfigurationException, match="enable_progress_bar=False"):
        L.Trainer(default_root_dir=tmp_path, enable_progress_bar=False, callbacks=[TQDMProgressBar()])


def test_hyperparameters_reach_the_logger(tmp_path: Path) -> None:
    class Model(BoringModel):
        def __init__(self, lr: float = 0.1, hidden: int = 3) -> None:
            super().__init__(lr)
            self.save_hyperparameters()

    logger = MemoryLogger()
    make_trainer(tmp_path, logger=logger, max_steps=1, limit_val_batches=0).fit(Model(hidden=5))
    assert logger.hparams == [{"lr": 0.1, "hidden": 5}]
    assert logger.finalized == ["success"]


def test_model_summary_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_trainer(tmp_path, enable_model_summary=True, max_steps=1, limit_val_batches=0).fit(BoringModel())
    err = capsys.readouterr().err
    assert (
        "| Name" in err and "10        Trainable params" in err
    )  # Lightning's table (tests/callbacks/test_model_summary.py)


def _restored_by(name: str, fn: str, tmp_path: Path) -> tuple[list[str], int]:
    """What ``trainer.<fn>(ckpt_path=...)`` restores of a callback's state, under ``name``'s framework."""
    from both_frameworks import data, framework, module_class, quiet

    pl, _ = framework(name)
    events: list[str] = []

    class Counter(pl.Callback):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self.epochs = 0

        def state_dict(self) -> dict[str, int]:
            return {"epochs": self.epochs}

        def load_state_dict(self, state: dict[str, int]) -> None:
            events.append("load_state_dict")
            self.epochs = state["epochs"]

        def on_load_checkpoint(self, *args: Any) -> None:
            events.append("on_load_checkpoint")

        def on_train_epoch_end(self, *args: Any) -> None:
            self.epochs += 1

    class Model(module_class(name)):  # type: ignore[misc]
        def validation_step(self, batch: Any, batch_idx: int) -> None: ...

        def test_step(self, batch: Any, batch_idx: int) -> None: ...

        def predict_step(self, batch: Any, batch_idx: int) -> Any:
            return self.layer(batch[0])

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            events.append("module.on_load_checkpoint")

    quiet_args = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
    path = tmp_path / name / "a.ckpt"
    with quiet():
        first = pl.Trainer(
            max_epochs=3, callbacks=[Counter()], default_root_dir=tmp_path / name, **quiet_args
        )
        first.fit(Model(), data(1))
        first.save_checkpoint(path)
        counter = Counter()
        second = pl.Trainer(callbacks=[counter], default_root_dir=tmp_path / name, **quiet_args)
        getattr(second, fn)(Model(), data(1), ckpt_path=path)
    return events, counter.epochs


@pytest.mark.parametrize("fn", ["validate", "test", "predict"])
def test_evaluating_from_a_checkpoint_restores_callbacks_as_lightning_does(tmp_path: Path, fn: str) -> None:
    lightning = _restored_by("lightning", fn, tmp_path)
    assert _restored_by("stepstone", fn, tmp_path) == lightning
    assert lightning == (["module.on_load_checkpoint", "on_load_checkpoint", "load_state_dict"], 3)


def _fit_with_too_small_val_limit(name: str, tmp_path: Path, **options: Any) -> tuple[str, int]:
    """fit() with limit_val_batches=0.1 of 4 batches: ("raised: <message>" or "finished", global_step)."""
    from both_frameworks import data, framework, module_class, quiet

    pl, _ = framework(name)
    quiet_args = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
    trainer = pl.Trainer(
        max_epochs=2,
        limit_val_batches=0.1,
        default_root_dir=tmp_path / name,
        enable_checkpointing=False,
        **quiet_args,
        **options,
    )
    with quiet():
        try:
            trainer.fit(module_class(name, validate=True)(), data(4), data(4, seed=1))
        except Exception as exc:  # the outcome is compared between the frameworks
            return f"raised: {'limit_val_batches=0.25' in str(exc)}", trainer.global_step
    return "finished", trainer.global_step


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"num_sanity_val_steps": 0},
        {"num_sanity_val_steps": 0, "check_val_every_n_epoch": 2},
        {
            "num_sanity_val_steps": 0,
            "check_val_every_n_epoch": 5,
        },
    ],
)
def test_a_val_limit_below_one_batch_fails_when_validation_first_runs(tmp_path: Path, options: Any) -> None:
    lightning = _fit_with_too_small_val_limit("lightning", tmp_path, **options)
    assert _fit_with_too_small_val_limit("stepstone", tmp_path, **options) == lightning
    assert lightning[0] == ("finished" if options.get("check_val_every_n_epoch") == 5 else "raised: True")


def _evaluate_nothing(name: str, fn: str, tmp_path: Path) -> tuple[Any, list[str]]:
    """``trainer.<fn>`` with its limit at 0: (what it returns, the evaluation hooks called)."""
    from both_frameworks import data, framework, module_class, quiet

    pl, _ = framework(name)
    called: list[str] = []
    stage = {"validate": "validation", "test": "test", "predict": "predict"}[fn]

    class Watch(pl.Callback):  # type: ignore[misc, name-defined]
        pass

    for hook in ("start", "epoch_start", "epoch_end", "end"):
        hook_name = f"on_{stage}_{hook}"
        setattr(Watch, hook_name, lambda self, *args, hook_name=hook_name: called.append(hook_name))

    class Model(module_class(name)):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def validation_step(self, batch: Any, batch_idx: int) -> None: ...

        def test_step(self, batch: Any, batch_idx: int) -> None: ...

    limit = {
        "validate": "limit_val_batches",
        "test": "limit_test_batches",
        "predict": "limit_predict_batches",
    }[fn]
    quiet_args = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
    trainer = pl.Trainer(callbacks=[Watch()], default_root_dir=tmp_path / name, **{limit: 0}, **quiet_args)
    with quiet():
        result = getattr(trainer, fn)(Model(), data(2))
    return result, called


@pytest.mark.parametrize("fn", ["validate", "test", "predict"])
def test_an_evaluation_limited_to_no_batches_is_skipped_as_in_lightning(tmp_path: Path, fn: str) -> None:
    lightning = _evaluate_nothing("lightning", fn, tmp_path)
    assert _evaluate_nothing("stepstone", fn, tmp_path) == lightning
    assert lightning == (None if fn == "predict" else [], [])


def _best_without_a_best_file(name: str, fn: str, checkpointing: bool, tmp_path: Path) -> str:
    from both_frameworks import data, framework, module_class, quiet

    pl, _ = framework(name)

    class Model(module_class(name)):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def validation_step(self, batch: Any, batch_idx: int) -> None: ...

        def test_step(self, batch: Any, batch_idx: int) -> None: ...

    quiet_args = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
    trainer = pl.Trainer(enable_checkpointing=checkpointing, default_root_dir=tmp_path / name, **quiet_args)
    with quiet(), pytest.raises(ValueError) as caught:
        getattr(trainer, fn)(Model(), data(1), ckpt_path="best")
    return str(caught.value)


@pytest.mark.parametrize("fn", ["validate", "test", "predict"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_best_without_a_best_checkpoint_raises_a_value_error_as_lightning(
    tmp_path: Path, fn: str, checkpointing: bool
) -> None:
    lightning = _best_without_a_best_file("lightning", fn, checkpointing, tmp_path)
    stepstone = _best_without_a_best_file("stepstone", fn, checkpointing, tmp_path)
    assert f'{fn}(ckpt_path="best")` is set but' in lightning
    assert f'{fn}(ckpt_path="best") is set but' in stepstone
    # The same reason: no ModelCheckpoint at all, or one that has no best model.
    assert ("configured to save the best model" in stepstone) == ("to save the best model" in lightning)


@pytest.mark.parametrize("framework", ["lightning", "stepstone"])
def test_a_trainer_deep_copied_after_fit_carries_on_alone(framework: str, tmp_path: Path) -> None:
    # The defaults (a ModelCheckpoint, a CSV logger); stepstone's checkpoints saved in the background too.
    extra = {} if framework == "lightning" else {"callbacks": [L.callbacks.ModelCheckpoint(async_save=True)]}
    trainer, model = fit_twin(framework, tmp_path, **extra)
    copied = copy.deepcopy(trainer)
    assert pickle.loads(pickle.dumps(trainer)).global_step == 4
    module = copied.lightning_module
    assert module is not model and torch.equal(module.layer.weight, model.layer.weight)
    assert copied.optimizers[0].param_groups[0]["params"][0] is module.layer.weight
    with pytest.raises(RuntimeError, match="is not attached to a `Trainer`"):
        module.trainer  # noqa: B018 (as in Lightning: the module's copy drops its Trainer)
    copied.fit_loop.max_epochs = 2
    copied.fit(module, loader())
    assert (copied.global_step, trainer.global_step) == (8, 4)
    assert not torch.equal(module.layer.weight, model.layer.weight)
