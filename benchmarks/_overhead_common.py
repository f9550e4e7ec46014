"""Shared workload of the overhead benchmark: the data, the hand-written loop and the framework runs.

Imported both by ``bench_overhead.py`` (in-process: plain loop and stepstone) and by
``_lightning_overhead.py`` (in Lightning's own venv: plain loop and Lightning), so that every contender in
both processes runs exactly the same model, data path, optimizer and loss. Depends on torch only; the
framework (``stepstone`` or ``lightning``) is passed in as a module.
"""

from __future__ import annotations

import gc
import time
import warnings
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

IN_FEATURES = 32
CLASSES = 2
LR = 0.1
SEED = 0

# The Trainer arguments from the issue, the same for stepstone and Lightning.
TRAINER_KWARGS: dict[str, Any] = {
    "enable_progress_bar": False,
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}

LOADERS = ("batched", "per-sample")


def setup_process() -> None:
    """One intra-op thread (stable timings on a small machine) and no warnings."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def quiet_loggers() -> None:
    """Silence the frameworks' info lines ("GPU available: ..."); call after importing the framework, which
    sets its logger's level on import."""
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "stepstone"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_loader(steps: int, batch_size: int, kind: str = "batched") -> DataLoader:
    """A DataLoader over an in-memory TensorDataset holding exactly ``steps`` batches (one epoch).

    ``batched`` (default) hands the dataset a whole batch of indices at a time (a BatchSampler as the
    sampler, ``batch_size=None``), so a batch is two tensor slices and no per-sample collate: the data path
    costs ~40 us/batch instead of ~190 us, which keeps the noise of the subtraction small. ``per-sample`` is
    the textbook ``DataLoader(dataset, batch_size=64)``.
    """
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(steps * batch_size, IN_FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (steps * batch_size,), generator=g)
    dataset = TensorDataset(x, y)
    if kind == "batched":
        sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None)
    if kind == "per-sample":
        return DataLoader(dataset, batch_size=batch_size, shuffle=False)
    raise ValueError(f"unknown loader kind {kind!r}; expected one of {LOADERS}")


def _checksum(params: Any) -> float:
    with torch.no_grad():
        return float(sum(p.double().sum() for p in params))


def _result(
    total: float, cpu: float, marks: list[float], steps: int, checksum: float, global_step: int
) -> dict[str, Any]:
    # marks: perf_counter at the start of the first and of the last training step -> steady per-step time.
    steady = (marks[-1] - marks[0]) / (steps - 1) if len(marks) >= 2 and steps > 1 else float("nan")
    return {
        "total_s": total,  # wall clock (perf_counter)
        "cpu_s": cpu,  # this process's CPU time (process_time): blind to time spent descheduled
        "steady_step_s": steady,
        "checksum": checksum,
        "global_step": global_step,
    }


def run_plain(loader: DataLoader, steps: int) -> dict[str, Any]:
    """The hand-written loop: forward, cross-entropy, zero_grad, backward, SGD step; no validation."""
    torch.manual_seed(SEED)
    model = torch.nn.Linear(IN_FEATURES, CLASSES)
    marks: list[float] = []
    last = steps - 1
    gc.collect()
    cpu_start = time.process_time()
    start = time.perf_counter()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    step = 0
    for batch_idx, (x, y) in enumerate(loader):
        if batch_idx == 0 or batch_idx == last:
            marks.append(time.perf_counter())
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step >= steps:
            break
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return _result(total, cpu, marks, steps, _checksum(model.parameters()), step)


_MODULE_CLASSES: dict[tuple[int, bool], type] = {}


def module_class(framework: ModuleType, log: bool) -> type:
    """The LightningModule of the benchmark for ``framework`` (stepstone or lightning), with or without log."""
    key = (id(framework), log)
    if key in _MODULE_CLASSES:
        return _MODULE_CLASSES[key]

    class BenchModule(framework.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self, steps: int) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(IN_FEATURES, CLASSES)
            self.marks: list[float] = []
            self._last = steps - 1

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 0 or batch_idx == self._last:
                self.marks.append(time.perf_counter())
            x, y = batch
            loss = F.cross_entropy(self.layer(x), y)
            if log:
                self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR)

    BenchModule.__name__ = BenchModule.__qualname__ = "BenchModuleLog" if log else "BenchModule"
    _MODULE_CLASSES[key] = BenchModule
    return BenchModule


def run_framework(framework: ModuleType, loader: DataLoader, steps: int, log: bool) -> dict[str, Any]:
    """``Trainer(max_steps=steps, ...)`` + ``fit``: the timed region covers the Trainer's construction too."""
    cls = module_class(framework, log)
    torch.manual_seed(SEED)
    model = cls(steps)
    gc.collect()
    cpu_start = time.process_time()
    start = time.perf_counter()
    trainer = framework.Trainer(max_steps=steps, **TRAINER_KWARGS)
    trainer.fit(model, loader)
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return _result(
        total, cpu, model.marks, steps, _checksum(model.layer.parameters()), int(trainer.global_step)
    )


def run_contender(framework: ModuleType, name: str, loader: DataLoader, steps: int) -> dict[str, Any]:
    """``plain``, ``<framework>`` or ``<framework>+log``."""
    if name == "plain":
        return run_plain(loader, steps)
    return run_framework(framework, loader, steps, log=name.endswith("+log"))
