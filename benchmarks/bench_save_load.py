"""Save/load throughput of stepstone's checkpoint engine against plain torch and against the disk.

For a ~1 GiB state (16 float32 tensors of 64 MiB), measured in the same run, alternating:

- the disk's limits (``_disk_limit.py``), each writing exactly as many bytes as ``save_file``'s file:
  ``disk (early writeback)``: ``os.write`` through the engine's ``FdOutput`` (``sync_file_range`` every 64
  MiB, as a save does), then fsync; ``disk (O_DIRECT)``: page-aligned ``O_DIRECT`` writes, then fsync
  (reported as unavailable, with the reason, where the filesystem refuses ``O_DIRECT``); and, for
  information only, ``disk (naive write+fsync)``, which a save can beat (no early writeback);
- ``torch.save+fsync``: ``torch.save(state, path)`` then fsync of the file;
- ``stepstone save_file``: the full commit protocol (temp file, CRCs, trailer, fsync, rename, dir fsync);
- ``torch.load`` vs ``stepstone load_file`` (verify=True), with the file in the page cache (warm) and
  after evicting it (cold, via posix_fadvise DONTNEED);
- the same through the Trainer: ``trainer.save_checkpoint`` of a LightningModule whose parameters are that
  state (SGD without momentum, so no optimizer state) and ``LightningModule.load_from_checkpoint``.

Prints the filesystem of the benchmark folder, then a table with each figure's seconds (best of the repeats),
GB/s and its speed ratios (reference time / its time: above 1 is faster) to the best of the two disk limits
and to ``torch.save``/``torch.load``, then one JSON line per figure (with the median too). Usage:
``python benchmarks/run.py save_load [--repeats 5] [--tensors 16] [--dir DIR]`` (or run this file directly).
The VM this was developed on shows large run-to-run variance (page-cache memory is handed back to the host
between runs), hence best-of-N.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch

import stepstone as L
from _disk_limit import (
    DirectIOUnavailable,
    filesystem_of,
    write_direct,
    write_early_writeback,
    write_naive,
)
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


DISK_LIMITS = ("disk (early writeback)", "disk (O_DIRECT)")
NAIVE = "disk (naive write+fsync)"


def _direct_reason(directory: str) -> str | None:
    """Why ``O_DIRECT`` cannot be measured in ``directory`` (None: it can)."""
    probe = os.path.join(directory, "direct-probe.bin")
    try:
        write_direct([torch.zeros(4096)], probe)
    except DirectIOUnavailable as exc:
        return str(exc)
    os.remove(probe)
    return None


def _file_size(state: dict[str, torch.Tensor], directory: str) -> int:
    """Bytes of ``save_file``'s file for ``state``: what the disk limits write."""
    probe = os.path.join(directory, "size-probe.ckpt")
    save_file(probe, state)
    size = os.path.getsize(probe)
    os.remove(probe)
    return size


def _savers(
    state: dict[str, torch.Tensor], directory: str, size: int, direct: bool
) -> dict[str, tuple[Callable[[], object], str]]:
    """``{name: (action, file it writes)}`` for every save contender."""
    trainer, _model = _attached_trainer(state, directory)
    tensors = list(state.values())
    path = {
        name: os.path.join(directory, f"{name}.ckpt")
        for name in ("naive", "early", "direct", "torch", "stepstone", "trainer")
    }
    savers: dict[str, tuple[Callable[[], object], str]] = {
        NAIVE: (lambda: write_naive(tensors, path["naive"], size), path["naive"]),
        DISK_LIMITS[0]: (lambda: write_early_writeback(tensors, path["early"], size), path["early"]),
    }
    if direct:
        savers[DISK_LIMITS[1]] = (lambda: write_direct(tensors, path["direct"], size), path["direct"])
    savers["torch.save+fsync"] = (lambda: _torch_save(state, path["torch"]), path["torch"])
    savers["stepstone save_file"] = (lambda: save_file(path["stepstone"], state), path["stepstone"])
    savers["trainer.save_checkpoint"] = (lambda: trainer.save_checkpoint(path["trainer"]), path["trainer"])
    return savers


