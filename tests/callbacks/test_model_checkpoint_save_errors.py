"""A full disk during ``fit``: nothing committed is touched, and ``on_save_error`` decides whether training stops.

The disk is simulated by fault injection: ``os.write`` into the checkpoint directory fails with ENOSPC once
a byte budget is spent (chosen so that the failure lands at a given offset inside the first new save), and
the free-space preflight is exercised by making ``shutil.disk_usage`` report a small disk.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from scripted import ScriptedModel, loader, trainer
from stepstone.callbacks import ModelCheckpoint
from stepstone.checkpoint import RunIndex, verify_file
from stepstone.checkpoint import commit as commit_module
from stepstone.checkpoint.commit import is_temp_name
from stepstone.errors import MisconfigurationException


def _callback(directory: Path, **kwargs: Any) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=directory, monitor="train_loss", every_n_train_steps=1, save_top_k=2, save_last=True, **kwargs
    )


def _first_run(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Three committed steps; returns the directory and the bytes of every file in it (index included)."""
    directory = tmp_path / "ckpts"
    trainer(tmp_path, [_callback(directory)], max_steps=3).fit(ScriptedModel(), loader())
    return directory, {name: (directory / name).read_bytes() for name in os.listdir(directory)}


def _fill_disk(directory: Path, budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes into ``directory`` fail with ENOSPC once ``budget`` bytes were written (short writes included)."""
    real, spent = os.write, [0]

    def write(fd: int, data: Any) -> int:
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory)):
            return real(fd, data)
        if spent[0] >= budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        count = real(fd, memoryview(data)[: budget - spent[0]])
        spent[0] += count
        return count

    monkeypatch.setattr(os, "write", write)


def _assert_untouched(directory: Path, before: dict[str, bytes], callback: ModelCheckpoint) -> None:
    names = sorted(os.listdir(directory))
    assert not [n for n in names if is_temp_name(n)], "a temporary file was left behind"
    assert names == sorted(before)
    assert all((directory / name).read_bytes() == data for name, data in before.items())
    assert [r.name for r in RunIndex(directory).entries()] == sorted(n for n in before if n.endswith(".ckpt"))
    for path in [callback.best_model_path, callback.last_model_path, *callback.best_k_models]:
        assert verify_file(path).step is not None  # the state names committed files only


@pytest.mark.parametrize("offset", [0, 1000, 30_000])
def test_disk_full_stops_training_by_default_and_keeps_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: int
) -> None:
    directory, before = _first_run(tmp_path)
    callback = _callback(directory)
    _fill_disk(directory, offset, monkeypatch)
    with pytest.raises(OSError) as error:
        trainer(tmp_path, [callback], max_steps=6).fit(ScriptedModel(), loader(), ckpt_path="last")
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    _assert_untouched(directory, before, callback)


def test_disk_full_with_warn_trains_on_loudly_and_resumes_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, before = _first_run(tmp_path)
    callback = _callback(directory, on_save_error="warn")
    _fill_disk(directory, 1000, monkeypatch)
    fit = trainer(tmp_path, [callback], max_steps=6)
    with pytest.warns(
        UserWarning, match=r"CHECKPOINT NOT SAVED at epoch \d, step \d: .*No space left"
    ) as caught:
        fit.fit(ScriptedModel(), loader(), ckpt_path="last")
    assert fit.global_step == 6
    assert sum("CHECKPOINT NOT SAVED" in str(w.message) for w in caught) == 4  # steps 4, 5, 6 and the end
    monkeypatch.undo()
    _assert_untouched(directory, before, callback)
    resumed = trainer(tmp_path, [_callback(directory)], max_steps=5)  # space freed: resume from step 3
    resumed.fit(ScriptedModel(), loader(), ckpt_path="last")
    assert verify_file(directory / "last.ckpt").step == 5


@pytest.mark.parametrize("async_save", [False, True])
def test_free_space_preflight_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, async_save: bool
) -> None:
    directory, before = _first_run(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(commit_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    callback = _callback(directory, async_save=async_save)
    with pytest.raises(OSError, match=r"needs about 0\.\d MB and .* has 0\.0 MB free") as error:
        trainer(tmp_path, [callback], max_steps=6).fit(ScriptedModel(), loader(), ckpt_path="last")
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    _assert_untouched(directory, before, callback)


def test_warn_never_hides_programming_errors(tmp_path: Path) -> None:
    class Unsafe:
        pass

    class Model(ScriptedModel):
        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["extra"] = Unsafe()

    callback = _callback(tmp_path / "ckpts", on_save_error="warn")
    with warnings.catch_warnings(), pytest.raises(TypeError, match="not weights_only-safe"):
        warnings.simplefilter("error")
        trainer(tmp_path, [callback], max_steps=2).fit(Model(), loader())


def test_on_save_error_is_validated() -> None:
    with pytest.raises(MisconfigurationException, match=r"on_save_error='ignore'.*'raise'.*'warn'"):
        ModelCheckpoint(on_save_error="ignore")  # type: ignore[arg-type]
