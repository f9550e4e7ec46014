"""SimpleProfiler and Trainer(profiler=...): the same program under Lightning 2.6.6 and stepstone."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from both_frameworks import FRAMEWORKS, data, framework, quiet
from stepstone.errors import MisconfigurationException
from stepstone.profilers import PassThroughProfiler, Profiler, SimpleProfiler


def _profiled_fit(name: str, root: Path, profiler: Any) -> Any:
    pl, _ = framework(name)

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def on_train_epoch_end(self) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Recorder(pl.Callback):  # type: ignore[misc, name-defined]
        def on_train_batch_end(self, *args: Any) -> None:
            pass

    trainer = pl.Trainer(
        max_epochs=2, profiler=profiler, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Recorder()], default_root_dir=root,
    )  # fmt: skip
    with quiet():
        trainer.fit(Model(), data(3))
    return trainer


def _simple(name: str, **kwargs: Any) -> Any:
    module = importlib.import_module(
        "lightning.pytorch.profilers" if name == "lightning" else "stepstone.profilers"
    )
    return module.SimpleProfiler(**kwargs)


def test_simple_profiler_times_the_hooks_and_steps_lightning_times(tmp_path: Path) -> None:
    counts = {}
    for name in FRAMEWORKS:
        profiler = _simple(name)
        _profiled_fit(name, tmp_path / name, profiler)
        # A callback's actions are named after its state_key (its qualified class name, in both).
        counts[name] = {
            action.replace("_profiled_fit.<locals>.", ""): len(durations)
            for action, durations in profiler.recorded_durations.items()
        }
    expected = {
        "run_training_epoch": 2,
        "run_training_batch": 6,
        "[_TrainingEpochLoop].train_dataloader_next": 6,
        "[Callback]Recorder.on_train_batch_end": 6,
        "[LightningModule]Model.on_train_epoch_end": 2,
        "[LightningModule]Model.optimizer_step": 6,
        "[LightningModule]Model.configure_optimizers": 1,
    }
    for name in FRAMEWORKS:
        assert {action: counts[name].get(action) for action in expected} == expected, name
    # Every action both record is called as often; stepstone leaves out hooks nobody overrides (see README).
    shared = set(counts["stepstone"]) & set(counts["lightning"])
    assert {a: counts["stepstone"][a] for a in shared} == {a: counts["lightning"][a] for a in shared}
    assert set(counts["stepstone"]) - set(counts["lightning"]) <= {
        "[LightningModule]Model.training_step",  # Lightning names it after its strategy
        "[LightningModule]Model.backward",
        "[LightningModule]Model.configure_model",
    }


def test_the_report_is_lightnings_table_printed_when_fit_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = _profiled_fit("stepstone", tmp_path, "simple")
    assert isinstance(trainer.profiler, SimpleProfiler)
    report = capsys.readouterr().out
    lines = [line.expandtabs() for line in report.splitlines()]
    assert lines[0] == "FIT Profiler Report"
    header = next(line for line in lines if line.startswith("|  Action"))
    assert [cell.strip() for cell in header.split("|")[1:-1]] == [
        "Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %",
    ]  # fmt: skip
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines if line.startswith("|  ")}
    assert rows["Total"][0].strip() == "-" and rows["Total"][3].strip() == "100 %"
    assert rows["run_training_batch"][1].strip() == "6"
    # The Total row counts every call; rows are sorted by their share of the run.
    assert int(rows["Total"][1]) == sum(
        int(cells[1]) for action, cells in rows.items() if action not in ("Total", "Action")
    )
    shares = [float(cells[3]) for action, cells in rows.items() if action not in ("Total", "Action")]
    assert shares == sorted(shares, reverse=True)


def test_filename_writes_the_report_where_lightning_writes_it(tmp_path: Path) -> None:
    written = {}
    for name in FRAMEWORKS:
        root = tmp_path / name
        _profiled_fit(name, root, _simple(name, dirpath=root / "prof", filename="perf"))
        written[name] = sorted(p.name for p in (root / "prof").iterdir())
        assert (root / "prof" / "fit-perf.txt").read_text().startswith("FIT Profiler Report")
    assert written["stepstone"] == written["lightning"] == ["fit-perf.txt"]


def test_a_failed_fit_prints_no_report_as_lightning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Failing(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("boom")

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(profiler="simple", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with quiet(), pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing(), data(2))
    assert "Profiler Report" not in capsys.readouterr().out
    assert trainer._hooks.profiler is None


def test_without_a_profiler_hooks_are_called_unwrapped(tmp_path: Path) -> None:
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    assert isinstance(trainer.profiler, PassThroughProfiler)
    assert trainer._hooks.profiler is None


def test_a_custom_profiler_receives_start_and_stop_pairs(tmp_path: Path) -> None:
    class Counting(Profiler):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[tuple[str, str]] = []

        def start(self, action_name: str) -> None:
            self.events.append(("start", action_name))

        def stop(self, action_name: str) -> None:
            self.events.append(("stop", action_name))

    profiler = Counting()
    _profiled_fit("stepstone", tmp_path, profiler)
    starts = [a for kind, a in profiler.events if kind == "start"]
    stops = [a for kind, a in profiler.events if kind == "stop"]
    assert sorted(starts) == sorted(stops) and starts.count("run_training_epoch") == 2


def test_simple_profiler_rejects_unbalanced_actions_as_lightning() -> None:
    profiler = SimpleProfiler()
    profiler.start("a")
    with pytest.raises(ValueError, match="already started"):
        profiler.start("a")
    with pytest.raises(ValueError, match="never started"):
        profiler.stop("b")


@pytest.mark.parametrize("value", ["advanced-ish", 3, True])
def test_an_invalid_profiler_names_the_value_and_the_fix(value: Any) -> None:
    with pytest.raises(
        MisconfigurationException, match=rf"Trainer\(profiler={value!r}\) is invalid; pass None, 'simple'"
    ):
        L.Trainer(profiler=value)
