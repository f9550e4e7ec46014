"""The cost of capturing DataLoader workers' generators: per batch, and from fit(ckpt_path=...) to the first batch.

Two measurements, with 2 worker processes:

- **per batch**: 64 CIFAR-sized images (3x32x32 uint8) through a random crop (pad 4) and a random horizontal
  flip per sample, collated in the workers; the epoch's batches are consumed through stepstone's capture
  (``WorkerRng``) and through the bare DataLoader, alternately, ``--repeats`` times (median seconds per batch).
  Because two shared cores make that difference noisy, the capture's own work is also timed in one process:
  what a worker adds per batch (taking its generator states and pickling them, which is what crosses the
  queue) against producing the batch, in wall time and in the thread's CPU time (steadier when other
  processes compete for the cores).
- **resume**: a 100,000-sample epoch (batch 64, shuffled, ``--resume-at`` batches consumed) checkpointed
  mid-epoch; seconds from ``fit(ckpt_path=...)`` to the first resumed batch, next to a fresh ``fit`` to its
  first batch (the Trainer's and the workers' start-up): the difference is what resuming costs.

Usage: ``python benchmarks/run.py worker_rng [--repeats 5] [--batches 40] [--resume-at 800]``.
Takes about a minute on the 2-core development VM.
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import stepstone as L
from stepstone.loops.worker_rng import WorkerRng, _capture_compact


class CropFlip(Dataset[torch.Tensor]):
    """CIFAR-sized uint8 images, randomly cropped (4 pixels of padding) and flipped, as float."""

    def __init__(self, count: int) -> None:
        self.images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        padded = torch.nn.functional.pad(self.images[index], (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,)).tolist()
        image = padded[:, top : top + 32, left : left + 32]
        if random.random() < 0.5:
            image = image.flip(-1)
        return image.float() / 255


def _per_batch(loader: DataLoader[torch.Tensor], captured: bool) -> float:
    started = time.perf_counter()
    count = 0
    iterator = WorkerRng().iterate(loader, 0, lambda: iter(loader)) if captured else iter(loader)
    first = time.perf_counter()
    for count, _ in enumerate(iterator, 1):
        if count == 1:
            first = time.perf_counter()  # the workers' start-up is not a per-batch cost
    del started
    return (time.perf_counter() - first) / max(count - 1, 1)


def _in_process(dataset: CropFlip, repeats: int) -> dict[str, float]:
    """Seconds to produce one batch in one process, and to capture and pickle the worker's states: wall time,
    and this thread's CPU time (blind to the time spent descheduled, so steadier on a shared machine)."""
    times: dict[str, list[float]] = {
        "produce_batch_s": [],
        "capture_s": [],
        "produce_batch_cpu_s": [],
        "capture_cpu_s": [],
    }
    for _ in range(repeats):
        for name, count, work in (
            ("produce_batch", 10, lambda: torch.stack([dataset[i] for i in range(64)])),
            ("capture", 100, lambda: pickle.dumps(_capture_compact(), protocol=pickle.HIGHEST_PROTOCOL)),
        ):
            started, started_cpu = time.perf_counter(), time.thread_time()
            for _ in range(count):
                work()
            times[f"{name}_s"].append((time.perf_counter() - started) / count)
            times[f"{name}_cpu_s"].append((time.thread_time() - started_cpu) / count)
    return {name: statistics.median(values) for name, values in times.items()}


def measure_per_batch(repeats: int, batches: int) -> dict[str, Any]:
    dataset = CropFlip(64 * batches)
    loader = DataLoader(dataset, batch_size=64, num_workers=2)
    plain, captured = [], []
    for _ in range(repeats):
        plain.append(_per_batch(loader, captured=False))
        captured.append(_per_batch(loader, captured=True))
    result: dict[str, Any] = {
        "bench": "worker_rng",
        "type": "summary",
        "what": "per_batch",
        "plain_s": statistics.median(plain),
        "captured_s": statistics.median(captured),
        "state_bytes": len(pickle.dumps(_capture_compact(), protocol=pickle.HIGHEST_PROTOCOL)),
    }
    result.update(_in_process(dataset, repeats))
    result["loader_overhead"] = result["captured_s"] / result["plain_s"] - 1
    result["capture_overhead"] = result["capture_s"] / result["produce_batch_s"]
    result["capture_overhead_cpu"] = result["capture_cpu_s"] / result["produce_batch_cpu_s"]
    return result


class _Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.first_batch_at: float | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.first_batch_at is None:
            self.first_batch_at = time.perf_counter()
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _Stop(BaseException):
    """Ends a run right after its checkpoint was written."""


class _SaveAndStop(L.Callback):
    """After ``batches`` training batches: write ``path`` and stop (like a crash); 1 batch: stop only."""

    def __init__(self, batches: int, path: str | None) -> None:
        self.batches, self.path = batches, path

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.fit_loop.total_batch_idx + 1 >= self.batches:
            if self.path is not None:
                trainer.save_checkpoint(self.path)
            raise _Stop


def _fit(ckpt_path: str | None, stop_after: int = 1, save: str | None = None) -> float:
    """Seconds from ``fit`` to the first training batch; trains ``stop_after`` batches (then writes ``save``)."""
    L.seed_everything(0, verbose=False)
    loader = DataLoader(TensorDataset(torch.randn(100_000, 4)), batch_size=64, shuffle=True, num_workers=2)
    model = _Model()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[_SaveAndStop(stop_after, save)],
    )
    started = time.perf_counter()
    try:
        trainer.fit(model, loader, ckpt_path=ckpt_path)
    except _Stop:
        pass
    assert model.first_batch_at is not None
    return model.first_batch_at - started


def measure_resume(resume_at: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as root:
        path = f"{root}/mid.ckpt"
        _fit(None, stop_after=resume_at, save=path)
        assert torch.load(path, weights_only=True)["global_step"] == resume_at
        fresh, resumed = [], []
        for _ in range(repeats):
            fresh.append(_fit(None))
            resumed.append(_fit(path))
    return {
        "bench": "worker_rng",
        "type": "summary",
        "what": "resume",
        "resume_at_batch": resume_at,
        "fresh_to_first_batch_s": statistics.median(fresh),
        "resumed_to_first_batch_s": statistics.median(resumed),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--resume-at", type=int, default=800)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [measure_per_batch(args.repeats, args.batches), measure_resume(args.resume_at, args.repeats)]
    per_batch, resume = results
    print(
        f"per batch (64 images, crop+flip, 2 workers): bare {per_batch['plain_s'] * 1e3:.2f} ms, captured "
        f"{per_batch['captured_s'] * 1e3:.2f} ms ({per_batch['loader_overhead']:+.1%}); in one process: "
        f"producing {per_batch['produce_batch_s'] * 1e3:.2f} ms, capture+pickle {per_batch['capture_s'] * 1e6:.0f} "
        f"us ({per_batch['capture_overhead']:.2%}); CPU time: producing {per_batch['produce_batch_cpu_s'] * 1e3:.2f} "
        f"ms, capture+pickle {per_batch['capture_cpu_s'] * 1e6:.1f} us ({per_batch['capture_overhead_cpu']:.2%}); "
        f"{per_batch['state_bytes']} bytes"
    )
    print(
        f"resume at batch {resume['resume_at_batch']} of a 100,000-sample epoch: fit to first batch "
        f"{resume['resumed_to_first_batch_s']:.2f} s resumed, {resume['fresh_to_first_batch_s']:.2f} s fresh"
    )
    for result in results:
        print(json.dumps(result))
    if args.json_out is not None:
        args.json_out.write_text("\n".join(json.dumps(r) for r in results) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
