"""LambdaCallback against Lightning 2.6.6: the same keywords, and the same hooks called in the same order."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as PL
import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback as PLLambdaCallback

import stepstone as L
from both_frameworks import quiet
from scripted import loader
from stepstone.callbacks import LambdaCallback

HOOKS = [name for name in inspect.signature(PLLambdaCallback.__init__).parameters if name != "self"]


def test_keywords_are_lightnings() -> None:
    ours = [name for name in inspect.signature(LambdaCallback.__init__).parameters if name != "self"]
    assert ours == HOOKS
    assert all(inspect.signature(LambdaCallback.__init__).parameters[h].default is None for h in HOOKS)


def _module(fw: ModuleType, fail_at: int | None) -> Any:
    class Small(fw.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if fail_at is not None and self.global_step == fail_at:
                raise ValueError("boom")
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Small()


def calls(name: str, root: Path, fail_at: int | None = None) -> list[str]:
    """The hooks a LambdaCallback with every keyword sees through fit, validate, test and predict."""
    fw, cls = (PL, PLLambdaCallback) if name == "lightning" else (L, LambdaCallback)
    seen: list[str] = []
    callback = cls(**{hook: (lambda *args, _h=hook, **kwargs: seen.append(_h)) for hook in HOOKS})
    trainer = fw.Trainer(
        default_root_dir=root,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
    )
    model = _module(fw, fail_at)
    with quiet():
        if fail_at is not None:
            with pytest.raises(ValueError, match="boom"):
                trainer.fit(model, loader(), loader())
            return seen
        trainer.fit(model, loader(), loader())
        ckpt = str(root / "saved.ckpt")
        trainer.save_checkpoint(ckpt)
        trainer.validate(model, loader(batches=1), ckpt_path=ckpt)
        trainer.test(model, loader(batches=1))
        trainer.predict(model, loader(batches=1))
    return seen


def test_every_hook_is_called_as_in_lightning(tmp_path: Path) -> None:
    seen = {name: calls(name, tmp_path / name) for name in ("lightning", "stepstone")}
    assert seen["stepstone"] == seen["lightning"]
    assert {"on_exception"} | set(seen["stepstone"]) == set(HOOKS)


def test_on_exception_as_in_lightning(tmp_path: Path) -> None:
    seen = {name: calls(name, tmp_path / name, fail_at=1) for name in ("lightning", "stepstone")}
    assert seen["stepstone"] == seen["lightning"]
    assert "on_exception" in seen["stepstone"]


def test_a_value_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match=r"LambdaCallback\(on_fit_start=3\).*lambda trainer, pl_module"):
        LambdaCallback(on_fit_start=3)  # type: ignore[arg-type]
