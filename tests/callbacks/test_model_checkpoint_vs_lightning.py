"""ModelCheckpoint against Lightning 2.6.6: the same tiny program under both, same files, best and last.

Where stepstone differs on purpose (``last`` refreshed at every trigger), the test says so and checks
stepstone's own rule instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as PL
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as PLModelCheckpoint
from lightning.pytorch.callbacks.model_checkpoint import warning_cache as pl_warning_cache

import stepstone as L
from scripted import loader
from stepstone.callbacks import ModelCheckpoint

VAL_LOSSES = [0.5, 0.3, 0.4, 0.35]


def _module(framework: ModuleType) -> Any:
    """The same LightningModule for either framework: ``val_loss`` follows ``VAL_LOSSES``."""

    class Scripted(framework.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.tensor(VAL_LOSSES[min(self.current_epoch, len(VAL_LOSSES) - 1)]))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Scripted()


def run(framework: ModuleType, root: Path, cb: Any, *, validate: bool = True, **kwargs: Any) -> Any:
    """Fit the scripted module with ``cb`` under ``framework`` (``PL`` or ``L``); returns the trainer."""
    kwargs.setdefault("max_epochs", 3)
    trainer = framework.Trainer(
        default_root_dir=root,
        callbacks=[cb],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )
    trainer.fit(_module(framework), loader(), loader() if validate else None)
    return trainer


def on_disk(directory: Path) -> dict[str, int]:
    """Checkpoint name -> the global step stored in it (links followed; a dangling link is -1)."""
    found = {}
    for path in sorted(directory.rglob("*.ckpt")):
        step = torch.load(path, weights_only=False)["global_step"] if path.exists() else -1
        found[path.relative_to(directory).as_posix()] = step
    return found


def names(cb: Any, directory: Path) -> tuple[str, str]:
    rel = lambda p: os.path.relpath(p, directory) if p else ""  # noqa: E731
    return rel(cb.best_model_path), rel(cb.last_model_path)


@pytest.fixture(autouse=True)
def _quiet_lightning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*(treespec|num_workers|LeafSpec).*")
        yield


# --- templated ``last`` names ----------------------------------------------------------------------------
@pytest.mark.parametrize("save_last", [True, "link"])
@pytest.mark.parametrize("last_name", ["{epoch}-last", "last-{epoch}"])
def test_templated_last_name_keeps_one_file_like_lightning(
    tmp_path: Path, save_last: Any, last_name: str
) -> None:
    # save_top_k=-1: Lightning refreshes last at every epoch too, so both frameworks must agree exactly.
    observed = []
    for framework, cls in ((PL, PLModelCheckpoint), (L, ModelCheckpoint)):
        directory = tmp_path / framework.__name__
        cb = cls(dirpath=directory, monitor="val_loss", save_top_k=-1, save_last=save_last)
        cb.CHECKPOINT_NAME_LAST = last_name
        run(framework, tmp_path / f"root-{framework.__name__}", cb)
        observed.append((on_disk(directory), names(cb, directory)))
    assert observed[0] == observed[1]
    last = observed[1][1][1]
    assert last == last_name.replace("{epoch}", "epoch=2") + ".ckpt"
    assert [n for n in observed[1][0] if "last" in n] == [last]


@pytest.mark.parametrize("save_last", [True, "link"])
@pytest.mark.parametrize("async_save", [False, True])
def test_templated_last_name_never_piles_up_when_top_k_skips(
    tmp_path: Path, save_last: Any, async_save: bool
) -> None:
    # Epoch 2 is not in the top 1: stepstone still refreshes last (deliberately), and the earlier
    # '{epoch}-last' files go (Lightning keeps epoch=1-last with save_last=True, and with 'link' leaves a
    # dangling epoch=0-last link behind).
    cb = ModelCheckpoint(
        dirpath=tmp_path / "c", monitor="val_loss", save_top_k=1, save_last=save_last, async_save=async_save
    )
    cb.CHECKPOINT_NAME_LAST = "{epoch}-last"
    run(L, tmp_path, cb, max_epochs=4)
    assert on_disk(tmp_path / "c") == {"epoch=1-step=8.ckpt": 8, "epoch=3-last.ckpt": 16}
    assert names(cb, tmp_path / "c") == ("epoch=1-step=8.ckpt", "epoch=3-last.ckpt")


# --- a monitored key that is not logged ------------------------------------------------------------------
def _fit_observing(framework: ModuleType, cls: Any, root: Path, **kwargs: Any) -> dict[str, Any]:
    """What a user sees: the error raised (or None), steps trained, warnings about the monitor, files."""
    trainer_kwargs = {k: kwargs.pop(k) for k in ("limit_val_batches", "val_check_interval") if k in kwargs}
    validate = kwargs.pop("validate", True)
    cb = cls(dirpath=root / "c", save_top_k=1, **kwargs)
    pl_warning_cache.clear()  # Lightning warns once per message per process
    trainer = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer = run(framework, root, cb, validate=validate, **trainer_kwargs)
            error = None
        except Exception as raised:
            error = type(raised).__name__
    monitor_warnings = {str(w.message).replace("`", "") for w in caught if "monitored key" in str(w.message)}
    return {
        "error": error,
        "global_step": trainer.global_step if trainer is not None else None,
        "warned": sorted(m.split(" HINT")[0] for m in monitor_warnings),
        "files": sorted(on_disk(root / "c")) if (root / "c").exists() else [],
        "best": cb.best_model_path,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"monitor": "val_loss", "limit_val_batches": 0, "save_last": True},  # validation disabled
        {"monitor": "val_loss", "validate": False},  # no validation data
        {"monitor": "val_lss", "save_on_train_epoch_end": False},  # typo: raised after the first validation
        {"monitor": "val_lss", "val_check_interval": 0.5},  # typo: raised after the first (mid-epoch) one
        {"monitor": "val_lss"},  # typo: raised at the first training-epoch-end check, after validation
    ],
)
def test_missing_monitor_warns_or_raises_where_lightning_does(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    pl = _fit_observing(PL, PLModelCheckpoint, tmp_path / "pl", **dict(kwargs))
    ss = _fit_observing(L, ModelCheckpoint, tmp_path / "ss", **dict(kwargs))
    assert ss == pl
    assert (pl["error"] is None) == (kwargs["monitor"] == "val_loss")
    if pl["error"] is None:
        assert ss["global_step"] == 12 and ss["warned"]


# --- two callbacks with one state_key --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "second", "refused"),
    [
        ({"monitor": "val_loss", "dirpath": "a"}, {"monitor": "val_loss", "dirpath": "b"}, True),
        ({"dirpath": "a"}, {"dirpath": "b", "save_top_k": -1}, True),  # save_top_k is not in the key
        ({"monitor": "val_loss"}, {"monitor": "val_loss", "mode": "max"}, False),
        ({"every_n_epochs": 1}, {"every_n_train_steps": 2}, False),
    ],
)
def test_same_state_key_is_refused_at_construction_like_lightning(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], refused: bool
) -> None:
    outcomes = []
    for framework, cls in ((PL, PLModelCheckpoint), (L, ModelCheckpoint)):
        callbacks = [
            cls(**{**kw, "dirpath": tmp_path / kw["dirpath"]} if "dirpath" in kw else kw)
            for kw in (first, second)
        ]
        try:
            framework.Trainer(callbacks=callbacks, logger=False, default_root_dir=tmp_path)
            outcomes.append(None)
        except RuntimeError as error:
            outcomes.append(str(error))
    assert (outcomes[0] is not None) == (outcomes[1] is not None) == refused
    if refused:
        assert outcomes[1] is not None and "callbacks[0] and callbacks[1]" in outcomes[1]
        assert (
            "HINT: The `callback.state_key` must be unique among all callbacks in the Trainer." in outcomes[1]
        )


def test_same_state_key_check_covers_any_stateful_callback_but_not_stateless_ones() -> None:
    class Stateful(L.Callback):
        def state_dict(self) -> dict[str, Any]:
            return {"n": 1}

    with pytest.raises(RuntimeError, match=r"type `Stateful`: callbacks\[0\] and callbacks\[2\]"):
        L.Trainer(callbacks=[Stateful(), L.Callback(), Stateful()], logger=False)
    L.Trainer(callbacks=[L.Callback(), L.Callback()], logger=False)  # nothing stored: no clash


# --- dirpath="" ------------------------------------------------------------------------------------------
def test_empty_dirpath_gives_bare_names_in_the_working_directory_like_lightning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    observed = []
    for framework, cls in ((PL, PLModelCheckpoint), (L, ModelCheckpoint)):
        cwd = tmp_path / framework.__name__
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        cb = cls(dirpath="", monitor="val_loss")
        metrics = {"epoch": torch.tensor(1), "step": torch.tensor(2)}
        assert cb.format_checkpoint_name(metrics) == "epoch=1-step=2.ckpt"
        run(framework, tmp_path / f"root-{framework.__name__}", cb)
        # Lightning keeps best_model_path relative ('epoch=1-step=8.ckpt'); stepstone names the same file
        # absolutely (see ModelCheckpoint.setup).
        observed.append((on_disk(cwd), os.path.relpath(os.path.abspath(cb.best_model_path), cwd)))
    assert observed[0] == observed[1] == ({"epoch=1-step=8.ckpt": 8}, "epoch=1-step=8.ckpt")


# --- what last.ckpt holds with save_top_k=0 --------------------------------------------------------------
def test_last_with_top_k_zero_resumes_like_lightning(tmp_path: Path) -> None:
    # Deliberate difference: stepstone writes last at every trigger, so after max_epochs=4 it holds the state
    # of the last epoch-end trigger ("epoch": 3, the epoch that produced it). Lightning writes it only in
    # on_train_end, once the epoch counter has moved on ("epoch": 4). Same step, same state: a resume
    # continues identically.
    stored, resumed = [], []
    save_last = "link"  # True gives the same files (there is no top-k file to link to)
    for framework, cls in ((PL, PLModelCheckpoint), (L, ModelCheckpoint)):
        directory = tmp_path / framework.__name__
        run(framework, tmp_path, cls(dirpath=directory, save_top_k=0, save_last=save_last), max_epochs=4)
        stored.append(torch.load(directory / "last.ckpt", weights_only=False)["epoch"])
        assert on_disk(directory) == {"last.ckpt": 16}

        class Batches(framework.Callback):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                self.seen: list[tuple[int, int]] = []

            def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
                self.seen.append((trainer.current_epoch, idx))

        batches = Batches()
        trainer = framework.Trainer(
            default_root_dir=tmp_path,
            callbacks=[cls(dirpath=directory, save_top_k=0, save_last=save_last), batches],
            max_epochs=5,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(_module(framework), loader(), loader(), ckpt_path=directory / "last.ckpt")
        resumed.append((batches.seen, trainer.global_step, trainer.current_epoch))
    assert stored == [4, 3]
    assert resumed[0] == resumed[1] == ([(4, 0), (4, 1), (4, 2), (4, 3)], 20, 5)
