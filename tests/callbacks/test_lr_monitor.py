"""LearningRateMonitor: the same fits under Lightning 2.6.6 and stepstone leave the same metrics.csv and lrs."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as SS
from both_frameworks import FRAMEWORKS, data, framework, quiet
from stepstone.callbacks import LearningRateMonitor
from stepstone.errors import MisconfigurationException


def _optimizers(module: torch.nn.Module, scenario: str) -> Any:
    a, b = module.a.parameters(), module.b.parameters()  # type: ignore[union-attr]
    if scenario == "groups":  # two parameter groups (one named), a step-interval scheduler
        opt = torch.optim.SGD(
            [{"params": a}, {"params": b, "name": "head", "lr": 0.5}], lr=0.1, momentum=0.9, weight_decay=0.01
        )
        return [opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.5), "interval": "step"}]
    if scenario == "plain":  # no scheduler
        return torch.optim.Adam(module.parameters(), lr=0.02)
    if scenario == "epoch":  # an epoch-interval scheduler
        opt = torch.optim.SGD(module.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)]
    # "several": two Adams and an SGD, one Adam with a named scheduler (manual optimization)
    adam_a, adam_b = torch.optim.Adam(a, lr=0.01), torch.optim.Adam(b, lr=0.02)
    sgd = torch.optim.SGD(module.b.parameters(), lr=0.3)  # type: ignore[union-attr]
    scheduler = torch.optim.lr_scheduler.StepLR(adam_b, 1, 0.5)
    return [adam_a, adam_b, sgd], [{"scheduler": scheduler, "name": "mine", "interval": "step"}]


def _fit(
    name: str, scenario: str, root: Path, accumulate: int = 1, **monitor: Any
) -> tuple[list[list[str]], dict[str, Any], Any]:
    """Fit 2 epochs of 5 batches with a CSVLogger; return metrics.csv, ``lrs`` and the lr callback_metrics."""
    pl, _ = framework(name)
    package = "lightning.pytorch" if name == "lightning" else "stepstone"
    callbacks = importlib.import_module(f"{package}.callbacks")
    loggers = importlib.import_module(f"{package}.loggers")

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
            self.automatic_optimization = scenario != "several"

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = (self.a(batch[0]) + self.b(batch[0])).sum()
            self.log("loss", loss)
            if self.automatic_optimization:
                return loss
            for opt in self.optimizers():
                opt.zero_grad()
                self.manual_backward(loss, retain_graph=True)
                opt.step()
            self.lr_schedulers().step()
            return None

        def configure_optimizers(self) -> Any:
            return _optimizers(self, scenario)

    lr_monitor = callbacks.LearningRateMonitor(**monitor)
    with quiet():
        torch.manual_seed(0)
        trainer = pl.Trainer(
            default_root_dir=root,
            max_epochs=2,
            limit_train_batches=5,
            log_every_n_steps=2,
            accumulate_grad_batches=accumulate,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            logger=loggers.CSVLogger(root),
            callbacks=[lr_monitor],
        )
        trainer.fit(Model(), data(5))
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("lr-", "mine"))}
    return rows, lr_monitor.lrs, logged


@pytest.mark.parametrize(
    ("scenario", "monitor"),
    [
        ("groups", {}),
        ("groups", {"logging_interval": "epoch", "log_momentum": True, "log_weight_decay": True}),
        ("plain", {}),
        ("plain", {"logging_interval": "step", "log_momentum": True}),
        ("epoch", {}),
        ("epoch", {"logging_interval": "step"}),
        ("several", {"log_momentum": True}),
        ("groups", {"accumulate": 2}),  # rows at each batch start of a logged step, as in Lightning
    ],
)
def test_logged_rows_names_and_values_match_lightning(
    tmp_path: Path, scenario: str, monitor: dict[str, Any]
) -> None:
    lightning, stepstone = (_fit(name, scenario, tmp_path / name, **monitor) for name in FRAMEWORKS)
    assert stepstone == lightning
    rows, lrs, _ = stepstone
    assert any(key.startswith(("lr-", "mine")) for key in rows[0])  # the comparison saw logged rates
    assert all(values for values in lrs.values())


def test_names_of_groups_and_several_optimizers(tmp_path: Path) -> None:
    rows, lrs, logged = _fit("stepstone", "groups", tmp_path, log_momentum=True)
    assert sorted(lrs) == ["lr-SGD/head", "lr-SGD/pg1"]
    assert {"lr-SGD/pg1-momentum", "lr-SGD/head-momentum"} <= set(rows[0])
    # Last logged before the 10th step (log_every_n_steps=2): 9 steps done, halved every 2 steps.
    assert logged["lr-SGD/head"] == pytest.approx(0.5 * 0.5**4)
    _, lrs, _ = _fit("stepstone", "several", tmp_path / "several")
    assert sorted(lrs) == ["lr-Adam", "lr-SGD", "mine"]


def test_invalid_logging_interval_names_the_value() -> None:
    with pytest.raises(MisconfigurationException, match="logging_interval='batch'"):
        LearningRateMonitor(logging_interval="batch")  # type: ignore[arg-type]


def _model_with(configure: Any) -> Any:
    class Model(SS.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> Any:
            return configure(self)

    return Model()


@pytest.mark.parametrize("framework_name", FRAMEWORKS)
def test_no_logger_is_an_error_as_in_lightning(framework_name: str, tmp_path: Path) -> None:
    pl, _ = framework(framework_name)
    package = "lightning.pytorch" if framework_name == "lightning" else "stepstone"
    monitor = importlib.import_module(f"{package}.callbacks").LearningRateMonitor()

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        default_root_dir=tmp_path, logger=False, callbacks=[monitor], max_steps=1, enable_progress_bar=False
    )
    with quiet(), pytest.raises(Exception, match="Cannot use `LearningRateMonitor` callback") as caught:
        trainer.fit(Model(), data(2))
    assert type(caught.value).__name__ == "MisconfigurationException"


def _fast_dev_run_lrs(name: str, root: Path) -> dict[str, list[float]]:
    pl, _ = framework(name)
    package = "lightning.pytorch" if name == "lightning" else "stepstone"
    monitor = importlib.import_module(f"{package}.callbacks").LearningRateMonitor()

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        default_root_dir=root,
        fast_dev_run=2,
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with quiet():
        trainer.fit(Model(), data(2))
    return dict(monitor.lrs)


def test_fast_dev_run_keeps_working_without_loggers(tmp_path: Path) -> None:
    # Lightning swaps the loggers for a do-nothing one under fast_dev_run; the monitor must not fail there.
    lightning, stepstone = (_fast_dev_run_lrs(name, tmp_path / name) for name in FRAMEWORKS)
    assert stepstone == lightning == {"lr-SGD": [0.1]}


def test_duplicate_parameter_group_names_are_an_error(tmp_path: Path) -> None:
    def configure(module: Any) -> Any:
        weight, bias = module.layer.weight, module.layer.bias
        return torch.optim.SGD([{"params": [weight], "name": "x"}, {"params": [bias], "name": "x"}], lr=0.1)

    trainer = SS.Trainer(
        default_root_dir=tmp_path, callbacks=[LearningRateMonitor()], max_steps=1, enable_progress_bar=False
    )
    with quiet(), pytest.raises(MisconfigurationException, match=r"duplicated parameter group names \{'x'\}"):
        trainer.fit(_model_with(configure), data(2))


def test_momentum_warning_for_optimizers_without_momentum(tmp_path: Path) -> None:
    model = _model_with(lambda m: torch.optim.Adagrad(m.parameters(), lr=0.1))  # neither momentum nor betas
    monitor = LearningRateMonitor(log_momentum=True)
    trainer = SS.Trainer(
        default_root_dir=tmp_path,
        callbacks=[monitor],
        max_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.warns(RuntimeWarning, match="log_momentum=True, but some optimizers do not have momentum"):
        trainer.fit(model, data(2))
    assert monitor.last_momentum_values == {"lr-Adagrad-momentum": 0}
