"""Hook order (module and callbacks) against Lightning's, and what happens when a run fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from models import BoringModel, HookedModel, MemoryLogger, RecordingCallback, loader, make_trainer
from stepstone.trainer.hooks import is_overridden, step_arguments
from stepstone.trainer.state import TrainerStatus

_DATALOADER_HOOKS = {"train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"}


def _transfer() -> list[str]:
    return ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"]


def _both(name: str) -> list[str]:
    return [f"Callback.{name}", name]


def _eval_run(stage: str, batches: int) -> list[str]:
    """Lightning's order for one validation/test run (the recorder overrides on_*_model_train, so it runs)."""
    calls = [f"on_{stage}_model_eval", *_both(f"on_{stage}_start"), *_both(f"on_{stage}_epoch_start")]
    for _ in range(batches):
        calls += [
            *_transfer(),
            *_both(f"on_{stage}_batch_start"),
            f"{stage}_step",
            *_both(f"on_{stage}_batch_end"),
        ]
    calls += [*_both(f"on_{stage}_epoch_end"), *_both(f"on_{stage}_end")]
    return [*calls, f"on_{stage}_model_train"]


def _train_batch() -> list[str]:
    # Recorded on entry: optimizer_step runs the closure (training_step, zero_grad, backward), then the hooks that
    # Lightning runs after the closure (on_before_optimizer_step, clipping), then the actual step.
    return [
        *_transfer(),
        *_both("on_train_batch_start"),
        "optimizer_step",
        "training_step",
        *_both("on_before_zero_grad"),
        "optimizer_zero_grad",
        *_both("on_before_backward"),
        "backward",
        *_both("on_after_backward"),
        *_both("on_before_optimizer_step"),
        "configure_gradient_clipping",
        "clip_gradients",
        *_both("on_train_batch_end"),
    ]


def test_fit_hook_order(tmp_path: Path) -> None:
    events: list[str] = []
    trainer = make_trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        callbacks=[RecordingCallback(events)],
    )
    trainer.fit(HookedModel(events))
    epoch = [*_both("on_train_epoch_start"), *_train_batch(), *_train_batch()]
    epoch += ["on_validation_model_zero_grad", *_eval_run("validation", 1)]
    epoch += _both("on_train_epoch_end")
    expected = [
        "prepare_data",
        *_both("setup"),
        "configure_model",
        "configure_optimizers",
        *_both("on_fit_start"),
        "Callback.on_sanity_check_start",
        *_eval_run("validation", 1),
        "Callback.on_sanity_check_end",
        *_both("on_train_start"),
        *epoch,
        *epoch,
        *_both("on_train_end"),
        *_both("on_fit_end"),
        *_both("teardown"),
    ]
    assert [e for e in events if e not in _DATALOADER_HOOKS] == expected


def test_dataloaders_are_requested_after_setup(tmp_path: Path) -> None:
    events: list[str] = []
    make_trainer(tmp_path, max_steps=1, callbacks=[RecordingCallback(events)]).fit(HookedModel(events))
    first_loader = min(events.index("train_dataloader"), events.index("val_dataloader"))
    assert events.index("setup") < first_loader < events.index("configure_optimizers")
    assert events.count("train_dataloader") == events.count("val_dataloader") == 1


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluation_hook_order(tmp_path: Path, stage: str) -> None:
    events: list[str] = []
    trainer = make_trainer(
        tmp_path, limit_val_batches=2, limit_test_batches=2, callbacks=[RecordingCallback(events)]
    )
    getattr(trainer, stage)(HookedModel(events), verbose=False)
    name = "validation" if stage == "validate" else "test"
    expected = [
        "prepare_data",
        "Callback.setup",
        "setup",
        "configure_model",
        *_eval_run(name, 2),
        "Callback.teardown",
        "teardown",
    ]
    assert [e for e in events if e not in _DATALOADER_HOOKS] == expected


def test_predict_hook_order(tmp_path: Path) -> None:
    events: list[str] = []
    trainer = make_trainer(tmp_path, limit_predict_batches=1, callbacks=[RecordingCallback(events)])
    trainer.predict(HookedModel(events))
    expected = [
        "prepare_data",
        *_both("setup"),
        "configure_model",
        "on_predict_model_eval",
        *_both("on_predict_start"),
        *_both("on_predict_epoch_start"),
        *_transfer(),
        *_both("on_predict_batch_start"),
        "predict_step",
        *_both("on_predict_batch_end"),
        *_both("on_predict_epoch_end"),
        *_both("on_predict_end"),
        *_both("teardown"),
    ]
    assert [e for e in events if e not in _DATALOADER_HOOKS] == expected


def test_hook_arguments(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Spy(L.Callback):
        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            seen["setup"] = (trainer, pl_module, stage)

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            seen.setdefault("batch_idx", []).append(batch_idx)
            seen["outputs"] = outputs

        def on_before_optimizer_step(
            self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
        ) -> None:
            seen["optimizer"] = optimizer

        def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            seen["teardown"] = stage

    model = BoringModel()
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[Spy()])
    trainer.fit(model)
    assert seen["setup"] == (trainer, model, "fit")
    assert seen["teardown"] == "fit"
    assert seen["batch_idx"] == [0, 1, 2, 3]
    assert set(seen["outputs"]) == {"loss"} and not seen["outputs"]["loss"].requires_grad
    assert seen["optimizer"] is trainer.optimizers[0]


