"""A tiny training run for exact-resume tests; importable by tests and runnable as a script (a fresh process).

The model uses dropout (torch's generator), python's ``random`` and numpy's generator in its loss, SGD with
momentum (optimizer state) and a StepLR scheduler; it logs a per-step/per-epoch ``train_loss`` and a validation
loss, validating mid-epoch. Any state a resume forgets changes the final weights, optimizer state, logged values
or generator states, which the tests compare bit for bit.

Script use: ``python resume_harness.py SPEC.json`` where the spec holds ``scenario`` (see :func:`run`),
``root`` and ``resumes``: a list of ``[checkpoint_to_resume_from, final_checkpoint_to_write]`` (the checkpoint
may be ``"auto"`` or None, for a run from scratch), optionally with a third item, ``stop`` (see :func:`run`).
Under ``torchrun`` with ``scenario["ranks"]`` processes, every run uses DDP on CPU (gloo).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

import stepstone as L
from stepstone.callbacks import ModelCheckpoint


class Stop(BaseException):
    """Ends an interrupted run right after its checkpoint was written (like a crash)."""


class TinyModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        # Python's and numpy's generators take part too (a resume must restore them as well).
        loss = loss * (1.0 + 1e-3 * random.random() + 1e-3 * float(np.random.rand()))
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)]


def _data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    return TensorDataset(x, x.sum(1, keepdim=True))


class Augmented(TensorDataset):
    """Random per-sample augmentation drawn from the loading process's torch, python and numpy generators."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        x, y = super().__getitem__(index)
        torch.rand(index % 3)  # a sample-dependent number of draws: every worker (and rank) has its own state
        noise = 0.1 * torch.randn(4) + 0.01 * random.random() + 0.01 * float(np.random.rand())
        return x + noise, y


class PositionedStream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """An unsized stream with random per-sample augmentation; each worker's copy streams its share of the
    samples and saves/loads its position (``state_dict``/``load_state_dict``)."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = Augmented(*data.tensors)
        self.start = self.position = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        mine = range(worker, len(self.data), workers)
        start, self.start = self.start, 0
        for self.position in range(start, len(mine)):
            yield self.data[mine[self.position]]
        self.position = len(mine)

    def state_dict(self) -> dict[str, int]:
        return {"start": self.position + 1}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.start = state["start"]


class StatefulBatches:
    """A loader that keeps its own position (duck-typed like torchdata's ``StatefulDataLoader``)."""

    def __init__(self, data: TensorDataset, batch_size: int) -> None:
        x, y = data.tensors
        self.batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        self.position = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A finished epoch's position starts the next epoch (as torchdata's loader does).
        start = self.position if self.position < len(self.batches) else 0
        self.position = 0
        for index in range(start, len(self.batches)):
            self.position = index + 1
            yield self.batches[index]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def user_worker_init(worker_id: int) -> None:
    """A user's worker_init_fn that reseeds python's generator per worker (stepstone must chain it)."""
    random.seed(torch.initial_seed() % 2**32 + 17 * worker_id)


