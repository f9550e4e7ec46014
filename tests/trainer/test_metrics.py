"""``self.log``: per-hook defaults, key names, reductions, where values go, and the logger cadence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import stepstone as L
from models import BoringModel, MemoryLogger, loader, make_trainer
from stepstone.errors import MisconfigurationException


def test_training_step_logs_per_step_by_default(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("a", float(batch_idx), prog_bar=True)
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(Model())
    assert trainer.callback_metrics["a"].item() == 3.0  # the last step's value
    assert "a_epoch" not in trainer.callback_metrics and "a_step" not in trainer.callback_metrics
    assert trainer.logged_metrics == {"a": torch.tensor(3.0)}  # with or without a logger attached
    assert trainer.progress_bar_metrics == {"a": 3.0}


def test_validation_step_logs_the_epoch_mean_weighted_by_batch_size(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("v", float(batch_idx))  # batch 0 has 4 samples, batch 1 has 2

    trainer = make_trainer(tmp_path)
    result = trainer.validate(Model(), loader(6), verbose=False)
    assert result == [{"v": pytest.approx(1 / 3)}]  # (0 * 4 + 1 * 2) / 6, not 0.5
    assert trainer.callback_metrics["v"].item() == pytest.approx(1 / 3)


def test_explicit_batch_size_weights_the_mean(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("v", float(batch_idx), batch_size=1 if batch_idx == 0 else 3)

    result = make_trainer(tmp_path).validate(Model(), loader(8), verbose=False)
    assert result[0]["v"] == pytest.approx(3 / 4)


def test_batch_size_inferred_from_nested_batches(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
            self.log("v", float(batch_idx))

    batches = [{"meta": "x", "x": [torch.zeros(3, 4)]}, {"meta": "y", "x": [torch.zeros(1, 4)]}]
    result = make_trainer(tmp_path).validate(Model(), DataLoader(batches, batch_size=None), verbose=False)
    assert result[0]["v"] == pytest.approx(1 / 4)


@pytest.mark.parametrize(
    ("reduce_fx", "expected"),
    [("mean", 1.5), ("sum", 6.0), ("max", 3.0), ("min", 0.0), (torch.max, 3.0), (torch.sum, 6.0)],
)
def test_reduce_fx(tmp_path: Path, reduce_fx: Any, expected: float) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("v", float(batch_idx), reduce_fx=reduce_fx)

    assert make_trainer(tmp_path).validate(Model(), loader(16), verbose=False) == [{"v": expected}]


def test_unsupported_reduce_fx_raises(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("v", 1.0, reduce_fx="median")

    with pytest.raises(MisconfigurationException, match="reduce_fx='median'"):
        make_trainer(tmp_path).validate(Model(), verbose=False)


def test_on_step_and_on_epoch_fork_the_name(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("a", float(batch_idx), on_step=True, on_epoch=True, prog_bar=True)
            return super().training_step(batch, batch_idx)

    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0, logger=logger, log_every_n_steps=1)
    trainer.fit(Model())
    metrics = trainer.callback_metrics
    assert metrics["a_step"].item() == 3.0
    assert metrics["a_epoch"].item() == 1.5
    assert metrics["a"].item() == 1.5  # the latest of the two: the epoch value
    assert set(trainer.logged_metrics) == {"a_step", "a_epoch"}
    assert set(trainer.progress_bar_metrics) == {"a_step", "a_epoch"}
    assert logger.values_of("a_step") == [0.0, 1.0, 2.0, 3.0]
    assert logger.values_of("a_epoch") == [1.5]
    assert "a" not in {key for _, m in logger.metrics for key in m}


def test_epoch_hooks_log_epoch_values(tmp_path: Path) -> None:
    class Model(BoringModel):
        def on_train_epoch_end(self) -> None:
            self.log("e", float(self.current_epoch))

        def on_validation_epoch_end(self) -> None:
            self.log("ve", 10.0 + self.current_epoch)

    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_epochs=2, logger=logger, num_sanity_val_steps=0)
    trainer.fit(Model())
    assert trainer.callback_metrics["e"].item() == 1.0
    assert trainer.callback_metrics["ve"].item() == 11.0
    assert logger.values_of("e") == [0.0, 1.0]
    assert logger.values_of("ve") == [10.0, 11.0]


def test_on_step_true_in_an_epoch_hook_raises(tmp_path: Path) -> None:
    class Model(BoringModel):
        def on_train_epoch_end(self) -> None:
            self.log("e", 1.0, on_step=True)

    with pytest.raises(MisconfigurationException, match=r"on_step=True.*on_train_epoch_end"):
        make_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(Model())


def test_same_name_from_two_hooks(tmp_path: Path) -> None:
    # Lightning keys results by hook: the same name may be logged per step and at the epoch end.
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("a", 1.0)
            return super().training_step(batch, batch_idx)

        def on_train_epoch_end(self) -> None:
            self.log("a", 5.0)

    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(Model())
    assert trainer.callback_metrics["a"].item() == 5.0


def test_same_name_with_other_flags_in_one_hook_raises(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("a", 1.0, on_epoch=batch_idx == 1)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match=r"'a'.*training_step"):
        make_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(Model())


def test_on_step_and_on_epoch_both_false_raises(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("a", 1.0, on_step=False, on_epoch=False)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match="would record nothing"):
        make_trainer(tmp_path, max_steps=1).fit(Model())


def test_logger_false_and_prog_bar(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("hidden", 1.0, logger=False)
            self.log("shown", 2.0, prog_bar=True, logger=False)
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(tmp_path, max_steps=1, logger=MemoryLogger(), log_every_n_steps=1)
    trainer.fit(Model())
    assert {"hidden", "shown"} <= set(trainer.callback_metrics)
    assert "hidden" not in trainer.logged_metrics and "shown" not in trainer.logged_metrics
    assert trainer.progress_bar_metrics == {"shown": 2.0}


def test_log_dict(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log_dict({"a": 1.0, "b": torch.tensor(2)}, reduce_fx="max")

    assert make_trainer(tmp_path).validate(Model(), verbose=False) == [{"a": 1.0, "b": 2.0}]


def test_rank_zero_only_logs_on_rank_zero(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("r", 4.0, rank_zero_only=True)

    assert make_trainer(tmp_path).validate(Model(), verbose=False) == [{"r": 4.0}]


def test_values_are_stored_as_detached_float_tensors(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            loss = self.loss(self(batch))
            self.log("loss", loss)
            self.log("int", 3)
            self.log("np", __import__("numpy").float32(0.5))
            return loss

    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.fit(Model())
    assert not trainer.callback_metrics["loss"].requires_grad
    assert trainer.callback_metrics["int"].dtype == torch.float32
    assert trainer.callback_metrics["np"].item() == 0.5


@pytest.mark.parametrize(
    ("value", "match"),
    [(torch.ones(2), r"shape \(2,\)"), ("high", "got str"), ([1.0], "got list"), (1j, "got complex")],
)
def test_invalid_values_raise(tmp_path: Path, value: Any, match: str) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("bad", value)
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, max_steps=1).fit(Model())


@pytest.mark.parametrize(
    "hook", ["configure_optimizers", "on_fit_start", "setup", "on_train_end", "predict_step"]
)
def test_log_in_a_forbidden_hook_raises(tmp_path: Path, hook: str) -> None:
    class Model(BoringModel):
        pass

    original = getattr(BoringModel, hook)

    def logging_hook(self: L.LightningModule, *args: Any, **kwargs: Any) -> Any:
        self.log("x", 1.0)
        return original(self, *args, **kwargs)

    setattr(Model, hook, logging_hook)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    with pytest.raises(MisconfigurationException, match=f"inside `{hook}`"):
        if hook == "predict_step":
            trainer.predict(Model())
        else:
            trainer.fit(Model())


def test_log_without_trainer_warns() -> None:
    model = BoringModel()
    with pytest.warns(UserWarning, match="not attached to a Trainer"):
        model.log("x", 1.0)


def test_logger_true_without_logger_warns(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("x", 1.0, logger=True)
            return super().training_step(batch, batch_idx)

    with pytest.warns(UserWarning, match="no logger"):
        make_trainer(tmp_path, max_steps=1).fit(Model())


def test_dataloader_idx_in_the_name_raises(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("x/dataloader_idx_0", 1.0)

    with pytest.raises(MisconfigurationException, match="dataloader_idx"):
        make_trainer(tmp_path).validate(Model(), verbose=False)


def test_callbacks_can_log(tmp_path: Path) -> None:
    class Logging(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
            pl_module.log("from_callback", 7.0)

        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            pl_module.log("cb_val", 8.0)

    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[Logging()])
    trainer.fit(BoringModel())
    assert trainer.callback_metrics["from_callback"].item() == 7.0
    assert trainer.callback_metrics["cb_val"].item() == 8.0


def test_log_every_n_steps_cadence(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("s", float(self.global_step))
            self.log("e", 1.0, on_step=False, on_epoch=True)
            return super().training_step(batch, batch_idx)

    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_epochs=2, log_every_n_steps=3, logger=logger, limit_val_batches=0)
    trainer.fit(Model())
    # Step values reach the logger when (batches_that_stepped + 1) % 3 == 0, at that step: 2 and 5.
    assert logger.steps_with("s") == [2, 5]
    assert logger.values_of("s") == [2.0, 5.0]
    # Epoch values at each epoch end, at the step of the epoch's last optimizer step.
    assert logger.steps_with("e") == [3, 7]
    # Every call also carries the epoch.
    assert [m["epoch"] for _, m in logger.metrics] == [0.0, 0.0, 1.0, 1.0]
    assert logger.finalized == ["success"]


def test_log_every_n_steps_counts_optimizer_steps(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("s", float(batch_idx))
            return super().training_step(batch, batch_idx)

    logger = MemoryLogger()
    trainer = make_trainer(
        tmp_path,
        max_epochs=1,
        log_every_n_steps=1,
        accumulate_grad_batches=2,
        logger=logger,
        limit_val_batches=0,
    )
    trainer.fit(Model())
    assert logger.steps_with("s") == [0, 1]  # one log per optimizer step, with the step's last value
    assert logger.values_of("s") == [1.0, 3.0]


def test_log_every_n_steps_zero_sends_no_step_values(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("s", 1.0, on_epoch=True)
            return super().training_step(batch, batch_idx)

    logger = MemoryLogger()
    make_trainer(tmp_path, max_epochs=1, log_every_n_steps=0, logger=logger, limit_val_batches=0).fit(Model())
    assert logger.steps_with("s_step") == []
    assert logger.steps_with("s_epoch") == [3]


def test_should_stop_flushes_step_values(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.log("s", float(batch_idx))
            if batch_idx == 1:
                self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    logger = MemoryLogger()
    make_trainer(tmp_path, max_epochs=3, log_every_n_steps=50, logger=logger, limit_val_batches=0).fit(
        Model()
    )
    assert logger.steps_with("s") == [1]


def test_validation_metrics_reach_the_logger_at_the_training_step(tmp_path: Path) -> None:
    logger = MemoryLogger()
    trainer = make_trainer(
        tmp_path, max_epochs=2, logger=logger, val_check_interval=2, num_sanity_val_steps=0
    )
    trainer.fit(BoringModel())
    assert logger.steps_with("val_loss") == [1, 3, 5, 7]
    assert trainer.logged_metrics["val_loss"] == trainer.callback_metrics["val_loss"]


def test_evaluation_step_values(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("v", float(batch_idx), on_step=True, on_epoch=True)
            self.log("only_step", 1.0, on_step=True, on_epoch=False)

    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, logger=logger)
    result = trainer.validate(Model(), loader(8), verbose=False)
    assert result == [{"v_epoch": 0.5}]
    # Evaluation step values are logged after each batch on their own axis, but are not monitorable.
    assert logger.steps_with("v_step") == [0, 1]
    assert "only_step" not in trainer.callback_metrics and "v_step" not in trainer.callback_metrics
    assert trainer.callback_metrics["v"].item() == 0.5
    assert {"v_step", "v_epoch", "only_step"} <= set(trainer.logged_metrics)


def test_sanity_check_metrics_are_discarded(tmp_path: Path) -> None:
    seen_in_sanity: list[dict[str, Any]] = []

    class Peek(L.Callback):
        def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            seen_in_sanity.append(dict(trainer.callback_metrics))

    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=0, logger=logger, callbacks=[Peek()])
    trainer.fit(BoringModel())  # the sanity check runs, then there is nothing to train
    assert seen_in_sanity == [{}]
    assert trainer.callback_metrics == {} and trainer.logged_metrics == {}
    assert logger.metrics == []


def test_multiple_val_dataloaders(tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []

    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
            calls.append((batch_idx, dataloader_idx))
            self.log("v", float(dataloader_idx), on_step=True, on_epoch=True)
            if dataloader_idx == 1:
                self.log("plain", 2.0, add_dataloader_idx=False)

        def on_validation_epoch_end(self) -> None:
            self.log("all", 3.0)

    trainer = make_trainer(tmp_path)
    result = trainer.validate(Model(), [loader(8), loader(4)], verbose=False)
    assert calls == [(0, 0), (1, 0), (0, 1)]
    assert result == [
        {"v_epoch/dataloader_idx_0": 0.0, "all": 3.0},
        {"v_epoch/dataloader_idx_1": 1.0, "plain": 2.0, "all": 3.0},
    ]
    assert trainer.callback_metrics["v/dataloader_idx_1"].item() == 1.0
    assert "v_step/dataloader_idx_0" in trainer.logged_metrics


def test_single_val_dataloader_gets_no_dataloader_idx(tmp_path: Path) -> None:
    calls: list[int] = []

    class Model(BoringModel):
        def validation_step(self, *args: Any) -> None:
            calls.append(len(args))

    make_trainer(tmp_path).validate(Model(), [loader(4)], verbose=False)
    assert calls == [2]  # batch, batch_idx — no dataloader_idx


def test_add_dataloader_idx_false_from_several_dataloaders_raises(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("shared", 2.0, add_dataloader_idx=False)

    with pytest.raises(MisconfigurationException, match=r"add_dataloader_idx=False.*dataloader 1"):
        make_trainer(tmp_path).validate(Model(), [loader(4), loader(4)], verbose=False)


def test_batches_without_tensors_count_as_size_one(tmp_path: Path) -> None:
    class Model(BoringModel):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("v", float(len(batch)))

    result = make_trainer(tmp_path).validate(
        Model(), DataLoader(["a", "bbb"], batch_size=None), verbose=False
    )
    assert result == [{"v": 2.0}]


def test_on_train_start_values_belong_to_the_first_epoch(tmp_path: Path) -> None:
    class Model(BoringModel):
        def on_train_start(self) -> None:
            self.log("start", 5.0)

    logger = MemoryLogger()
    trainer = make_trainer(tmp_path, max_epochs=2, logger=logger, limit_val_batches=0)
    trainer.fit(Model())
    assert trainer.callback_metrics["start"].item() == 5.0
    assert logger.steps_with("start") == [3]  # sent with epoch 0's values, not lost to the epoch reset


def test_lr_scheduler_step_may_not_log(tmp_path: Path) -> None:
    class Model(BoringModel):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

        def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
            self.log("lr", 0.1)

    with pytest.raises(MisconfigurationException, match="inside `lr_scheduler_step`"):
        make_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(Model())
