"""Restoring a checkpoint into a Trainer: the errors a user sees (compared with Lightning 2.6.6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from both_frameworks import FRAMEWORKS, data, framework, module_class, quiet


def _resume_from_weights_only(name: str, root: Path) -> tuple[int, int]:
    pl, model_checkpoint = framework(name)
    callback = model_checkpoint(dirpath=root / "ckpt", save_weights_only=True, every_n_train_steps=3)
    options = {"default_root_dir": root, "logger": False, "enable_progress_bar": False, "max_epochs": 2}
    with quiet():
        torch.manual_seed(0)
        pl.Trainer(callbacks=[callback], **options).fit(module_class(name)(), data(2))
        resumed = pl.Trainer(**options)
        with pytest.raises(KeyError, match="only"):
            resumed.fit(module_class(name)(), data(2), ckpt_path=callback.best_model_path)
    return resumed.global_step, resumed.current_epoch


def test_resuming_fit_from_a_weights_only_file_raises_key_error_after_restoring_the_loops(
    tmp_path: Path,
) -> None:
    seen = {name: _resume_from_weights_only(name, tmp_path / name) for name in FRAMEWORKS}
    assert seen["stepstone"] == seen["lightning"] == (3, 1)
