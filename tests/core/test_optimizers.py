"""``configure_optimizers``: every return form, scheduler configuration, and the learning rates they produce."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, StepLR

from models import BoringModel, loader, make_trainer
from stepstone.core.optimizers import LightningOptimizer, SchedulerConfig, parse_optimizers
from stepstone.errors import MisconfigurationException


@pytest.fixture
def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


def _opt(params: list[torch.nn.Parameter], lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr)


class TestParse:
    def test_none(self) -> None:
        assert parse_optimizers(None) == ([], [])

    def test_single_list_and_tuple(self, params: list[torch.nn.Parameter]) -> None:
        a, b = _opt(params), _opt(params)
        assert parse_optimizers(a) == ([a], [])
        assert parse_optimizers([a, b]) == ([a, b], [])
        assert parse_optimizers((a,)) == ([a], [])

    def test_two_lists(self, params: list[torch.nn.Parameter]) -> None:
        a = _opt(params)
        sched = StepLR(a, 1)
        optimizers, configs = parse_optimizers(([a], [sched]))
        assert optimizers == [a]
        assert configs == [SchedulerConfig(scheduler=sched)]
        _, configs = parse_optimizers(([a], sched))  # a bare scheduler in the second place
        assert configs[0].scheduler is sched

    def test_dict_with_scheduler_object(self, params: list[torch.nn.Parameter]) -> None:
        a = _opt(params)
        sched = StepLR(a, 1)
        optimizers, configs = parse_optimizers({"optimizer": a, "lr_scheduler": sched})
        assert optimizers == [a]
        assert (configs[0].scheduler, configs[0].interval, configs[0].frequency) == (sched, "epoch", 1)

    def test_dict_with_scheduler_config(self, params: list[torch.nn.Parameter]) -> None:
        a = _opt(params)
        sched = StepLR(a, 1)
        _, [config] = parse_optimizers(
            {
                "optimizer": a,
                "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 3, "name": "lr"},
            }
        )
        assert (config.interval, config.frequency, config.name, config.reduce_on_plateau) == (
            "step",
            3,
            "lr",
            False,
        )

    def test_list_of_dicts(self, params: list[torch.nn.Parameter]) -> None:
        a, b = _opt(params), _opt(params)
        sched = StepLR(b, 1)
        optimizers, configs = parse_optimizers([{"optimizer": a}, {"optimizer": b, "lr_scheduler": sched}])
        assert optimizers == [a, b] and [c.scheduler for c in configs] == [sched]

    def test_plateau_needs_a_monitor(self, params: list[torch.nn.Parameter]) -> None:
        a = _opt(params)
        with pytest.raises(MisconfigurationException, match=r"ReduceLROnPlateau.*monitor"):
            parse_optimizers({"optimizer": a, "lr_scheduler": ReduceLROnPlateau(a)})
        _, [config] = parse_optimizers(
            {"optimizer": a, "lr_scheduler": ReduceLROnPlateau(a), "monitor": "val"}
        )
        assert config.reduce_on_plateau and config.monitor == "val"
        _, [config] = parse_optimizers(
            {
                "optimizer": a,
                "lr_scheduler": {"scheduler": ReduceLROnPlateau(a), "monitor": "x", "strict": False},
            }
        )
        assert config.monitor == "x" and not config.strict

    def test_explicit_reduce_on_plateau_flag_is_kept(self, params: list[torch.nn.Parameter]) -> None:
        a = _opt(params)
        _, [config] = parse_optimizers(
            {
                "optimizer": a,
                "lr_scheduler": {"scheduler": StepLR(a, 1), "reduce_on_plateau": True, "monitor": "m"},
            }
        )
        assert config.reduce_on_plateau

    @pytest.mark.parametrize(
        ("returned", "match"),
        [
            ("adam", "configure_optimizers returned str"),
            ({"lr_scheduler": None}, "without an 'optimizer' key"),
            ([1, 2], "configure_optimizers returned list"),
        ],
    )
    def test_invalid_forms(self, returned: Any, match: str) -> None:
        with pytest.raises(MisconfigurationException, match=match):
            parse_optimizers(returned)

    def test_invalid_scheduler_configs(self, params: list[torch.nn.Parameter]) -> None:
        a = _opt(params)
        sched = StepLR(a, 1)
        cases = [
            ({"scheduler": sched, "interval": "batch"}, "interval='batch'"),
            ({"scheduler": sched, "frequency": 0}, "frequency=0"),
            ({"interval": "step"}, "'scheduler' key"),
            ({"scheduler": sched, "warmup": 3}, "unknown keys \\['warmup'\\]"),
            ({"scheduler": 5}, "scheduler of type int"),
        ]
        for config, match in cases:
            with pytest.raises(MisconfigurationException, match=match):
                parse_optimizers({"optimizer": a, "lr_scheduler": config})

    def test_non_optimizer_in_lists(self, params: list[torch.nn.Parameter]) -> None:
        with pytest.raises(MisconfigurationException, match=r"str where a torch.optim.Optimizer"):
            parse_optimizers((["sgd"], []))

    def test_scheduler_of_another_optimizer(self, params: list[torch.nn.Parameter]) -> None:
        a, stranger = _opt(params), _opt(params)
        with pytest.raises(MisconfigurationException, match="not among the returned optimizers"):
            parse_optimizers({"optimizer": a, "lr_scheduler": StepLR(stranger, 1)})

    def test_unknown_optimizer_dict_keys_warn(self, params: list[torch.nn.Parameter]) -> None:
        with pytest.warns(RuntimeWarning, match=r"unsupported keys \['lr'\]"):
            parse_optimizers({"optimizer": _opt(params), "lr": 1.0})


def test_lightning_optimizer_forwards_and_steps(params: list[torch.nn.Parameter]) -> None:
    opt = _opt(params)
    wrapped = LightningOptimizer(opt)
    assert wrapped.optimizer is opt and wrapped.param_groups is opt.param_groups
    params[0].grad = torch.ones(2)
    wrapped.step()
    assert torch.equal(params[0].detach(), -torch.ones(2))
    wrapped.zero_grad()
    assert params[0].grad is None
    params[0].grad = torch.ones(2)
    assert wrapped.step(closure=lambda: torch.tensor(3.0)).item() == 3.0


def test_lightning_optimizer_survives_deepcopy_and_pickle(params: list[torch.nn.Parameter]) -> None:
    # While copy/pickle rebuild the wrapper, ``_optimizer`` is not set: attribute lookups must not recurse.
    wrapped = LightningOptimizer(_opt(params, lr=0.5))
    for copied in (copy.deepcopy(wrapped), pickle.loads(pickle.dumps(wrapped))):
        assert isinstance(copied.optimizer, torch.optim.SGD) and copied.optimizer is not wrapped.optimizer
        assert copied.param_groups[0]["lr"] == 0.5
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        wrapped.missing  # noqa: B018
    empty = LightningOptimizer.__new__(LightningOptimizer)
    with pytest.raises(AttributeError, match="no attribute 'param_groups'"):
        empty.param_groups  # noqa: B018


class Scheduled(BoringModel):
    def __init__(self, scheduler: dict[str, Any] | None = None, **extra: Any) -> None:
        super().__init__(lr=1.0)
        self.scheduler_config = scheduler or {}
        self.extra = extra
        self.val_lrs: list[float] = []

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        config = {"scheduler": StepLR(opt, step_size=1, gamma=0.5), **self.scheduler_config}
        return {"optimizer": opt, "lr_scheduler": config, **self.extra}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        if not self.trainer.sanity_checking:
            self.val_lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])


def _lr(trainer: Any) -> float:
    return float(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("config", "epochs", "expected"),
    [
        ({}, 3, 0.5**3),  # interval "epoch": once per epoch
        ({"interval": "epoch", "frequency": 2}, 3, 0.5**1),  # after epochs 2 (index 2 % 2 == 0)
        ({"interval": "step"}, 2, 0.5**8),  # 4 optimizer steps per epoch
        ({"interval": "step", "frequency": 3}, 2, 0.5**2),  # after steps 3 and 6
    ],
)
def test_scheduler_intervals_and_frequency(
    tmp_path: Path, config: dict[str, Any], epochs: int, expected: float
) -> None:
    trainer = make_trainer(tmp_path, max_epochs=epochs, limit_val_batches=0)
    trainer.fit(Scheduled(config))
    assert _lr(trainer) == pytest.approx(expected)
    assert trainer.fit_loop.scheduler_progress.total.completed == round(
        -torch.log2(torch.tensor(expected)).item()
    )


def test_step_scheduler_counts_optimizer_steps_not_batches(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(Scheduled({"interval": "step"}))
    assert trainer.global_step == 2 and _lr(trainer) == pytest.approx(0.25)


def test_epoch_scheduler_steps_before_the_epochs_validation(tmp_path: Path) -> None:
    # Lightning steps epoch-interval schedulers with the epoch's last batch, so validation sees the new rate.
    model = Scheduled()
    make_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0, limit_val_batches=1).fit(model)
    assert model.val_lrs == [0.5, 0.25]


def test_epoch_scheduler_does_not_step_for_a_cut_short_epoch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=6, limit_val_batches=0)
    trainer.fit(Scheduled())
    assert _lr(trainer) == pytest.approx(0.5)  # epoch 0 complete; epoch 1 stopped after 2 of 4 batches


def test_lambda_scheduler_with_custom_step_hook(tmp_path: Path) -> None:
    calls: list[Any] = []

    class Model(BoringModel):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return [opt], [LambdaLR(opt, lambda epoch: 0.1)]

        def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
            calls.append(metric)
            scheduler.step()

    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(Model())
    assert calls == [None, None] and _lr(trainer) == pytest.approx(0.1)


class Plateau(BoringModel):
    def __init__(self, monitor: str = "val_metric", strict: bool = True, interval: str = "epoch") -> None:
        super().__init__(lr=1.0)
        self.monitor, self.strict, self.interval = monitor, strict, interval

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_metric", 1.0)  # never improves

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        scheduler = ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0)
        config = {
            "scheduler": scheduler,
            "monitor": self.monitor,
            "strict": self.strict,
            "interval": self.interval,
        }
        return {"optimizer": opt, "lr_scheduler": config}


def test_reduce_on_plateau_steps_on_the_validation_metric(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_epochs=3)
    trainer.fit(Plateau())
    # Epoch 0 sets the best value; epochs 1 and 2 do not improve on it: two reductions.
    assert _lr(trainer) == pytest.approx(0.25)


def test_reduce_on_plateau_missing_metric(tmp_path: Path) -> None:
    with pytest.raises(
        MisconfigurationException, match=r"'val_lss'.*Available metrics are: \['val_metric'\]"
    ):
        make_trainer(tmp_path, max_epochs=1).fit(Plateau(monitor="val_lss"))
    trainer = make_trainer(tmp_path, max_epochs=2)
    with pytest.warns(RuntimeWarning, match="'val_lss' is not available"):
        trainer.fit(Plateau(monitor="val_lss", strict=False))
    assert _lr(trainer) == 1.0


def test_reduce_on_plateau_without_monitor_fails_the_fit(tmp_path: Path) -> None:
    class Model(BoringModel):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return {"optimizer": opt, "lr_scheduler": ReduceLROnPlateau(opt)}

    with pytest.raises(MisconfigurationException, match="ReduceLROnPlateau scheduler needs a metric"):
        make_trainer(tmp_path, max_epochs=1).fit(Model())


def test_several_optimizers_need_manual_optimization(tmp_path: Path) -> None:
    class Model(BoringModel):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(MisconfigurationException, match="automatic_optimization = False"):
        make_trainer(tmp_path, max_epochs=1).fit(Model())


def test_no_optimizer_warns_and_still_runs(tmp_path: Path) -> None:
    class Model(BoringModel):
        def configure_optimizers(self) -> Any:
            return None

    model = Model()
    before = model.layer.weight.detach().clone()
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    with pytest.warns(UserWarning, match="configure_optimizers returned None"):
        trainer.fit(model)
    assert trainer.global_step == 4  # as Lightning's mock optimizer: steps are counted
    assert torch.equal(model.layer.weight, before)
    assert model.layer.weight.grad is not None  # backward still ran


def test_schedulers_are_not_stepped_in_manual_optimization(tmp_path: Path) -> None:
    class Model(Scheduled):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.loss(self(batch)))
            opt.step()

    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(Model())
    assert _lr(trainer) == 1.0 and trainer.global_step == 8


def test_training_loader_length_is_known_in_configure_optimizers(tmp_path: Path) -> None:
    class Model(BoringModel):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            total = self.trainer.estimated_stepping_batches
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": StepLR(opt, int(total)), "interval": "step"},
            }

    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(Model(), loader(8))
    assert _lr(trainer) == pytest.approx(0.1)  # stepped once, after the 4th and last step
