"""One tiny training program, run the same way under stepstone and under Lightning 2.6.6.

The user-side code is identical for both frameworks; only the imports differ (:class:`Framework`). The program
records what a user can observe: steps, epochs, the batches (and sample ids) trained, optimizer steps, when
validation ran, files on disk with the ``epoch``/``global_step`` inside each checkpoint, every
ModelCheckpoint's public attributes, returned metrics, raised exception types and the final weights.

Flows, each a chain of runs in its own root directory:

* ``ab``: ``fit`` → ``trainer.save_checkpoint`` → ``validate``/``test`` with ``ckpt_path="best"`` → a new Trainer
  with a larger ``max_epochs``/``max_steps`` continues with ``fit(ckpt_path=final)``.
* ``c``: ``fit`` stopped early (``max_steps`` or ``trainer.should_stop`` from a callback) that also calls
  ``trainer.save_checkpoint`` inside ``on_train_batch_end`` → a new Trainer resumes from a file ModelCheckpoint
  wrote, then (from the same files on disk) another resumes from the mid-epoch file.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import math
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from compat.differential.configs import TRAIN_KEY, VAL_KEY, Config

Observation = dict[str, Any]
LAST_STEMS = (
    "last",
    "final-",
    "latest",
)  # the CHECKPOINT_NAME_LAST values configs.py uses (also "{epoch}-last")


@dataclass(frozen=True)
class Framework:
    """The names the user-side code takes from a framework."""

    name: str
    Trainer: Any
    LightningModule: Any
    Callback: Any
    ModelCheckpoint: Any
    CSVLogger: Any


def framework(name: str) -> Framework:
    """``"lightning"`` (Lightning 2.6.6, the oracle) or ``"stepstone"``."""
    pkg = importlib.import_module(name)
    base = "lightning.pytorch" if name == "lightning" else name
    callbacks = importlib.import_module(f"{base}.callbacks")
    loggers = importlib.import_module(f"{base}.loggers")
    for logger_name in ("lightning.pytorch", "lightning.fabric", "stepstone"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    return Framework(
        name, pkg.Trainer, pkg.LightningModule, pkg.Callback, callbacks.ModelCheckpoint, loggers.CSVLogger
    )


def table_value(table: list[float], index: int) -> float:
    return table[index % len(table)]


class CountingSGD(torch.optim.SGD):
    """SGD that counts its steps into the run's record."""

    record: dict[str, Any]

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        self.record["optimizer_steps"] += 1
        return super().step(closure)


_MODULES: dict[str, Any] = {}


def _module_class(fw: Framework) -> Any:
    if fw.name in _MODULES:
        return _MODULES[fw.name]

    class Module(fw.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self, config: Config, record: dict[str, Any]) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.cfg = config
            self.record = record
            self.log_loss = False

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y, ids = batch
            self.record["trained"].append([self.current_epoch, batch_idx, ids.tolist()])
            value = table_value(self.cfg["train_table"], self.trainer.global_step)
            lg = self.cfg["logging"]
            self.log(TRAIN_KEY, value, on_step=lg["train_on_step"], on_epoch=lg["train_on_epoch"])
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y, _ = batch
            step, epoch = self.trainer.global_step, self.current_epoch
            self.log(VAL_KEY, table_value(self.cfg["val_table"], 3 * step + epoch))
            if self.log_loss:  # only in validate(): weights decide it, so it tells which file was loaded
                self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            x, y, _ = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self) -> Any:
            opt = CountingSGD(self.parameters(), lr=0.1, momentum=0.5)
            opt.record = self.record
            return opt

    _MODULES[fw.name] = Module
    return Module


def _recorder(
    fw: Framework, record: dict[str, Any], stop_at: int | None, save_at: int | None, save_path: str
) -> Any:
    class Recorder(fw.Callback):  # type: ignore[misc, name-defined]
        saved = False

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            record["metrics_at_start"] = sorted(trainer.callback_metrics)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                record["sanity_runs"] += 1
            else:
                record["val_runs"].append([trainer.global_step, trainer.current_epoch])

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if save_at is not None and trainer.global_step == save_at and not self.saved:
                self.saved = True
                trainer.save_checkpoint(save_path)
            if stop_at is not None and trainer.global_step >= stop_at:
                trainer.should_stop = True

    return Recorder()


def _data(config: Config) -> tuple[TensorDataset, TensorDataset]:
    d = config["data"]
    gen = torch.Generator().manual_seed(config["seed"])
    n, m = d["n_train"] * d["batch_size"], d["n_val"] * d["batch_size"]
    x, xv = torch.randn(n, 2, generator=gen), torch.randn(m, 2, generator=gen)
    train = TensorDataset(x, x.sum(1, keepdim=True), torch.arange(n))
    val = TensorDataset(xv, xv.sum(1, keepdim=True), torch.arange(1000, 1000 + m))
    return train, val