def _measure(
    state: dict[str, torch.Tensor], directory: str, repeats: int, size: int, direct: bool
) -> dict[str, list[float]]:
    savers = _savers(state, directory, size, direct)
    files = {name: target for name, (_, target) in savers.items()}
    loaders: dict[str, tuple[Callable[[], object], str]] = {
        "torch.load": (lambda: torch.load(files["torch.save+fsync"], weights_only=True), "torch.save+fsync"),
        "stepstone load_file": (lambda: load_file(files["stepstone save_file"]), "stepstone save_file"),
        "load_from_checkpoint": (
            lambda: _Big.load_from_checkpoint(files["trainer.save_checkpoint"]),
            "trainer.save_checkpoint",
        ),
    }
    times: dict[str, list[float]] = {}
    for _ in range(repeats):  # alternate so that drifting disk/VM speed affects all alike
        for name, (action, target) in savers.items():
            times.setdefault(name, []).append(_timed(action, remove=target))
        for name, (action, _saver) in loaders.items():
            times.setdefault(f"{name} (warm)", []).append(_timed(action))
        for name, (action, saver) in loaders.items():
            _evict(files[saver])
            times.setdefault(f"{name} (cold)", []).append(_timed(action))
    return times


def _report(
    times: dict[str, list[float]], nbytes: int, size: int, where: str, direct_reason: str | None
) -> None:
    best = {name: min(values) for name, values in times.items()}
    limit_name = min((n for n in DISK_LIMITS if n in best), key=best.__getitem__)
    best["disk limit (best of the two)"] = best[limit_name]
    saves = [*DISK_LIMITS, NAIVE, "torch.save+fsync", "stepstone save_file", "trainer.save_checkpoint"]
    rows = [(name, "disk limit (best of the two)", "torch.save+fsync") for name in saves]
    for kind in ("warm", "cold"):
        rows += [(f"{name} ({kind})", None, f"torch.load ({kind})") for name in _LOADS]
    print(f"\nfolder: {where}")
    print(
        f"state: {nbytes / GIB:.2f} GiB of tensors, save_file's file {size} bytes (what the disk limits write)"
    )
    if direct_reason is not None:
        print(f"disk (O_DIRECT): unavailable ({direct_reason})")
    print(f"disk limit = the faster of the available two: {limit_name}")
    print(f"best of {len(next(iter(times.values())))}; ratios are speed (reference time / this time)")
    print(f"{'operation':30} {'seconds':>8} {'GB/s':>7} {'vs disk limit':>14} {'vs torch':>9}")
    lines = []
    for name, disk_ref, torch_ref in rows:
        if name not in best:
            continue
        vs_disk = best[disk_ref] / best[name] if disk_ref else None
        vs_torch = best[torch_ref] / best[name] if torch_ref and torch_ref in best else None
        text_disk = f"{vs_disk:14.2f}" if vs_disk is not None else " " * 14
        text_torch = f"{vs_torch:9.2f}" if vs_torch is not None else " " * 9
        print(f"{name:30} {best[name]:8.3f} {size / best[name] / 1e9:7.2f} {text_disk} {text_torch}")
        lines.append(
            {
                "bench": "save_load",
                "type": "measurement",
                "op": name,
                "seconds": round(best[name], 4),
                "median_s": round(statistics.median(times[name]), 4),
                "samples_s": [round(t, 4) for t in times[name]],
                "gb_per_s": round(size / best[name] / 1e9, 3),
                "vs_disk_limit": None if vs_disk is None else round(vs_disk, 3),
                "vs_torch": None if vs_torch is None else round(vs_torch, 3),
            }
        )
    print()
    for line in lines:
        print(json.dumps(line))
    info = {"bench": "save_load", "type": "summary", "filesystem": where, "disk_limit": limit_name}
    print(json.dumps({**info, "o_direct": direct_reason or "available", "file_bytes": size}))


_LOADS = ("torch.load", "stepstone load_file", "load_from_checkpoint")


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
        size = _file_size(state, directory)
        reason = _direct_reason(directory)
        times = _measure(state, directory, args.repeats, size, reason is None)
        _report(times, nbytes, size, filesystem_of(directory), reason)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
