"""ModelCheckpoint(async_save=True): same files and bookkeeping as sync, nothing names an uncommitted file,
failures raised at the next save or when fit ends, snapshots isolated from training, buffers reused."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch

import stepstone as L
import stepstone.checkpoint.files as files
from blocking import blocked_on, wait_until
from models import MemoryLogger
from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint import SaveHandle, load_file, verify_file
from stepstone.errors import MisconfigurationException

Patch = Callable[..., None]


def ckpts(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.ckpt"))


class HeldWrites:
    """Every background save waits, before its first byte, until the training thread waits for it.

    Training provably goes on while each save is in flight, and whatever waits for a save (the next trigger,
    the end of fit, an error's cleanup) is what releases it: no sleep decides what is in flight.

    Args:
        monkeypatch: patches ``save_file`` of the engine.
        fail: the background saves (1-based) that raise OSError once released.
        then_s: a slow disk: once released, each save takes at least this long.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: set[int], then_s: float) -> None:
        self.saves = 0
        self.unreleased = 0  # saves that ran when the deadline passed, not because training waited
        real, training = files.save_file, threading.main_thread()

        def held(*args: Any, **kwargs: Any) -> Any:
            writer = threading.current_thread()
            if writer is training:  # a synchronous save
                return real(*args, **kwargs)
            self.saves += 1
            number = self.saves

            def waits_for_this_save(frame: FrameType) -> bool:
                waiter = frame.f_locals.get("self")  # a join of this writer thread, or a save handle's result
                return waiter is writer or isinstance(waiter, SaveHandle)

            if not wait_until(lambda: blocked_on(training, waits_for_this_save), timeout=30):
                self.unreleased += 1
            time.sleep(then_s)
            if number in fail:
                raise OSError(f"injected failure of background save {number}")
            return real(*args, **kwargs)

        monkeypatch.setattr(files, "save_file", held)


@pytest.fixture
def held_writes(monkeypatch: pytest.MonkeyPatch) -> Callable[..., HeldWrites]:
    """``held_writes(fail=set(), then_s=0.0)``: install :class:`HeldWrites`."""

    def install(fail: set[int] | None = None, then_s: float = 0.0) -> HeldWrites:
        return HeldWrites(monkeypatch, fail or set(), then_s)

    return install


class Invariants(L.Callback):
    """Before every batch: whatever the checkpoint callback names exists, is committed and verifies."""

    def __init__(self, checkpoint: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint
        self.checks = 0
        self.in_flight = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        cb = self.checkpoint
        named = [cb.best_model_path, cb.last_model_path, *cb.best_k_models]
        for path in filter(None, named):
            assert os.path.exists(path), f"{path} is named but not committed"  # follows a 'last' symlink
            verify_file(path)
        self.checks += 1
        self.in_flight += cb._pending is not None


def _fit(tmp_path: Path, cb: ModelCheckpoint, *callbacks: L.Callback, **kwargs: Any) -> ScriptedModel:
    model = ScriptedModel([0.5, 0.3, 0.4, 0.2, 0.6])
    trainer(tmp_path, [*callbacks, cb], **kwargs).fit(model, loader(), loader())
    return model


@pytest.mark.parametrize("save_last", [True, "link"])
def test_async_gives_the_same_files_and_state_as_sync_and_never_names_an_uncommitted_file(
    tmp_path: Path, held_writes: Callable[..., HeldWrites], save_last: Any
) -> None:
    def run(name: str, async_save: bool) -> tuple[ModelCheckpoint, Invariants, ScriptedModel]:
        cb = ModelCheckpoint(
            dirpath=tmp_path / name,
            monitor="val_loss",
            save_top_k=2,
            save_last=save_last,
            async_save=async_save,
        )
        checker = Invariants(cb)
        model = _fit(tmp_path / f"root-{name}", cb, checker, max_epochs=5)
        return cb, checker, model

    sync, _, _ = run("sync", False)
    held = held_writes()
    cb, checker, model = run("async", True)
    assert held.saves == 5 and held.unreleased == 0
    assert (
        checker.in_flight == 16
    )  # the 4 batches after each of the first 4 validations ran with a save in flight
    assert ckpts(tmp_path / "async") == ckpts(tmp_path / "sync")
    assert (
        os.path.basename(cb.best_model_path)
        == os.path.basename(sync.best_model_path)
        == "epoch=3-step=16.ckpt"
    )
    assert sorted(map(os.path.basename, cb.best_k_models)) == sorted(
        map(os.path.basename, sync.best_k_models)
    )
    assert cb.best_model_score is not None and float(cb.best_model_score) == pytest.approx(0.2)
    last = tmp_path / "async" / "last.ckpt"
    assert cb.last_model_path == str(last) and os.path.islink(last) == os.path.islink(
        tmp_path / "sync" / "last.ckpt"
    )
    final = load_file(last)
    assert final["global_step"] == 20 and torch.equal(final["state_dict"]["layer.weight"], model.layer.weight)
    restored = load_file(cb.best_model_path)["callbacks"][
        cb.state_key
    ]  # the file carries its own top-k state
    assert os.path.basename(restored["best_model_path"]) == "epoch=3-step=16.ckpt"


class Mutating(ScriptedModel):
    """Each training step first changes the weights in place: right after the previous step's save trigger."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            self.layer.weight.add_(1.0)
        return super().training_step(batch, batch_idx)


class Recorder(L.Callback):
    """The weights at each step's checkpoint trigger (runs just before ModelCheckpoint)."""

    def __init__(self) -> None:
        self.weights: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.weights[trainer.global_step] = pl_module.layer.weight.detach().clone()  # type: ignore[union-attr]


def test_in_place_changes_right_after_the_trigger_never_reach_the_file(
    tmp_path: Path, held_writes: Callable[..., HeldWrites]
) -> None:
    held = held_writes()  # each save is still held while the next step changes the weights
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=-1, async_save=True)
    recorder = Recorder()
    t = trainer(tmp_path, [recorder, cb], max_steps=6, limit_val_batches=0)
    t.fit(Mutating(lr=0.0), loader())
    assert held.saves == 6 and held.unreleased == 0
    assert len(ckpts(tmp_path / "c")) == 6
    for step, expected in recorder.weights.items():
        saved = load_file(tmp_path / "c" / f"epoch={(step - 1) // 4}-step={step}.ckpt")
        assert torch.equal(saved["state_dict"]["layer.weight"], expected), step


