"""ModelCheckpoint against Lightning 2.6.6 (last at train end, step triggers): the same program under both.

stepstone refreshes ``last`` at every trigger on purpose (Lightning 2.6: only with a top-k save), so tests
of the top-k decisions leave last files out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from both_frameworks import FRAMEWORKS, data, framework, module_class, quiet, resume


def test_resumed_run_that_saved_nothing_still_leaves_its_own_last(tmp_path: Path) -> None:
    # No trigger at all (every_n_epochs=0): only on_train_end writes last. The second run resumes from a file
    # written at the final batch end and trains no further step; Lightning still writes its own last then, a
    # -v1 sibling of the first run's last.ckpt (the resumed state names no last file). Regression: stepstone
    # skipped it because the restored step counted as already saved.
    observed = {}
    for name in FRAMEWORKS:
        observed[name] = resume(
            name,
            tmp_path / name,
            {"max_epochs": 1},
            {"max_epochs": 1},
            save_at=("batch", 0, 3),
            checkpoint={"every_n_epochs": 0, "save_last": True},
        )
    assert observed["stepstone"]["files"] == observed["lightning"]["files"]
    assert observed["lightning"]["files"][1] == ["last-v1.ckpt", "last.ckpt"]


def _fit_files(name: str, root: Path, checkpoint: dict[str, Any], **trainer: Any) -> list[str]:
    pl, model_checkpoint = framework(name)
    dirpath = root / "ckpt"
    with quiet():
        torch.manual_seed(0)
        fitter = pl.Trainer(
            default_root_dir=root,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            callbacks=[model_checkpoint(dirpath=dirpath, **checkpoint)],
            **trainer,
        )
        fitter.fit(module_class(name, validate=True)(), data(4))
    return sorted(os.listdir(dirpath)) if dirpath.is_dir() else []


@pytest.mark.parametrize("save_on_train_epoch_end", [None, True, False])
def test_step_save_waiting_for_a_validation_metric_follows_lightning(
    tmp_path: Path, save_on_train_epoch_end: bool | None
) -> None:
    # Every 2 steps, monitoring a metric only validation logs (at the epoch end). Where checks run at the
    # training epoch end (None resolves so here), Lightning 2.6 drops the deferred save: no file in epoch 0;
    # in epoch 1 the step trigger saves with the value of epoch 0's validation. Regression: stepstone saved
    # the deferred trigger after validation.
    checkpoint = {
        "monitor": "v",
        "every_n_train_steps": 2,
        "save_last": True,
        "save_on_train_epoch_end": save_on_train_epoch_end,
    }
    observed = {
        name: [_fit_files(name, tmp_path / name / str(n), checkpoint, max_epochs=n) for n in (1, 2)]
        for name in FRAMEWORKS
    }
    assert observed["stepstone"] == observed["lightning"]


TRAIN_VALUES = [0.5, 0.375, float("nan"), 0.625, 0.125]


def _metric_module(name: str) -> Any:
    """Logs ``t`` from ``TRAIN_VALUES`` by global_step in training and ``v`` (the weights') in validation."""
    pl, _ = framework(name)

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("t", TRAIN_VALUES[self.global_step % len(TRAIN_VALUES)])
            return self.layer(batch[0]).sum()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("v", float(self.global_step % 3))

        def val_dataloader(self) -> Any:
            return data(1, seed=1)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Model()


def _fit_metric_module(name: str, root: Path, checkpoint: dict[str, Any], batches: int, **kwargs: Any) -> Any:
    """Fit ``_metric_module`` with one ModelCheckpoint(dirpath=root, **checkpoint); returns the callback."""
    pl, model_checkpoint = framework(name)
    callback = model_checkpoint(dirpath=root, **checkpoint)
    with quiet():
        fitter = pl.Trainer(
            default_root_dir=root,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            num_sanity_val_steps=0,
            callbacks=[callback],
            **kwargs,
        )
        fitter.fit(_metric_module(name), data(batches))
    return callback


def _saved_steps(name: str, root: Path, checkpoint: dict[str, Any], batches: int, **kwargs: Any) -> Any:
    callback = _fit_metric_module(name, root, checkpoint, batches, **kwargs)
    # Top-k files only: last differs on purpose (refreshed at every trigger, see the module docstring).
    topk = [p for p in sorted(root.glob("*.ckpt")) if not p.name.startswith("last")]
    return {p.name: torch.load(p, weights_only=False)["global_step"] for p in topk}, os.path.basename(
        callback.best_model_path
    )


@pytest.mark.parametrize(
    ("checkpoint", "batches", "trainer"),
    [
        # A trigger at global_step 0 (accumulating) whose metric is missing waits for validation, although
        # that step counts as saved: Lightning decides to wait first (then saves it after validation).
        (
            {"monitor": "v", "every_n_train_steps": 3, "save_on_train_epoch_end": False, "save_top_k": 3},
            3,
            {"accumulate_grad_batches": 3, "max_epochs": 3, "check_val_every_n_epoch": 2},
        ),
        # Lightning's rule for a last-batch trigger: with check_val_every_n_epoch=None it waits for a validation
        # that val_check_interval=6 batches does not run then, so the save never happens.
        (
            {"monitor": "t", "mode": "max", "every_n_train_steps": 3, "save_on_train_epoch_end": False},
            3,
            {
                "accumulate_grad_batches": 3,
                "max_epochs": 3,
                "check_val_every_n_epoch": None,
                "val_check_interval": 6,
            },
        ),
        # A refreshed last (no top-k save, save_last="link") does not count the step as saved: Lightning
        # would have linked the old file, so the next batch at the same global_step may still save top-k.
        (
            {"monitor": "t", "every_n_train_steps": 2, "save_on_train_epoch_end": True, "save_last": "link"},
            4,
            {"accumulate_grad_batches": 3, "max_epochs": 4, "max_steps": 12, "limit_val_batches": 0},
        ),
    ],
)
def test_step_triggers_save_at_lightnings_steps(
    tmp_path: Path, checkpoint: dict[str, Any], batches: int, trainer: dict[str, Any]
) -> None:
    observed = {
        name: _saved_steps(name, tmp_path / name, checkpoint, batches, **trainer) for name in FRAMEWORKS
    }
    assert observed["stepstone"] == observed["lightning"]


def test_linked_last_is_refreshed_at_every_epoch_end_check_like_lightning(tmp_path: Path) -> None:
    # save_last="link": once anything was saved, Lightning refreshes last at every epoch-end check (here after
    # validation at epoch 2, step 6) although only every_n_train_steps=5 triggers. Regression: stepstone wrote
    # it only when training ended ("epoch": 3 instead of 2).
    checkpoint = {
        "monitor": "t",
        "every_n_train_steps": 5,
        "save_top_k": 0,
        "save_last": "link",
        "save_on_train_epoch_end": False,
    }
    observed = {}
    for name in FRAMEWORKS:
        root = tmp_path / name
        _fit_metric_module(name, root, checkpoint, 2, max_epochs=3, check_val_every_n_epoch=3)
        stored = {p.name: torch.load(p, weights_only=False) for p in sorted(root.glob("*.ckpt"))}
        observed[name] = {n: (c["epoch"], c["global_step"]) for n, c in stored.items()}
    assert observed["stepstone"] == observed["lightning"] == {"last.ckpt": (2, 6)}


def test_resumed_run_triggers_again_at_the_restored_step_on_a_new_batch(tmp_path: Path) -> None:
    # The resumed file was written at the last batch of epoch 1 (step 4). With accumulation, epoch 2's first
    # batch ends at step 4 again: Lightning saves there (a second file for step 4). Regression: stepstone
    # held the restored step as saved for the whole run instead of only for the restored batch's hooks.
    observed = {}
    for name in FRAMEWORKS:
        observed[name] = resume(
            name,
            tmp_path / name,
            {"max_epochs": 2, "accumulate_grad_batches": 2},
            {"max_epochs": 3, "accumulate_grad_batches": 2},
            checkpoint={"every_n_train_steps": 4, "save_top_k": -1},
            resume_file="epoch=1-step=4.ckpt",
        )
    assert observed["stepstone"]["files"] == observed["lightning"]["files"]
    assert "epoch=2-step=4.ckpt" in observed["lightning"]["files"][1]
