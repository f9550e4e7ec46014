"""ModelCheckpoint against Lightning 2.6.6 (last at train end, deferred step saves): the same program under both."""

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