class InterruptAt(L.Callback):
    """Writes ``path`` at ``point`` (``[hook, n]``) and stops the run."""

    def __init__(self, point: list[Any], path: str) -> None:
        self.hook, self.n = point
        self.path = path
        self.validations = 0

    def _stop(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        raise Stop

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.hook == "batch" and trainer.fit_loop.total_batch_idx + 1 == self.n:
            self._stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.validations += 1
        if self.hook == "validation" and self.validations == self.n:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.hook == "epoch" and trainer.current_epoch + 1 == self.n:
            self._stop(trainer)


class Pace(L.Callback):
    """Announces the start of training on stdout and slows every batch down (for signal tests).

    A run from step 0 does not end its second-to-last batch before a SIGTERM arrived: a test sending one at a
    random moment can count on it landing inside training with a batch left, however loaded the machine (a
    resumed run never waits).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.await_signal = False
        self.signalled = False

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.await_signal = trainer.global_step == 0
        handler = signal.getsignal(signal.SIGTERM)  # the Trainer's, installed before on_train_start

        def noting(signum: int, frame: FrameType | None) -> None:
            self.signalled = True
            if callable(handler):
                handler(signum, frame)

        signal.signal(signal.SIGTERM, noting)  # fit's end puts back the handler it found
        print("training", flush=True)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        time.sleep(self.seconds)  # simulated work: spreads the signal's random moment over the batches
        last_epoch = trainer.current_epoch + 1 == trainer.max_epochs
        gate = self.await_signal and last_epoch and batch_idx == trainer.num_training_batches - 2
        deadline = time.monotonic() + 60
        while gate and not self.signalled and time.monotonic() < deadline:
            time.sleep(0.01)


class SignalAt(L.Callback):
    """A run from step 0 sends itself SIGTERM (preemption) at the end of global batch ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.armed = False

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.armed = trainer.global_step == 0  # the auto-resumed run is not preempted again

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.armed and trainer.fit_loop.total_batch_idx + 1 == self.n:
            os.kill(os.getpid(), signal.SIGTERM)


def _train_loader(scenario: dict[str, Any]) -> Any:
    data = _data(22, 0)
    if scenario.get("stateful"):
        return StatefulBatches(data, 4)
    extra: dict[str, Any] = {}
    if scenario.get("persistent"):
        extra = {"persistent_workers": True, "prefetch_factor": 3, "worker_init_fn": user_worker_init}
    dataset: Any = Augmented(*data.tensors) if scenario.get("augment") else data
    if scenario.get("iterable"):
        dataset = PositionedStream(data)
    return DataLoader(
        dataset,
        batch_size=4,
        shuffle=scenario["shuffle"],
        num_workers=scenario["workers"],
        drop_last=bool(scenario.get("drop_last")),
        **extra,
    )


def run(
    scenario: dict[str, Any], root: str, final: str | None, resume: str | None = None, stop: Any = None
) -> None:
    """One fit of ``scenario``; writes ``final`` at the end.

    ``scenario``: ``shuffle``, ``accumulate``, ``workers``, optionally ``augment`` (random per-sample noise in
    the dataset), ``persistent`` (persistent workers, prefetch_factor 3, a user worker_init_fn), ``drop_last``,
    ``iterable`` (an unsized, augmented :class:`PositionedStream`; needs ``shuffle`` False), ``stateful``
    (a :class:`StatefulBatches` loader instead), ``no_val`` (``limit_val_batches=0``),
    ``epochs``, ``dirpath`` (a ModelCheckpoint
    saving every 4 steps there), ``pace`` (seconds to sleep after each batch, announcing the start) and
    ``signal_at`` (a run from step 0 sends itself SIGTERM after that global batch). ``stop``
    (``[[hook, n], path]``) interrupts the run after writing ``path``; ``resume`` is the ``ckpt_path``.
    """
    L.seed_everything(7)
    train = _train_loader(scenario)
    val = DataLoader(_data(8, 1), batch_size=4, shuffle=scenario["shuffle"])
    callbacks: list[L.Callback] = [InterruptAt(stop[0], stop[1])] if stop else []
    if scenario.get("pace"):
        callbacks.append(Pace(scenario["pace"]))
    if scenario.get("signal_at"):
        callbacks.append(SignalAt(scenario["signal_at"]))
    if scenario.get("dirpath"):
        callbacks.append(ModelCheckpoint(dirpath=scenario["dirpath"], every_n_train_steps=4))
    trainer = L.Trainer(
        default_root_dir=root,
        max_epochs=scenario.get("epochs", 2),
        accumulate_grad_batches=scenario["accumulate"],
        val_check_interval=3,
        limit_val_batches=0 if scenario.get("no_val") else None,
        num_sanity_val_steps=0,
        enable_checkpointing=bool(scenario.get("dirpath")),
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=callbacks,
        **(
            {"strategy": "ddp", "accelerator": "cpu", "devices": scenario["ranks"]}
            if scenario.get("ranks")
            else {}
        ),
    )
    if resume not in (None, "auto"):
        # Disturb every generator: the resume must set them from the checkpoint. ("auto" may start fresh.)
        random.seed(resume)
        np.random.seed(len(resume))
        torch.manual_seed(len(resume) + 1)
    try:
        trainer.fit(TinyModel(), train, val, ckpt_path=resume)
    except Stop:
        return
    finally:
        # Shut persistent workers down now (the trainer keeps the loader alive until garbage collection, and
        # the next run's workers would inherit them).
        if isinstance(train, DataLoader):
            train._iterator = None
    if final is not None:
        trainer.save_checkpoint(final)


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two checkpoint values differ (tensors compared with ``torch.equal``, dtype and shape included)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{path}: keys {sorted(set(a) ^ set(b))}"] if set(a) != set(b) else []
        return found + [d for key in a if key in b for d in differences(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")
        ]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{path}: tensors differ"]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    for resume, final, *stop in spec["resumes"]:
        run(spec["scenario"], spec["root"], final, resume=resume, stop=stop[0] if stop else None)


if __name__ == "__main__":
    main(sys.argv[1])
