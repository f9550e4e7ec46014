"""One training batch: what ``training_step`` may return, closures, and manual optimization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import stepstone as L
from models import FEATURES, BoringModel, make_trainer
from stepstone.core.optimizers import LightningOptimizer
from stepstone.errors import MisconfigurationException


def _fit(tmp_path: Path, model: L.LightningModule, **kwargs: Any) -> L.Trainer:
    trainer = make_trainer(tmp_path, **{"max_epochs": 1, "limit_val_batches": 0, **kwargs})
    trainer.fit(model)
    return trainer


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        (1.5, "returned float.*must return a loss Tensor"),
        ({"acc": 1.0}, "without a 'loss'"),
        ({"loss": None}, "without a 'loss'"),
        ({"loss": 2.0}, "loss of type float"),
        (torch.tensor(1.0), "does not require grad"),
    ],
)
def test_invalid_training_step_outputs(tmp_path: Path, returned: Any, match: str) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            return returned

    with pytest.raises(MisconfigurationException, match=match):
        _fit(tmp_path, Model())


def test_loss_computed_under_no_grad_is_rejected(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            with torch.no_grad():
                return self.loss(self(batch))

    with pytest.raises(MisconfigurationException, match="does not require grad"):
        _fit(tmp_path, Model())


def test_training_step_returning_none_skips_the_batch(tmp_path: Path) -> None:
    outputs: list[Any] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            return None if batch_idx % 2 == 0 else super().training_step(batch, batch_idx)

        def on_train_batch_end(self, out: Any, batch: Any, batch_idx: int) -> None:
            outputs.append(out)

    model = Model()
    with pytest.warns(UserWarning, match="training_step returned None"):
        trainer = _fit(tmp_path, model)
    assert [set(o) for o in outputs] == [
        set(),
        {"loss"},
        set(),
        {"loss"},
    ]  # Lightning: {} for a skipped batch
    assert trainer.global_step == 4


def test_skipped_batches_leave_the_weights_alone(tmp_path: Path) -> None:
    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            return None

    model = Model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(UserWarning):
        _fit(tmp_path, model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_dict_outputs_keep_extra_entries(tmp_path: Path) -> None:
    outputs: list[Any] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            return {"loss": self.loss(self(batch)), "extra": batch_idx}

        def on_train_batch_end(self, out: Any, batch: Any, batch_idx: int) -> None:
            outputs.append(out)

    _fit(tmp_path, Model(), max_steps=2)
    assert [o["extra"] for o in outputs] == [0, 1]
    assert all(not o["loss"].requires_grad for o in outputs)


def test_closure_based_optimizer(tmp_path: Path) -> None:
    calls: list[int] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            calls.append(batch_idx)
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self) -> Any:
            return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3)

    trainer = _fit(tmp_path, Model(), max_steps=2)
    assert trainer.global_step == 2
    assert len(calls) > 2  # LBFGS evaluates the closure (training_step) several times per step


def test_optimizer_step_override(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Warmup(BoringModel):
        def optimizer_step(
            self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
        ) -> None:
            seen.append(type(optimizer))
            optimizer.step(closure=optimizer_closure)
            for group in optimizer.param_groups:
                group["lr"] = 0.0  # from now on, no change

    model = Warmup()
    trainer = _fit(tmp_path, model, max_steps=3)
    assert seen == [LightningOptimizer] * 3 and trainer.global_step == 3


def test_optimizer_step_override_that_skips_the_closure(tmp_path: Path) -> None:
    class Broken(BoringModel):
        def optimizer_step(
            self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
        ) -> None:
            pass

    with pytest.raises(MisconfigurationException, match="closure was not run"):
        _fit(tmp_path, Broken(), max_steps=1)


def test_optimizer_zero_grad_override(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []

    class Model(BoringModel):
        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            calls.append((epoch, batch_idx))
            optimizer.zero_grad(set_to_none=True)

    _fit(tmp_path, Model(), max_epochs=2, accumulate_grad_batches=2)
    assert calls == [(0, 0), (0, 2), (1, 0), (1, 2)]


class GAN(L.LightningModule):
    """Manual optimization with two optimizers, as in Lightning's manual-optimization docs."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.gen = nn.Linear(FEATURES, FEATURES)
        self.disc = nn.Linear(FEATURES, 1)
        self.hooks: list[str] = []
        self.steps_seen: list[int] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        opt_g, opt_d = self.optimizers()
        self.steps_seen.append(self.global_step)
        with self.toggled_optimizer(opt_d):
            d_loss = self.disc(batch).mean() - self.disc(self.gen(batch).detach()).mean()
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
        with self.toggled_optimizer(opt_g):
            g_loss = self.disc(self.gen(batch)).mean()
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
        self.log("g_loss", g_loss)
        return {"loss": g_loss, "d": d_loss}

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.hooks.append("on_before_backward")

    def on_after_backward(self) -> None:
        self.hooks.append("on_after_backward")

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.hooks.append("on_before_optimizer_step")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if "d" in outputs:  # Lightning detaches only the "loss" entry
            assert not outputs["loss"].requires_grad and outputs["d"].requires_grad

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.gen.parameters(), lr=0.01),
            torch.optim.SGD(self.disc.parameters(), lr=0.01),
        ]

    def train_dataloader(self) -> Any:
        return BoringModel().train_dataloader()


