"""Timer and Trainer(max_time) against Lightning 2.6.6, on a fake clock that advances one second per batch."""

from __future__ import annotations

import types
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as PL
import lightning.pytorch.callbacks.timer as pl_timer_module
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as PLModelCheckpoint
from lightning.pytorch.callbacks import Timer as PLTimer
from lightning.pytorch.utilities.exceptions import MisconfigurationException as PLMisconfigurationException

import stepstone as L
import stepstone.callbacks.timer as timer_module
from both_frameworks import quiet
from callbacks.ddp_runs import ddp_results
from scripted import loader
from stepstone.callbacks import ModelCheckpoint, Timer
from stepstone.errors import MisconfigurationException

FRAMEWORKS = {"lightning": (PL, PLTimer, PLModelCheckpoint), "stepstone": (L, Timer, ModelCheckpoint)}


class FakeClock:
    """Stands in for the ``time`` module inside both Timer modules: ``monotonic()`` moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    shim = types.SimpleNamespace(monotonic=fake.monotonic)
    monkeypatch.setattr(timer_module, "time", shim)
    monkeypatch.setattr(pl_timer_module, "time", shim)
    return fake


def _module(fw: types.ModuleType, clock: FakeClock) -> Any:
    class Ticking(fw.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            clock.now += 1.0  # each training batch takes one second
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.tensor(1.0))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Ticking()


def fit(
    name: str,
    root: Path,
    clock: FakeClock,
    timer: dict[str, Any] | None,
    ckpt_path: str | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Fit under ``name`` with ``Timer(**timer)`` (none when None); returns what a user observes."""
    fw, timer_class, ckpt_class = FRAMEWORKS[name]
    callbacks: list[Any] = [ckpt_class(dirpath=root / "ckpts", save_last=True)]
    if timer is not None:
        callbacks.insert(0, timer_class(**timer))
    trainer_kwargs.setdefault("max_epochs", 10)
    trainer = fw.Trainer(
        default_root_dir=root,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    with quiet():
        trainer.fit(_module(fw, clock), loader(), loader(), ckpt_path=ckpt_path)
    found = [cb for cb in trainer.callbacks if isinstance(cb, timer_class)]
    assert len(found) == 1
    saved = torch.load(root / "ckpts" / "last.ckpt", weights_only=False)
    return {
        "current_epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "elapsed": found[0].time_elapsed(),
        "remaining": found[0].time_remaining(),
        "state": found[0].state_dict(),
        "saved": saved["callbacks"].get("Timer"),
        "files": sorted(p.name for p in (root / "ckpts").glob("*.ckpt")),
    }


def both(tmp_path: Path, clock: FakeClock, *args: Any, **kwargs: Any) -> dict[str, Any]:
    seen = {}
    for name in FRAMEWORKS:
        clock.now = 1000.0
        seen[name] = fit(name, tmp_path / name, clock, *args, **kwargs)
    assert seen["stepstone"] == seen["lightning"]
    return seen["stepstone"]


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_duration_stops_training_like_lightning(tmp_path: Path, clock: FakeClock, interval: str) -> None:
    got = both(tmp_path, clock, {"duration": {"seconds": 6}, "interval": interval})
    # 4 batches per epoch, one second each: step stops after batch 6 (mid-epoch 1), epoch after epoch 1.
    assert got["global_step"] == (6 if interval == "step" else 8)
    assert got["saved"]["time_elapsed"]["train"] == got["global_step"]


def test_max_time_is_a_timer(tmp_path: Path, clock: FakeClock) -> None:
    got = both(tmp_path, clock, None, max_time={"seconds": 5})
    assert got["global_step"] == 5 and got["remaining"] == 0


def test_a_given_timer_wins_over_max_time(tmp_path: Path, clock: FakeClock) -> None:
    got = both(tmp_path, clock, {"duration": "00:00:00:03"}, max_time={"seconds": 5})
    assert got["global_step"] == 3


def test_budget_survives_resume(tmp_path: Path, clock: FakeClock) -> None:
    seen = {}
    for name in FRAMEWORKS:
        clock.now = 1000.0
        root = tmp_path / name
        fit(name, root, clock, {"duration": {"seconds": 100}}, max_epochs=1)
        last = str(root / "ckpts" / "last.ckpt")
        # 4 seconds spent before the checkpoint: 3 more batches reach the budget of 7.
        seen[name] = fit(name, root, clock, {"duration": {"seconds": 7}}, ckpt_path=last)
    assert seen["stepstone"] == seen["lightning"]
    assert seen["stepstone"]["global_step"] == 7


def test_spent_budget_stops_a_resumed_run_at_once(tmp_path: Path, clock: FakeClock) -> None:
    seen = {}
    for name in FRAMEWORKS:
        root = tmp_path / name
        fit(name, root, clock, None, max_epochs=2, max_time={"seconds": 100})
        seen[name] = fit(
            name, root, clock, None, max_time={"seconds": 8}, ckpt_path=str(root / "ckpts/last.ckpt")
        )
    assert seen["stepstone"] == seen["lightning"]
    assert seen["stepstone"]["global_step"] == 8


def test_stage_times(tmp_path: Path, clock: FakeClock) -> None:
    timer = Timer()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        callbacks=[timer],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        max_epochs=1,
    )
    trainer.fit(_module(L, clock), loader(), loader())
    assert timer.time_elapsed("train") == 4 and timer.time_remaining() is None
    assert timer.start_time("validate") is not None and timer.end_time("validate") is not None
    assert timer.start_time("test") is None and timer.time_elapsed("test") == 0
    assert set(timer.state_dict()["time_elapsed"]) == set(PLTimer().state_dict()["time_elapsed"])


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        ("00:12:00:00", timedelta(hours=12)),
        ("1:02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (timedelta(weeks=1), timedelta(weeks=1)),
        ({"weeks": 4, "days": 2}, timedelta(weeks=4, days=2)),
    ],
)
def test_duration_forms(duration: Any, expected: timedelta) -> None:
    assert (
        Timer(duration=duration)._duration == PLTimer(duration=duration)._duration == expected.total_seconds()
    )


@pytest.mark.parametrize("duration", ["1:2:3:4", "12 hours", 3600])
def test_invalid_duration_names_the_value_and_the_form(duration: Any) -> None:
    with pytest.raises(PLMisconfigurationException):
        PLTimer(duration=duration) if not isinstance(duration, int) else PLTimer(duration="x")
    with pytest.raises(MisconfigurationException, match=r"Timer\(duration=.*DD:HH:MM:SS"):
        Timer(duration=duration)
    with pytest.raises(MisconfigurationException, match=r"Trainer\(max_time=.*DD:HH:MM:SS"):
        L.Trainer(max_time=duration, logger=False)


def test_invalid_interval() -> None:
    with pytest.raises(PLMisconfigurationException, match="Timer"):
        PLTimer(interval="batch")
    with pytest.raises(MisconfigurationException, match=r"Timer\(interval='batch'\).*step, epoch"):
        Timer(interval="batch")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("rank", "steps"), [(0, 1), (1, 20)])
def test_under_ddp_rank_zeros_clock_decides(rank: int, steps: int) -> None:
    # Only this rank's clock says the budget is spent: rank 0's stops both after one batch, rank 1's stops none.
    zero, one = ddp_results(f"timer_rank{rank}")
    assert zero["global_step"] == one["global_step"] == steps
