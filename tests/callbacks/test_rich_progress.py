"""RichProgressBar: what rich's recording console shows matches Lightning 2.6.6; rich stays optional."""

from __future__ import annotations

import importlib
import io
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as SS
from both_frameworks import FRAMEWORKS, data, framework, quiet
from stepstone.callbacks import RichProgressBar, RichProgressBarTheme
from stepstone.errors import MisconfigurationException


def _model(name: str) -> Any:
    pl, _ = framework(name)

    class Model(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self(batch[0]).sum()
            self.log("loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val", self(batch[0]).sum(), prog_bar=True)

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self(batch[0])

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Model()


def _recorded(name: str, fn: str, root: Path, **bar_options: Any) -> tuple[str, Any]:
    """Run ``trainer.<fn>`` with a RichProgressBar on a recording console; its text with speeds masked."""
    pl, _ = framework(name)
    package = "lightning.pytorch" if name == "lightning" else "stepstone"
    bar_class = importlib.import_module(f"{package}.callbacks").RichProgressBar
    console = {"record": True, "file": io.StringIO(), "width": 120}
    bar = bar_class(console_kwargs=console, **bar_options)
    trainer = pl.Trainer(
        default_root_dir=root,
        max_epochs=2,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    torch.manual_seed(0)
    with quiet():
        if fn == "fit":
            trainer.fit(_model(name), data(3), data(2))
        elif fn == "predict":
            trainer.predict(_model(name), data(2))
        else:
            getattr(trainer, fn)(_model(name), data(2), verbose=False)
    text = bar._console.export_text() if bar._console is not None else ""
    return re.sub(r"[\d.]+it/s", "<speed>it/s", text), bar


@pytest.mark.parametrize("fn", ["fit", "validate", "test", "predict"])
def test_recorded_bars_match_lightning(tmp_path: Path, fn: str) -> None:
    (lightning, _), (stepstone, _) = (_recorded(name, fn, tmp_path / name) for name in FRAMEWORKS)
    assert stepstone == lightning
    expected = {"fit": "Epoch 1/1  ", "validate": "Validation", "test": "Testing", "predict": "Predicting"}[
        fn
    ]
    assert (stepstone.startswith(expected) and " 2/2 " in stepstone) or " 3/3 " in stepstone


def test_fit_bar_shows_progress_and_metrics(tmp_path: Path) -> None:
    text, bar = _recorded("stepstone", "fit", tmp_path, leave=True)
    lines = text.splitlines()
    # leave=True keeps one finished bar per epoch; the metrics follow get_metrics() with ".3f".
    assert [line.split("━")[0] for line in lines] == ["Epoch 0/1  ", "Epoch 1/1  "]
    assert all(" 3/3 0:00:00 • 0:00:00 <speed>it/s loss: " in line for line in lines)
    assert re.search(r"loss: -?\d+\.\d{3} val: -?\d+\.\d{3}$", lines[-1])
    assert bar.progress is not None and bar._progress_stopped  # stopped at teardown


def test_theme_and_disabled_bar(tmp_path: Path) -> None:
    theme = RichProgressBarTheme(metrics_text_delimiter=" | ", metrics_format=".1e")
    text, _ = _recorded("stepstone", "fit", tmp_path / "theme", theme=theme)
    assert re.search(r"loss: -?\d\.\de[+-]\d\d \| val: ", text)
    _, off = _recorded("stepstone", "fit", tmp_path / "off", refresh_rate=0)
    assert off.is_disabled and off.progress is None and off.console is None  # nothing was drawn


def test_is_the_trainers_only_progress_bar_and_pickles() -> None:
    bar = RichProgressBar()
    trainer = SS.Trainer(callbacks=[bar])
    assert trainer.progress_bar_callback is bar
    assert sum(isinstance(cb, SS.callbacks.ProgressBar) for cb in trainer.callbacks) == 1
    clone = pickle.loads(pickle.dumps(bar))
    assert clone.progress is None and clone.refresh_rate == 100


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refresh_rate": -1}, "refresh_rate=-1"),
        ({"leave": "yes"}, "leave='yes'"),
        ({"console_kwargs": ["record"]}, "console_kwargs=\\['record'\\]"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        RichProgressBar(**kwargs)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_stepstone_never_imports_rich() -> None:
    done = _python(
        "import sys, stepstone, stepstone.callbacks\n"
        "from stepstone.callbacks import RichProgressBar\n"
        "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_rich_names_the_extra() -> None:
    done = _python(
        "import sys\n"
        "sys.modules['rich'] = None  # as if rich were not installed\n"
        "from stepstone.callbacks import RichProgressBar\n"
        "RichProgressBar()"
    )
    assert "ModuleNotFoundError" in done.stderr
    assert "pip install stepstone[rich]" in done.stderr
