"""Preemption: a signal during fit finishes the optimizer step, commits a marked checkpoint and exits with 75."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from models import BoringModel, make_trainer
from resume_harness import differences, run
from stepstone.callbacks import ModelCheckpoint
from stepstone.errors import MisconfigurationException
from stepstone.trainer.signals import PREEMPTED_EXIT_CODE, Preempted

HARNESS = Path(__file__).parents[1] / "resume_harness.py"
COMPARED = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "global_step", "epoch")


class SignalAt(L.Callback):
    """Sends ``signum`` to this process at the end of global batch ``n``, and ``again`` more while saving."""

    def __init__(self, n: int, signum: int = signal.SIGTERM, again: int = 0) -> None:
        self.n, self.signum, self.again = n, signum, again
        self.saves = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.fit_loop.total_batch_idx + 1 == self.n:
            os.kill(os.getpid(), self.signum)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.saves += 1
        for _ in range(self.again):  # a second signal in the middle of writing the preemption checkpoint
            os.kill(os.getpid(), self.signum)


def _fit(tmp_path: Path, callback: L.Callback, **kwargs: Any) -> L.Trainer:
    trainer = make_trainer(
        tmp_path,
        max_epochs=2,
        enable_checkpointing=True,
        callbacks=[callback, ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=0)],
        **kwargs,
    )
    trainer.fit(BoringModel())
    return trainer


def test_sigterm_saves_after_the_optimizer_step_and_exits_with_75(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    callback = SignalAt(3, again=2)
    with pytest.raises(Preempted) as raised:
        _fit(tmp_path, callback)
    assert raised.value.code == PREEMPTED_EXIT_CODE
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    path = Path(raised.value.path or "")
    assert path == tmp_path / "ckpts" / "last-preempted.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["stepstone"]["preempted"] is True
    assert checkpoint["global_step"] == 3  # the signalled batch's optimizer step was finished, then saved
    assert callback.saves == 1  # the signals received during the save were ignored, not a second save
    err = capfd.readouterr().err  # the handler writes to file descriptor 2 directly
    assert "received SIGTERM again; already stopping, ignored" in err
    assert "Exiting with code 75" in err


def test_sigusr1_by_default_and_the_signals_are_configurable(tmp_path: Path) -> None:
    with pytest.raises(Preempted) as raised:
        _fit(tmp_path, SignalAt(2, signum=signal.SIGUSR1))
    assert raised.value.signum == signal.SIGUSR1
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    try:
        # Only SIGUSR2 is a preemption signal now; SIGUSR2 is then handled by the handler installed above.
        with pytest.raises(Preempted):
            _fit(tmp_path, SignalAt(2, signum=signal.SIGUSR2), preemption_signals=["SIGUSR2"])
        trainer = _fit(tmp_path, SignalAt(2, signum=signal.SIGUSR2), preemption_signals=None)
        assert trainer.global_step == 8  # not preempted: SIGUSR2 went to the previous handler
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_signal_after_the_last_step_is_handed_to_the_previous_handler_after_fit(tmp_path: Path) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: received.append(signum))

    class SignalAtTrainEnd(L.Callback):
        def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert received == []  # borrowed while fit runs

    try:
        trainer = make_trainer(
            tmp_path, max_epochs=1, callbacks=[SignalAtTrainEnd()], preemption_signals=["SIGUSR2"]
        )
        trainer.fit(BoringModel())  # training was over: no preemption save, fit ends normally
        assert received == [signal.SIGUSR2]
        assert trainer.global_step == 4
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_invalid_preemption_signals_are_rejected() -> None:
    with pytest.raises(MisconfigurationException, match=r"preemption_signals=.*'SIGKILL'"):
        L.Trainer(preemption_signals=["SIGKILL"])
    with pytest.raises(MisconfigurationException, match="SIGNOPE"):
        L.Trainer(preemption_signals="SIGNOPE")


def test_without_a_model_checkpoint_it_still_stops_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[SignalAt(2)])
    with pytest.raises(Preempted) as raised:
        trainer.fit(BoringModel())
    assert raised.value.path is None
    assert "no checkpoint was saved: the Trainer has no ModelCheckpoint" in capsys.readouterr().err


def test_fit_outside_the_main_thread_installs_no_handler(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            make_trainer(tmp_path, max_epochs=1).fit(BoringModel())
        except BaseException as error:  # surfaced below
            errors.append(error)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert errors == []


def test_sigterm_at_a_random_moment_then_auto_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    scenario: dict[str, Any] = {"shuffle": True, "accumulate": 1, "workers": 0, "epochs": 2}
    straight = tmp_path / "straight.ckpt"
    run({**scenario, "dirpath": str(tmp_path / "straight-ckpts")}, str(tmp_path), str(straight))
    scenario.update(dirpath=str(tmp_path / "ckpts"), pace=0.05)
    resumed = tmp_path / "resumed.ckpt"
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"scenario": scenario, "root": str(tmp_path), "resumes": [["auto", str(resumed)]]})
    )
    # 12 batches of >= 50 ms, and the 11th waits for the signal (Pace): it lands mid-training.
    delay = random.Random().uniform(0.0, 0.4)
    child = subprocess.Popen(
        [sys.executable, str(HARNESS), str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        while child.stdout.readline().strip() != "training":  # wait until the handlers are installed
            assert child.poll() is None, "the training process ended early"
        threading.Event().wait(delay)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == PREEMPTED_EXIT_CODE, f"delay {delay:.3f}s: {err[-2000:]}"
    preempted = torch.load(tmp_path / "ckpts" / "last-preempted.ckpt", weights_only=True)
    assert preempted["stepstone"]["preempted"] is True
    assert not resumed.exists()
    subprocess.run([sys.executable, str(HARNESS), str(spec)], check=True, timeout=60, capture_output=True)
    expected, got = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for key in COMPARED:
        assert differences(expected[key], got[key], key) == [], f"delay {delay:.3f}s"
    for key in ("metrics", "loop"):
        assert differences(expected["stepstone"][key], got["stepstone"][key], key) == [], (
            f"delay {delay:.3f}s"
        )


def test_sigterm_on_the_very_last_step_then_auto_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    # Persistent augmenting workers: their generators must survive a resumed run that has no batch left to run.
    scenario: dict[str, Any] = {
        "shuffle": True,
        "accumulate": 1,
        "workers": 2,
        "augment": True,
        "persistent": True,
        "drop_last": True,
        "epochs": 2,
    }
    straight = tmp_path / "straight.ckpt"
    run({**scenario, "dirpath": str(tmp_path / "straight-ckpts")}, str(tmp_path), str(straight))
    scenario.update(dirpath=str(tmp_path / "ckpts"), signal_at=10)  # 5 batches an epoch: the last step
    resumed = tmp_path / "resumed.ckpt"
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"scenario": scenario, "root": str(tmp_path), "resumes": [["auto", str(resumed)]]})
    )
    first = subprocess.run(
        [sys.executable, str(HARNESS), str(spec)], timeout=60, capture_output=True, text=True
    )
    assert first.returncode == PREEMPTED_EXIT_CODE, first.stderr[-2000:]
    preempted = torch.load(tmp_path / "ckpts" / "last-preempted.ckpt", weights_only=True)
    assert preempted["global_step"] == 10 and preempted["stepstone"]["preempted"] is True
    subprocess.run([sys.executable, str(HARNESS), str(spec)], check=True, timeout=60, capture_output=True)
    expected, got = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for key in COMPARED:
        assert differences(expected[key], got[key], key) == []
    assert differences(expected["stepstone"], got["stepstone"], "stepstone") == []