def test_manual_optimization(tmp_path: Path) -> None:
    model = GAN()
    gen_before = model.gen.weight.detach().clone()
    trainer = _fit(tmp_path, model, max_epochs=2)
    assert trainer.global_step == 16  # every optimizer.step() counts: 2 per batch, 4 batches, 2 epochs
    assert model.steps_seen == [0, 2, 4, 6, 8, 10, 12, 14]
    assert model.hooks[:3] == ["on_before_backward", "on_after_backward", "on_before_optimizer_step"]
    assert model.hooks.count("on_before_optimizer_step") == 16
    assert not torch.equal(gen_before, model.gen.weight)
    assert "g_loss" in trainer.callback_metrics
    state = trainer.fit_loop.state_dict()["epoch_loop.manual_optimization.optim_step_progress"]
    assert state["total"] == {"ready": 16, "completed": 16}


def test_manual_optimization_max_steps_counts_optimizer_steps(tmp_path: Path) -> None:
    trainer = _fit(tmp_path, GAN(), max_steps=6, max_epochs=-1)
    assert trainer.global_step == 6


def test_manual_optimization_outputs(tmp_path: Path) -> None:
    outputs: list[Any] = []

    class Model(GAN):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            super().training_step(batch, batch_idx)
            return None if batch_idx == 0 else self.disc(batch).mean()

        def on_train_batch_end(self, out: Any, batch: Any, batch_idx: int) -> None:
            outputs.append(out)

    _fit(tmp_path, Model(), limit_train_batches=2)
    assert outputs[0] == {}
    assert set(outputs[1]) == {"loss"} and not outputs[1]["loss"].requires_grad


def test_manual_optimization_rejects_other_outputs(tmp_path: Path) -> None:
    class Model(GAN):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            return 1.0

    with pytest.raises(
        MisconfigurationException, match="manual optimization return None, a Tensor or a dict"
    ):
        _fit(tmp_path, Model())


def test_manual_step_with_closure(tmp_path: Path) -> None:
    class Model(GAN):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            opt_g, _ = self.optimizers()

            def closure() -> torch.Tensor:
                loss = self.disc(self.gen(batch)).mean()
                opt_g.zero_grad()
                self.manual_backward(loss)
                return loss

            returned = opt_g.step(closure=closure)
            assert isinstance(returned, torch.Tensor)

    trainer = _fit(tmp_path, Model())
    assert trainer.global_step == 4


def test_optimizers_are_the_same_wrappers_each_call(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Model(GAN):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            seen.append(self.optimizers())

    _fit(tmp_path, Model(), limit_train_batches=2)
    assert seen[0][0] is seen[1][0] and seen[0][1] is seen[1][1]