def test_a_failed_save_is_raised_at_the_next_save_and_the_state_names_the_earlier_file(
    tmp_path: Path, held_writes: Callable[..., HeldWrites]
) -> None:
    held_writes(fail={2})
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=1, async_save=True)
    t = trainer(tmp_path, [cb], max_steps=6, limit_val_batches=0)
    with pytest.raises(OSError, match="background save 2"):
        t.fit(ScriptedModel(), loader())
    assert t.global_step == 3  # raised by the trigger after the failed one, not later
    assert ckpts(tmp_path / "c") == ["epoch=0-step=1.ckpt"]
    assert cb.best_model_path == str(tmp_path / "c" / "epoch=0-step=1.ckpt")
    assert list(cb.best_k_models) == [] or list(cb.best_k_models) == [cb.best_model_path]
    assert t.interrupted


def test_a_failed_last_save_is_raised_when_fit_ends(
    tmp_path: Path, held_writes: Callable[..., HeldWrites]
) -> None:
    held_writes(fail={2})
    logger = MemoryLogger()
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=1, async_save=True)
    t = trainer(tmp_path, [cb], max_steps=2, limit_val_batches=0, logger=logger)
    with pytest.raises(OSError, match="background save 2"):
        t.fit(ScriptedModel(), loader())
    assert t.global_step == 2 and t.interrupted and logger.finalized == ["failed"]
    assert ckpts(tmp_path / "c") == ["epoch=0-step=1.ckpt"]
    assert cb.best_model_path == str(tmp_path / "c" / "epoch=0-step=1.ckpt")
    verify_file(cb.best_model_path)


def test_on_save_error_warn_covers_background_saves(
    tmp_path: Path, held_writes: Callable[..., HeldWrites]
) -> None:
    held_writes(fail={2})
    cb = ModelCheckpoint(
        dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=-1, async_save=True, on_save_error="warn"
    )
    t = trainer(tmp_path, [cb], max_steps=4, limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"CHECKPOINT NOT SAVED \(.*epoch=0-step=2.ckpt\)"):
        t.fit(ScriptedModel(), loader())
    assert t.global_step == 4 and not t.interrupted
    assert ckpts(tmp_path / "c") == ["epoch=0-step=1.ckpt", "epoch=0-step=3.ckpt", "epoch=0-step=4.ckpt"]
    for path in cb.best_k_models:
        verify_file(path)


class SaveLogger(MemoryLogger):
    """Checks at each ``after_save_checkpoint`` that the file it announces is committed."""

    def __init__(self) -> None:
        super().__init__()
        self.announced: list[str] = []

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        path = checkpoint_callback._last_checkpoint_saved
        verify_file(path)
        self.announced.append(os.path.basename(path))


