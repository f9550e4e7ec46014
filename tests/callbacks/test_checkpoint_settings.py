"""ModelCheckpoint's folder preparation: only global rank 0 clears the temporaries a crashed run left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import stepstone as L
from stepstone.callbacks.checkpoint_settings import prepare_folder

# A temporary whose writer's pid (999999999) is not alive on this host: stale here, but on a shared
# filesystem it may be another node's in-flight save.
FOREIGN_TEMP = ".epoch=0-step=4.ckpt.tmp-999999999-0123abcd"


def _trainer() -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)


def test_global_rank_zero_sweeps_a_dead_writers_temporary(tmp_path: Path) -> None:
    (tmp_path / FOREIGN_TEMP).write_bytes(b"partial")
    prepare_folder(_trainer(), str(tmp_path), save_top_k=1)
    assert os.listdir(tmp_path) == []


def test_a_non_zero_rank_leaves_a_temporary_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / FOREIGN_TEMP).write_bytes(b"partial")
    monkeypatch.setattr(L.Trainer, "global_rank", property(lambda self: 8))
    trainer = _trainer()
    assert not trainer.is_global_zero
    prepare_folder(trainer, str(tmp_path), save_top_k=1)
    assert os.listdir(tmp_path) == [FOREIGN_TEMP]