def _number(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    f = float(value.item() if isinstance(value, torch.Tensor) else value)
    return repr(f) if math.isnan(f) or math.isinf(f) else round(f, 6)


def _rel(path: Any, root: str) -> Any:
    if not path:
        return path
    path = os.fspath(path)
    return os.path.relpath(path, root) if path.startswith(root) else path


def _checkpoint_state(cb: Any, root: str) -> Observation:
    return {
        "dirpath": _rel(cb.dirpath, root),
        "best_model_path": _rel(cb.best_model_path, root),
        "best_model_score": _number(cb.best_model_score),
        "kth_best_model_path": _rel(cb.kth_best_model_path, root),
        "kth_value": _number(cb.kth_value),
        "last_model_path": _rel(cb.last_model_path, root),
        "current_score": _number(cb.current_score),
        "best_k_models": {_rel(k, root): _number(v) for k, v in sorted(cb.best_k_models.items())},
    }


def _checkpoint_content(path: str) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a user sees this file as unreadable (or a dangling link)
        return {"load_error": type(exc).__name__}
    return {"epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}


def files_on_disk(root: str) -> dict[str, Any]:
    """Every file under ``root``: symlinks by target, checkpoints by the epoch/global_step inside."""
    found: dict[str, Any] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = {"link": os.readlink(path), **_checkpoint_content(path)}
            elif name.endswith(".ckpt"):
                found[rel] = _checkpoint_content(path)
            else:
                found[rel] = "file"
    return dict(sorted(found.items()))


def _callbacks(fw: Framework, config: Config, root: str) -> list[Any]:
    made = []
    for c in config["checkpoints"]:
        kwargs = {k: v for k, v in c.items() if k != "last_name"}
        kwargs["dirpath"] = None if c["dirpath"] is None else os.path.join(root, c["dirpath"])
        cb = fw.ModelCheckpoint(**kwargs)
        if c["last_name"] is not None:
            cb.CHECKPOINT_NAME_LAST = c["last_name"]
        made.append(cb)
    return made


@dataclass
class _Chain:
    fw: Framework
    config: Config
    root: str

    def loaders(self) -> tuple[DataLoader, DataLoader]:
        train, val = _data(self.config)
        bs = self.config["data"]["batch_size"]
        return DataLoader(train, batch_size=bs), DataLoader(val, batch_size=bs)

    def trainer(self, record: dict[str, Any], callbacks: list[Any], **overrides: Any) -> Any:
        t = {**self.config["trainer"], **overrides}
        logger = self.fw.CSVLogger(save_dir=self.root, name="logs") if t.pop("logger") == "csv" else False
        return self.fw.Trainer(
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=self.root,
            logger=logger,
            callbacks=callbacks,
            **t,
        )

    def module(self, record: dict[str, Any]) -> Any:
        torch.manual_seed(self.config["seed"])
        random.seed(self.config["seed"])
        return _module_class(self.fw)(self.config, record)


def _new_record() -> dict[str, Any]:
    return {"trained": [], "optimizer_steps": 0, "val_runs": [], "sanity_runs": 0, "metrics_at_start": None}


def _run_fit(
    chain: _Chain,
    ckpt_path: str | None = None,
    stop_at: int | None = None,
    save_at: int | None = None,
    **overrides: Any,
) -> tuple[Observation, Any]:
    """One ``fit`` in a new Trainer; returns its observation and the Trainer (None if it raised)."""
    record = _new_record()
    root = chain.root
    obs: Observation = {"ckpt_path": _rel(ckpt_path, root)}
    trainer = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            callbacks = _callbacks(chain.fw, chain.config, root)
            save_path = os.path.join(root, "manual", "mid.ckpt")
            callbacks.append(_recorder(chain.fw, record, stop_at, save_at, save_path))
            module = chain.module(record)
            trainer = chain.trainer(record, callbacks, **overrides)
            train, val = chain.loaders()
            use_val = chain.config["validation"] == "loader"
            trainer.fit(module, train, val if use_val else None, ckpt_path=ckpt_path)
            obs["error"] = None
        except Exception as exc:
            obs["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    obs["warnings"] = sorted({str(w.message).splitlines()[0][:120] for w in caught})
    obs.update(copy.deepcopy(record))  # validate()/test() on the same Trainer would add to it later
    if trainer is not None:
        obs["global_step"], obs["current_epoch"] = trainer.global_step, trainer.current_epoch
        obs["callback_metrics"] = {k: _number(v) for k, v in sorted(trainer.callback_metrics.items())}
        obs["checkpoints"] = [
            _checkpoint_state(cb, root)
            for cb in trainer.callbacks
            if isinstance(cb, chain.fw.ModelCheckpoint)
        ]
        obs["weights"] = [
            round(v, 5) for v in torch.cat([p.detach().flatten() for p in module.parameters()]).tolist()
        ]
    obs["files"] = files_on_disk(root)
    return obs, trainer


def _run_eval(chain: _Chain, trainer: Any, stage: str) -> Observation:
    obs: Observation = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = trainer.lightning_module
            model.log_loss = True
            _, val = chain.loaders()
            sink = io.StringIO()
            with (
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
            ):  # both print a metrics table
                result = getattr(trainer, stage)(model, val, ckpt_path="best")
            obs["returned"] = [{k: _number(v) for k, v in sorted(d.items())} for d in result]
            obs["error"] = None
        except Exception as exc:
            obs["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    obs["warnings"] = sorted({str(w.message).splitlines()[0][:120] for w in caught})
    return obs


def _flow_ab(fw: Framework, config: Config, root: str) -> dict[str, Observation]:
    chain = _Chain(fw, config, root)
    out: dict[str, Observation] = {}
    out["fit"], trainer = _run_fit(chain)
    if trainer is None or out["fit"]["error"] is not None:
        return out
    final = os.path.join(root, "manual", "final.ckpt")
    trainer.save_checkpoint(final)
    out["validate_best"] = _run_eval(chain, trainer, "validate")
    out["test_best"] = _run_eval(chain, trainer, "test")
    t = config["trainer"]
    extra = config["flows"]["continue_extra"]
    more: dict[str, Any] = {"max_epochs": t["max_epochs"] + extra}
    if t["max_steps"] != -1:
        more["max_steps"] = t["max_steps"] + extra * config["data"]["n_train"]
    out["continue"], _ = _run_fit(chain, ckpt_path=final, **more)
    return out


def resume_candidates(files: dict[str, Any]) -> list[str]:
    """Checkpoint files a ModelCheckpoint wrote as top-k files (not last files, not manual saves), in order."""
    picked = []
    for rel, info in files.items():
        stem = os.path.basename(rel)
        if rel.startswith(("manual", "logs")) or not rel.endswith(".ckpt") or "epoch" not in info:
            continue
        if stem.startswith(LAST_STEMS) or "-last" in stem:
            continue
        picked.append((info["global_step"], info["epoch"], rel))
    return [rel for *_, rel in sorted(picked)]


def _flow_c(fw: Framework, config: Config, root: str) -> dict[str, Observation]:
    chain = _Chain(fw, config, root)
    flows = config["flows"]
    out: dict[str, Observation] = {}
    stop_at = flows["stop_at"]
    if flows["stop_by"] == "max_steps":
        max_steps = config["trainer"]["max_steps"]
        limit = stop_at if max_steps == -1 else min(stop_at, max_steps)
        out["stop"], trainer = _run_fit(chain, save_at=flows["save_at"], max_steps=limit)
    else:
        out["stop"], trainer = _run_fit(chain, stop_at=stop_at, save_at=flows["save_at"])
    if trainer is None or out["stop"]["error"] is not None:
        return out
    backup = root + ".after-stop"
    shutil.copytree(root, backup, symlinks=True)
    candidates = resume_candidates(out["stop"]["files"])
    if candidates:
        source = candidates[flows["resume_pick"] % len(candidates)]
        out["resume_file"], _ = _run_fit(chain, ckpt_path=os.path.join(root, source))
    mid = os.path.join(root, "manual", "mid.ckpt")
    if os.path.exists(os.path.join(backup, "manual", "mid.ckpt")):
        shutil.rmtree(root)
        shutil.copytree(backup, root, symlinks=True)  # same absolute paths, so callback state restores fully
        out["resume_mid"], _ = _run_fit(chain, ckpt_path=mid)
    shutil.rmtree(backup)
    return out


def run_flow(fw: Framework, config: Config, workdir: str | Path) -> dict[str, Observation]:
    """Run every flow of ``config`` under ``fw`` inside ``workdir``.

    Args:
        fw: the framework (:func:`framework`).
        config: a configuration from :func:`compat.differential.configs.generate`.
        workdir: an empty directory; paths in the observations are relative to each flow's root in it.

    Returns:
        ``{run name: observation}`` for the runs that took place (``fit``, ``validate_best``, ``test_best``,
        ``continue``, ``stop``, ``resume_file``, ``resume_mid``).
    """
    workdir = os.path.realpath(workdir)  # Lightning resolves dirpaths with realpath
    out: dict[str, Observation] = {}
    for flow, runner in (("ab", _flow_ab), ("c", _flow_c)):
        root = os.path.join(workdir, flow)
        os.makedirs(root)
        out.update(runner(fw, config, root))
    return out