def test_fit_returns_only_after_the_last_save_is_committed(
    tmp_path: Path, held_writes: Callable[..., HeldWrites]
) -> None:
    held = held_writes()  # the save is released only when fit waits for it
    logger = SaveLogger()
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=1, async_save=True)
    t = trainer(tmp_path, [cb], max_steps=1, limit_val_batches=0, logger=logger)
    t.fit(ScriptedModel(), loader())
    assert held.saves == 1 and held.unreleased == 0
    assert cb.best_model_path == str(tmp_path / "c" / "epoch=0-step=1.ckpt") and cb._pending is None
    verify_file(cb.best_model_path)
    assert logger.announced == ["epoch=0-step=1.ckpt"] and logger.finalized == ["success"]


class BufferWatcher(L.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        staging = trainer.checkpoint_port.queue.staging
        if staging is not None:
            self.seen.append(tuple(sorted(b.data_ptr() for b in staging.buffers().values())))


def test_host_buffers_are_allocated_once_and_reused_across_saves(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=1, async_save=True)
    watcher = BufferWatcher()
    t = trainer(tmp_path, [watcher, cb], max_steps=5, limit_val_batches=0)
    t.fit(ScriptedModel(), loader())
    assert len(watcher.seen) == 4 and len(set(watcher.seen)) == 1 and watcher.seen[0]
    staging = t.checkpoint_port.queue.staging
    assert staging is not None and staging.allocations == len(watcher.seen[0])
    assert staging.nbytes == 0  # freed when fit ended


def test_a_save_waiting_for_the_previous_one_is_reported(
    tmp_path: Path, held_writes: Callable[..., HeldWrites], capsys: pytest.CaptureFixture[str]
) -> None:
    held = held_writes(then_s=0.15)  # each save ends >= 0.15 s after training began to wait for it
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=1, async_save=True)
    t = trainer(tmp_path, [cb], max_steps=3, limit_val_batches=0)
    t.fit(ScriptedModel(), loader())
    err = capsys.readouterr().err
    assert err.count("waited") == 1 and "for the previous one to finish writing" in err
    writer = t.checkpoint_port.queue.writer
    assert held.unreleased == 0
    assert writer is not None and writer.waits == 2 and writer.waited_s >= 2 * 0.15


def test_async_save_must_be_a_bool_or_none() -> None:
    with pytest.raises(MisconfigurationException, match=r"async_save='yes'"):
        ModelCheckpoint(async_save="yes")  # type: ignore[arg-type]


def test_last_only_saves_are_asynchronous_too(tmp_path: Path, held_writes: Callable[..., HeldWrites]) -> None:
    held_writes()
    cb = ModelCheckpoint(
        dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=0, save_last=True, async_save=True
    )
    checker = Invariants(cb)
    t = trainer(tmp_path, [checker, cb], max_steps=4, limit_val_batches=0)
    t.fit(ScriptedModel(), loader())
    assert checker.in_flight == 3  # the batches after the first 3 steps ran with a save in flight
    assert ckpts(tmp_path / "c") == ["last.ckpt"] and load_file(cb.last_model_path)["global_step"] == 4


@pytest.mark.parametrize("save_last", [True, "link"])
def test_last_of_an_async_top_k_save_is_published_off_the_training_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, save_last: bool | str
) -> None:
    import threading

    import stepstone.checkpoint as engine

    threads: list[str] = []
    for name in ("copy_file", "link_file"):
        original = getattr(engine, name)

        def recording(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(engine, name, recording)
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2, save_last=save_last, async_save=True)
    trainer(tmp_path, [cb], max_steps=6, limit_val_batches=0).fit(ScriptedModel(), loader())
    assert len(threads) == 3 and threading.main_thread().name not in threads
    assert ckpts(tmp_path / "c") == ["epoch=1-step=6.ckpt", "last.ckpt"]
    assert load_file(cb.last_model_path)["global_step"] == 6
    assert os.path.islink(cb.last_model_path) == (save_last == "link")


class FailingStep(ScriptedModel):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == 2:
            raise RuntimeError("training failed at step 3")
        return super().training_step(batch, batch_idx)


def test_a_training_error_still_waits_for_the_save_in_flight(
    tmp_path: Path, held_writes: Callable[..., HeldWrites]
) -> None:
    held = held_writes()  # the step-2 save is released only when the failing fit waits for it
    cb = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, save_top_k=1, async_save=True)
    t = trainer(tmp_path, [cb], max_steps=5, limit_val_batches=0)
    with pytest.raises(RuntimeError, match="training failed"):
        t.fit(FailingStep(), loader())
    assert held.saves == 2 and held.unreleased == 0
    assert cb._pending is None and cb.best_model_path == str(tmp_path / "c" / "epoch=0-step=2.ckpt")
    verify_file(cb.best_model_path)
    assert ckpts(tmp_path / "c") == ["epoch=0-step=2.ckpt"]
