"""LightningModule: its attributes, step methods, batch hooks and the optimization helpers."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import stepstone as L
from models import FEATURES, BoringModel, loader, make_trainer
from stepstone.core.optimizers import LightningOptimizer
from stepstone.errors import MisconfigurationException
from twin_models import fit_twin


def test_attributes_without_trainer() -> None:
    model = BoringModel()
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        _ = model.trainer
    assert model.current_epoch == 0 and model.global_step == 0
    assert model.global_rank == 0 and model.local_rank == 0
    assert model.logger is None and model.loggers == []
    assert model.device == torch.device("cpu")
    assert model.automatic_optimization and model.strict_loading
    assert model.hparams == {} and model.hparams_initial == {}


def test_device_of_a_module_without_parameters() -> None:
    class Empty(L.LightningModule):
        pass

    assert Empty().device == torch.device("cpu")
    holder = Empty()
    holder.register_buffer("b", torch.zeros(1, device="meta"))
    assert holder.device == torch.device("meta")


def test_attributes_inside_training(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            assert self.trainer.lightning_module is self
            seen.append((self.current_epoch, self.global_step))
            return super().training_step(batch, batch_idx)

    make_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0).fit(Model())
    assert seen == [(0, 0), (0, 1), (1, 2), (1, 3)]


def test_print_is_rank_zero_only(capsys: pytest.CaptureFixture[str]) -> None:
    BoringModel().print("hello", 1)
    assert capsys.readouterr().out == "hello 1\n"


def test_missing_training_step_or_optimizers(tmp_path: Path) -> None:
    class NoStep(L.LightningModule):
        def configure_optimizers(self) -> Any:
            return None

    class NoOptim(L.LightningModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None

    with pytest.raises(MisconfigurationException, match="No `training_step"):
        make_trainer(tmp_path).fit(NoStep(), loader(4))
    with pytest.raises(MisconfigurationException, match="No `configure_optimizers"):
        make_trainer(tmp_path).fit(NoOptim(), loader(4))
    with pytest.raises(MisconfigurationException, match="training_step` must be implemented"):
        NoStep().training_step(None, 0)


def test_validate_and_test_need_their_step(tmp_path: Path) -> None:
    class OnlyTrain(L.LightningModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None

    with pytest.raises(MisconfigurationException, match="No `validation_step"):
        make_trainer(tmp_path).validate(OnlyTrain(), loader(4))
    with pytest.raises(MisconfigurationException, match="No `test_step"):
        make_trainer(tmp_path).test(OnlyTrain(), loader(4))


def test_predict_step_defaults_to_forward(tmp_path: Path) -> None:
    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(FEATURES, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

    predictions = make_trainer(tmp_path).predict(Model(), loader(8))
    assert predictions is not None and [p.shape for p in predictions] == [(4, 3), (4, 3)]


def test_batch_transfer_hooks_change_the_batch(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Model(BoringModel):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch * 0

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch + 1

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            seen.append(batch)
            return super().training_step(batch, batch_idx)

        def predict_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> Any:
            return batch

    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(Model())
    assert torch.equal(seen[0], torch.ones(4, FEATURES))
    predictions = trainer.predict(Model())
    assert predictions is not None and torch.equal(predictions[0], torch.ones(4, FEATURES))


def test_lazy_layers_work_after_the_sanity_check(tmp_path: Path) -> None:
    # The sanity check and fit-validation run under no_grad (not inference_mode, as in Lightning), so parameters
    # materialized there can be trained.
    class Lazy(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.LazyLinear(2)

    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(Lazy())
    assert trainer.global_step == 4


def test_optimizers_and_schedulers_accessors(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Model(BoringModel):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            seen["opt"] = self.optimizers()
            seen["raw"] = self.optimizers(use_pl_optimizer=False)
            seen["sched"] = self.lr_schedulers()
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(Model())
    assert isinstance(seen["opt"], LightningOptimizer) and seen["opt"].optimizer is trainer.optimizers[0]
    assert seen["raw"] is trainer.optimizers[0]
    assert seen["sched"] is trainer.lr_scheduler_configs[0].scheduler
    assert seen["opt"].param_groups is trainer.optimizers[0].param_groups  # attribute access is forwarded


def test_lr_schedulers_none_and_several(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            seen.append(self.lr_schedulers())
            return super().training_step(batch, batch_idx)

    make_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(Model())
    assert seen == [None]


def test_clip_gradients_conflicting_with_the_trainer(tmp_path: Path) -> None:
    class Model(BoringModel):
        def configure_gradient_clipping(
            self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
        ) -> None:
            self.clip_gradients(optimizer, gradient_clip_val=0.5)

    with pytest.raises(MisconfigurationException, match=r"gradient_clip_val=1.0.*gradient_clip_val=0.5"):
        make_trainer(tmp_path, max_steps=1, gradient_clip_val=1.0).fit(Model())


def test_clip_gradients_by_value_directly() -> None:
    model = BoringModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 5.0)
    model.clip_gradients(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="value")
    assert all(torch.all(p.grad == 0.5) for p in model.parameters())
    with pytest.raises(MisconfigurationException, match="gradient_clip_algorithm='max'"):
        model.clip_gradients(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="max")


def test_manual_backward_in_automatic_optimization_raises(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            self.manual_backward(self.loss(self(batch)))

    with pytest.raises(MisconfigurationException, match="automatic_optimization = False"):
        make_trainer(tmp_path, max_steps=1).fit(Model())


class TwoOptimizers(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.other = nn.Linear(FEATURES, 2)
        self.free = nn.Linear(FEATURES, 2)  # belongs to no optimizer
        self.automatic_optimization = False
        self.grad_flags: list[dict[str, bool]] = []

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.layer.parameters(), lr=0.1),
            torch.optim.SGD(self.other.parameters(), lr=0.1),
        ]

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt_a, _ = self.optimizers()
        with self.toggled_optimizer(opt_a):
            self.grad_flags.append({n: p.requires_grad for n, p in self.named_parameters()})
            loss = self.loss(self(batch) + self.other(batch) + self.free(batch))
            opt_a.zero_grad()
            self.manual_backward(loss)
            opt_a.step()
        self.grad_flags.append({n: p.requires_grad for n, p in self.named_parameters()})


def test_toggle_optimizer_freezes_only_the_other_optimizers(tmp_path: Path) -> None:
    model = TwoOptimizers()
    model.other.bias.requires_grad_(False)  # a frozen parameter stays frozen after untoggle
    make_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model)
    during, after = model.grad_flags
    assert during["layer.weight"] and during["layer.bias"]
    assert not during["other.weight"] and not during["other.bias"]
    assert during["free.weight"]  # Lightning leaves parameters of no optimizer alone
    assert after == {
        "layer.weight": True,
        "layer.bias": True,
        "other.weight": True,
        "other.bias": False,
        "free.weight": True,
        "free.bias": True,
    }
    assert model.other.weight.grad is None  # it was frozen during the backward


def test_toggle_and_untoggle_explicitly(tmp_path: Path) -> None:
    class Model(TwoOptimizers):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            _, opt_b = self.optimizers()
            self.toggle_optimizer(opt_b.optimizer)
            self.grad_flags.append({n: p.requires_grad for n, p in self.named_parameters()})
            self.untoggle_optimizer(opt_b)
            self.grad_flags.append({n: p.requires_grad for n, p in self.named_parameters()})

    model = Model()
    make_trainer(tmp_path, max_steps=1, limit_val_batches=0, limit_train_batches=1, max_epochs=1).fit(model)
    during, after = model.grad_flags
    assert not during["layer.weight"] and during["other.weight"]
    assert all(after.values())


def _loading_with(name: str, strict_loading: Any, tmp_path: Path) -> list[str]:
    """How a module with ``strict_loading`` set to this value loads a checkpoint missing one of its buffers."""
    from both_frameworks import data, framework, module_class, quiet

    pl, _ = framework(name)
    base = module_class(name)

    class Wider(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("extra", torch.zeros(2))
            self.strict_loading = strict_loading

    quiet_args = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
    path = tmp_path / name / "a.ckpt"
    outcomes = []
    with quiet():
        trainer = pl.Trainer(max_epochs=1, default_root_dir=tmp_path / name, **quiet_args)
        trainer.fit(base(), data(1))
        trainer.save_checkpoint(path)
        for load in (
            lambda: pl.Trainer(max_epochs=2, default_root_dir=tmp_path / name, **quiet_args).fit(
                Wider(), data(1), ckpt_path=path
            ),
            lambda: Wider.load_from_checkpoint(path),
            lambda: Wider.load_from_checkpoint(path, strict=False),
        ):
            try:
                load()
                outcomes.append("loaded")
            except (RuntimeError, ValueError) as exc:  # missing keys / strict conflicting with strict_loading
                outcomes.append("ValueError" if isinstance(exc, ValueError) else "RuntimeError")
    return outcomes


@pytest.mark.parametrize("strict_loading", [None, True, False])
def test_strict_loading_none_means_strict_as_in_lightning(tmp_path: Path, strict_loading: Any) -> None:
    lightning = _loading_with("lightning", strict_loading, tmp_path)
    assert _loading_with("stepstone", strict_loading, tmp_path) == lightning
    assert lightning[0] == ("loaded" if strict_loading is False else "RuntimeError")


@pytest.mark.parametrize("framework", ["lightning", "stepstone"])
def test_a_fitted_model_deep_copies_and_pickles_detached_from_its_trainer(
    framework: str, tmp_path: Path
) -> None:
    trainer, model = fit_twin(framework, tmp_path)
    assert model.trainer is trainer
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        # As in Lightning: the copy has the weights and hparams, and no Trainer (the original keeps its own).
        assert torch.equal(copied.layer.weight, model.layer.weight)
        assert copied.layer.weight is not model.layer.weight
        assert dict(copied.hparams) == {"width": FEATURES}
        with pytest.raises(RuntimeError, match="is not attached to a `Trainer`"):
            copied.trainer  # noqa: B018
    assert model.trainer is trainer
