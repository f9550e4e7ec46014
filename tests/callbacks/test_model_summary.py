"""ModelSummary callback: fit prints the table Lightning 2.6.6's ModelSummary logs, and the Trainer adds one."""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import stepstone as SS
from both_frameworks import FRAMEWORKS, data, framework
from stepstone.callbacks import ModelSummary, TQDMProgressBar
from stepstone.errors import MisconfigurationException


def _model(name: str) -> Any:
    pl, _ = framework(name)

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
            self.out = nn.Linear(8, 1)
            self.example_input_array = torch.zeros(2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.body(x))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0]).sum()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Model()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _printed(name: str, root: Path, capsys: pytest.CaptureFixture[str], max_depth: int) -> str:
    """What fit prints for ModelSummary(max_depth): Lightning logs it (logging), stepstone writes it to stderr."""
    pl, _ = framework(name)
    package = "lightning.pytorch" if name == "lightning" else "stepstone"
    summary = importlib.import_module(f"{package}.callbacks").ModelSummary(max_depth=max_depth)
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[summary],
    )
    records = _Records()
    summary_log = logging.getLogger("lightning.pytorch.callbacks.model_summary")
    summary_log.addHandler(records)
    capsys.readouterr()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(_model(name), data(2))
    finally:
        summary_log.removeHandler(records)
    return "".join(records.messages) if name == "lightning" else capsys.readouterr().err.rstrip("\n")


@pytest.mark.parametrize("max_depth", [1, -1])
def test_fit_prints_lightnings_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], max_depth: int
) -> None:
    lightning, stepstone = (_printed(name, tmp_path / name, capsys, max_depth) for name in FRAMEWORKS)
    assert stepstone == lightning
    assert (
        "| Name" in stepstone
        and "| Mode  | FLOPs | In sizes" in stepstone
        and "Total estimated model params size (MB)" in stepstone
    )


def test_max_depth_zero_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _printed("stepstone", tmp_path, capsys, max_depth=0) == ""


def test_trainer_adds_one_model_summary_by_default(tmp_path: Path) -> None:
    default = SS.Trainer(default_root_dir=tmp_path)
    assert [type(cb) for cb in default.callbacks if isinstance(cb, ModelSummary)] == [ModelSummary]
    assert not any(isinstance(cb, ModelSummary) for cb in SS.Trainer(enable_model_summary=False).callbacks)
    own = ModelSummary(max_depth=-1)
    assert [cb for cb in SS.Trainer(callbacks=[own]).callbacks if isinstance(cb, ModelSummary)] == [own]
    # Lightning's order: progress bar, then the summary, then the checkpoint callback last.
    assert [type(cb).__name__ for cb in default.callbacks] == [
        "TQDMProgressBar",
        "ModelSummary",
        "ModelCheckpoint",
    ]
    assert isinstance(default.callbacks[0], TQDMProgressBar)


def test_default_summary_is_printed_once_per_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = SS.Trainer(
        default_root_dir=tmp_path,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(_model("stepstone"), data(2))
        trainer.validate(_model("stepstone"), data(1), verbose=False)
    assert capsys.readouterr().err.count("Trainable params") == 1  # fit only, as Lightning (on_fit_start)


def test_invalid_max_depth_names_the_value() -> None:
    with pytest.raises(MisconfigurationException, match="ModelSummary\\(max_depth=-5\\)"):
        ModelSummary(max_depth=-5)