def test_on_train_batch_start_minus_one_skips_the_rest_of_the_epoch(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    ended: list[int] = []

    class Model(BoringModel):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
            return -1 if batch_idx == 2 else None

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            seen.append((self.current_epoch, batch_idx))
            return super().training_step(batch, batch_idx)

        def on_train_epoch_end(self) -> None:
            ended.append(self.current_epoch)

    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(Model())
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert ended == [0, 1]
    assert trainer.global_step == 4 and trainer.current_epoch == 2


class Boom(RuntimeError):
    pass


class FailingModel(BoringModel):
    def __init__(self, exc: BaseException, at_batch: int = 1) -> None:
        super().__init__()
        self.exc, self.at_batch = exc, at_batch
        self.torn_down: list[str] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        if batch_idx == self.at_batch:
            raise self.exc
        return super().training_step(batch, batch_idx)

    def teardown(self, stage: str) -> None:
        self.torn_down.append(stage)


class ExceptionSpy(L.Callback):
    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []
        self.stage_seen: list[Any] = []

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.exceptions.append(exception)
        self.stage_seen.append(trainer.state.status)


def test_exception_calls_on_exception_and_finalizes_loggers(tmp_path: Path) -> None:
    error = Boom("broken step")
    spy, logger = ExceptionSpy(), MemoryLogger()
    model = FailingModel(error)
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[spy], logger=logger)
    with pytest.raises(Boom, match="broken step"):
        trainer.fit(model)
    assert spy.exceptions == [error]
    assert spy.stage_seen == [TrainerStatus.INTERRUPTED]
    assert logger.finalized == ["failed"]
    assert trainer.interrupted and trainer.state.stage is None
    assert (
        model.torn_down == []
    )  # as in Lightning: the teardown hooks run only after a run that did not raise
    assert trainer.global_step == 1


def test_exception_in_validate_is_handled_too(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            raise Boom("in validation")

    spy = ExceptionSpy()
    trainer = make_trainer(tmp_path, callbacks=[spy])
    with pytest.raises(Boom):
        trainer.validate(Model(), verbose=False)
    assert len(spy.exceptions) == 1 and trainer.interrupted


def test_keyboard_interrupt_shuts_down_gracefully_then_reraises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spy, logger = ExceptionSpy(), MemoryLogger()
    model = FailingModel(KeyboardInterrupt(), at_batch=2)
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[spy], logger=logger)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(model)
    assert "Detected KeyboardInterrupt" in capsys.readouterr().err
    assert len(spy.exceptions) == 1 and isinstance(spy.exceptions[0], KeyboardInterrupt)
    assert logger.finalized == ["failed"]
    assert (
        model.torn_down == []
    )  # as in Lightning: the teardown hooks run only after a run that did not raise
    assert trainer.interrupted
    assert trainer.global_step == 2


def test_trainer_is_reusable_after_a_failure(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    with pytest.raises(Boom):
        trainer.fit(FailingModel(Boom()))
    trainer.validate(BoringModel(), loader(4), verbose=False)
    assert trainer.state.status == TrainerStatus.FINISHED


def test_is_overridden() -> None:
    class Model(BoringModel):
        pass

    model = Model()
    assert is_overridden("training_step", model, L.LightningModule)
    assert not is_overridden("on_fit_start", model, L.LightningModule)
    model.on_fit_start = lambda: None  # type: ignore[method-assign]
    assert is_overridden("on_fit_start", model, L.LightningModule)
    assert not is_overridden("on_fit_start", L.Callback(), L.Callback)


def test_step_arguments_follow_the_signature() -> None:
    class Model(BoringModel):
        def one(self, batch: Any) -> None: ...
        def two(self, batch: Any, batch_idx: int) -> None: ...
        def named(self, batch: Any, *, batch_idx: int = 0) -> None: ...
        def varargs(self, *args: Any) -> None: ...

    model = Model()
    assert step_arguments(model.one, "b", 3, None) == ("b",)
    assert step_arguments(model.two, "b", 3, None) == ("b", 3)
    assert step_arguments(model.varargs, "b", 3, 1) == ("b", 3, 1)
    assert step_arguments(model.one, "b", 3, 1) == ("b", 1)
    assert step_arguments(lambda batch, batch_idx: None, "b", 3, None) == ("b", 3)


def test_steps_without_batch_idx(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return self.loss(self(batch))

        def validation_step(self, batch: torch.Tensor) -> None:  # type: ignore[override]
            self.log("v", self.loss(self(batch)))

        def predict_step(self, batch: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return self(batch)

    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(Model())
    assert trainer.global_step == 4 and "v" in trainer.callback_metrics
    assert len(trainer.predict(Model()) or []) == 2
