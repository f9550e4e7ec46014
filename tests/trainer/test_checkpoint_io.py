"""Restoring a checkpoint into a Trainer: the errors a user sees (compared with Lightning 2.6.6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from both_frameworks import FRAMEWORKS, data, framework, module_class, quiet


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_resuming_fit_from_a_weights_only_file_raises_key_error(tmp_path: Path, name: str) -> None:
    pl, model_checkpoint = framework(name)
    callback = model_checkpoint(dirpath=tmp_path / "ckpt", save_weights_only=True)
    options = {"default_root_dir": tmp_path, "logger": False, "enable_progress_bar": False, "max_epochs": 1}
    with quiet():
        torch.manual_seed(0)
        pl.Trainer(callbacks=[callback], **options).fit(module_class(name)(), data(2))
        with pytest.raises(KeyError, match="only"):
            pl.Trainer(**options).fit(module_class(name)(), data(2), ckpt_path=callback.best_model_path)
