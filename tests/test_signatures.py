"""Public signatures a CLI can read: annotations resolve at runtime and jsonargparse builds a parser from them."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

import pytest
from jsonargparse import ArgumentParser

import stepstone as L
import stepstone.callbacks
import stepstone.loggers
from stepstone.callbacks import ModelCheckpoint

PUBLIC_CLASSES = [
    L.Trainer,
    L.LightningModule,
    L.LightningDataModule,
    *(getattr(stepstone.callbacks, name) for name in stepstone.callbacks.__all__),
    *(getattr(stepstone.loggers, name) for name in stepstone.loggers.__all__),
]


def _own_public_functions(cls: type) -> list[tuple[str, Any]]:
    """``__init__`` and the public methods (hooks included) that stepstone itself defines on ``cls``."""
    found = []
    for name, function in inspect.getmembers(cls, inspect.isfunction):
        if (name == "__init__" or not name.startswith("_")) and function.__module__.startswith("stepstone"):
            found.append((name, function))
    return found


@pytest.mark.parametrize("cls", [c for c in PUBLIC_CLASSES if inspect.isclass(c)], ids=lambda c: c.__name__)
def test_annotations_resolve_at_runtime(cls: type) -> None:
    functions = _own_public_functions(cls)
    assert functions  # the class has something a CLI reads
    unresolved = {}
    for name, function in functions:
        try:
            typing.get_type_hints(function)
        except Exception as err:  # any failure to resolve is what the test reports
            unresolved[name] = f"{type(err).__name__}: {err}"
    assert unresolved == {}


def test_callback_hooks_are_covered() -> None:
    names = dict(_own_public_functions(L.Callback))
    assert typing.get_type_hints(names["on_train_batch_end"])["trainer"] is L.Trainer
    assert typing.get_type_hints(names["setup"])["pl_module"] is L.LightningModule


_CONFIG = """
trainer:
  max_epochs: 3
  default_root_dir: {root}
  enable_progress_bar: false
  callbacks:
    - class_path: stepstone.callbacks.ModelCheckpoint
      init_args:
        monitor: val_loss
        save_top_k: 2
        mode: max
checkpoint:
  monitor: train_loss
  save_top_k: 1
  every_n_train_steps: 5
  filename: "{{epoch}}-{{step}}"
"""


def test_jsonargparse_round_trips_a_yaml_config(tmp_path: Path) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(L.Trainer, "trainer")
    parser.add_class_arguments(ModelCheckpoint, "checkpoint")
    config = parser.parse_string(_CONFIG.format(root=tmp_path))
    made = parser.instantiate(config)

    trainer, checkpoint = made.trainer, made.checkpoint
    assert isinstance(trainer, L.Trainer)
    assert (trainer.max_epochs, trainer.default_root_dir) == (3, str(tmp_path))
    from_list = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(from_list) == 1
    assert (from_list[0].monitor, from_list[0].save_top_k, from_list[0].mode) == ("val_loss", 2, "max")
    assert isinstance(checkpoint, ModelCheckpoint)
    assert (checkpoint.monitor, checkpoint.save_top_k, checkpoint.filename) == (
        "train_loss",
        1,
        "{epoch}-{step}",
    )
    assert checkpoint._every_n_train_steps == 5

    dumped = parser.dump(config)  # and back: the dumped YAML parses to the same configuration
    assert parser.dump(parser.parse_string(dumped)) == dumped
    assert "save_top_k: 2" in dumped


def test_jsonargparse_rejects_a_wrongly_typed_value() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ModelCheckpoint, "checkpoint")
    with pytest.raises(Exception, match="save_top_k"):
        parser.parse_string("checkpoint:\n  save_top_k: many\n")
