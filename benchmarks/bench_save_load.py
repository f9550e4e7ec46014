"""Save/load throughput of stepstone's checkpoint engine against plain torch and against the disk.

For a ~1 GiB state (16 float32 tensors of 64 MiB), measured in the same run, alternating, best of N:

- ``disk``: the same tensor bytes written sequentially with os.write, then fsync (what the disk allows);
- ``torch.save+fsync``: ``torch.save(state, path)`` then fsync of the file;
- ``stepstone save_file``: the full commit protocol (temp file, CRCs, trailer, fsync, rename, dir fsync);
- ``torch.load`` vs ``stepstone load_file`` (verify=True), with the file in the page cache (warm) and
  after evicting it (cold, via posix_fadvise DONTNEED);
- the same through the Trainer: ``trainer.save_checkpoint`` of a LightningModule whose parameters are that
  state (SGD without momentum, so no optimizer state) and ``LightningModule.load_from_checkpoint``.

Prints a table with GB/s and the ratios stepstone/torch and stepstone/disk, then one JSON line per
figure. Usage: ``python benchmarks/run.py save_load [--repeats 5] [--tensors 16] [--dir DIR]`` (or run
this file directly). The VM this was developed on shows large run-to-run variance (page-cache memory is
handed back to the host between runs), hence best-of-N.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import torch

import stepstone as L
from stepstone.checkpoint import load_file, save_file

GIB = 1024**3


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _evict(path: str) -> None:
    """Drop a (synced) file from the page cache so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _raw_write(state: dict[str, torch.Tensor], path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for tensor in state.values():
            view = memoryview(tensor.numpy()).cast("B")
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_save(state: dict[str, torch.Tensor], path: str) -> None:
    torch.save(state, path)
    _fsync_path(path)


class _Big(L.LightningModule):
    """A module whose parameters are the benchmark tensors (shared, not copied)."""

    def __init__(self, tensors: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.params = torch.nn.ParameterDict(
            {f"t{i}": torch.nn.Parameter(torch.empty(16 * 1024 * 1024)) for i in range(tensors)}
        )

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        raise AssertionError("not trained")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _attached_trainer(state: dict[str, torch.Tensor], directory: str) -> tuple[L.Trainer, _Big]:
    model = _Big(len(state))
    with torch.no_grad():
        for name, tensor in state.items():
            model.params[name].set_(tensor)
    trainer = L.Trainer(
        max_epochs=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=directory,
    )
    trainer.fit(model, [torch.zeros(1)])
    return trainer, model


def _timed(action: Callable[[], object], remove: str | None = None) -> float:
    # Every measurement starts from the same state: no dirty pages being written back, and (for saves) no
    # previous file to truncate or unlink, as for a checkpoint with a new name.
    if remove is not None and os.path.exists(remove):
        os.remove(remove)
    gc.collect()
    os.sync()
    start = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def _measure(state: dict[str, torch.Tensor], directory: str, repeats: int) -> dict[str, float]:
    names = ("disk", "torch", "stepstone", "trainer")
    paths = {name: os.path.join(directory, f"{name}.ckpt") for name in names}
    trainer, _model = _attached_trainer(state, directory)
    savers: dict[str, Callable[[], object]] = {
        "disk": lambda: _raw_write(state, paths["disk"]),
        "torch.save+fsync": lambda: _torch_save(state, paths["torch"]),
        "stepstone save_file": lambda: save_file(paths["stepstone"], state),
        "trainer.save_checkpoint": lambda: trainer.save_checkpoint(paths["trainer"]),
    }
    targets = {
        "disk": paths["disk"],
        "torch.save+fsync": paths["torch"],
        "stepstone save_file": paths["stepstone"],
        "trainer.save_checkpoint": paths["trainer"],
    }
    loaders: dict[str, Callable[[], object]] = {
        "torch.load": lambda: torch.load(paths["torch"], weights_only=True),
        "stepstone load_file": lambda: load_file(paths["stepstone"]),
        "load_from_checkpoint": lambda: _Big.load_from_checkpoint(paths["trainer"]),
    }
    sources = {
        "torch.load": paths["torch"],
        "stepstone load_file": paths["stepstone"],
        "load_from_checkpoint": paths["trainer"],
    }
    best: dict[str, float] = {}
    for _ in range(repeats):  # alternate so that drifting disk/VM speed affects all alike
        for name, action in savers.items():
            best[name] = min(best.get(name, float("inf")), _timed(action, remove=targets[name]))
        for name, action in loaders.items():
            key = f"{name} (warm)"
            best[key] = min(best.get(key, float("inf")), _timed(action))
        for name, action in loaders.items():
            _evict(sources[name])
            key = f"{name} (cold)"
            best[key] = min(best.get(key, float("inf")), _timed(action))
    return best


def _report(best: dict[str, float], nbytes: int) -> None:
    def rate(name: str) -> float:
        return nbytes / best[name] / 1e9

    rows = [
        ("disk", None, None),
        ("torch.save+fsync", None, "disk"),
        ("stepstone save_file", "torch.save+fsync", "disk"),
        ("trainer.save_checkpoint", "torch.save+fsync", "disk"),
        ("torch.load (warm)", None, None),
        ("stepstone load_file (warm)", "torch.load (warm)", None),
        ("load_from_checkpoint (warm)", "torch.load (warm)", None),
        ("torch.load (cold)", None, None),
        ("stepstone load_file (cold)", "torch.load (cold)", None),
        ("load_from_checkpoint (cold)", "torch.load (cold)", None),
    ]
    print(f"\nstate: {nbytes / GIB:.2f} GiB, best of the repeats")
    print(f"{'operation':30} {'seconds':>8} {'GB/s':>7} {'vs torch':>9} {'vs disk':>8}")
    lines = []
    for name, torch_ref, disk_ref in rows:
        vs_torch = best[torch_ref] / best[name] if torch_ref else None
        vs_disk = best[disk_ref] / best[name] if disk_ref else None
        text_torch = f"{vs_torch:9.2f}" if vs_torch is not None else " " * 9
        text_disk = f"{vs_disk:8.2f}" if vs_disk is not None else " " * 8
        print(f"{name:30} {best[name]:8.3f} {rate(name):7.2f} {text_torch} {text_disk}")
        lines.append(
            {
                "op": name,
                "seconds": round(best[name], 4),
                "gb_per_s": round(rate(name), 3),
                "vs_torch": None if vs_torch is None else round(vs_torch, 3),
                "vs_disk": None if vs_disk is None else round(vs_disk, 3),
            }
        )
    print()
    for line in lines:
        print(json.dumps(line))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the results.

    Args:
        argv: command-line arguments (``--repeats``, ``--tensors``, ``--dir``).

    Returns:
        The exit status (0).
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tensors", type=int, default=16, help="number of 64 MiB float32 tensors")
    parser.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="bench-", dir=args.dir)
    try:
        state = {f"t{i}": torch.randn(16 * 1024 * 1024) for i in range(args.tensors)}
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        _report(_measure(state, directory, args.repeats), nbytes)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
