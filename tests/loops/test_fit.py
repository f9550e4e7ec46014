"""The fit loop: accumulation, clipping, when validation runs, the sanity check, and unsized data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import stepstone as L
from models import BoringModel, iterable_loader, loader, make_trainer


class Recorder(BoringModel):
    """Records training batches (epoch, batch_idx) and validation runs (epoch, global step)."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr)
        self.trained: list[tuple[int, int]] = []
        self.validated: list[tuple[int, int]] = []
        self.sanity_batches = 0

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        self.trained.append((self.current_epoch, batch_idx))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        if self.trainer.sanity_checking:
            self.sanity_batches += 1
        return super().validation_step(batch, batch_idx)

    def on_validation_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated.append((self.current_epoch, self.global_step))


# --- gradient accumulation ------------------------------------------------------------------------------------


def test_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    steps: list[int] = []

    class Model(Recorder):
        def on_before_optimizer_step(self, optimizer: Any) -> None:
            steps.append(self.trainer.fit_loop.batch_idx)

    trainer = make_trainer(tmp_path, max_epochs=2, accumulate_grad_batches=3, limit_val_batches=0)
    model = Model()
    trainer.fit(model)
    # 4 batches per epoch: a step after batch 2 and one after the last (incomplete) window.
    assert steps == [2, 3, 2, 3]
    assert trainer.global_step == 4
    assert trainer.fit_loop.optim_progress.zero_grad.total.completed == 4
    assert trainer.fit_loop.batches_that_stepped == 4


def test_accumulation_divides_the_loss(tmp_path: Path) -> None:
    returned: list[float] = []
    backward: list[float] = []
    outputs: list[float] = []

    class Model(BoringModel):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
            loss = self.loss(self(batch))
            returned.append(loss.item())
            return loss

        def on_before_backward(self, loss: torch.Tensor) -> None:
            backward.append(loss.item())

        def on_train_batch_end(self, out: Any, batch: Any, batch_idx: int) -> None:
            outputs.append(out["loss"].item())

    make_trainer(tmp_path, max_steps=1, accumulate_grad_batches=2, limit_val_batches=0).fit(Model())
    assert backward == pytest.approx([r / 2 for r in returned])
    assert outputs == pytest.approx(backward)  # Lightning's outputs["loss"] is the normalized loss


@pytest.mark.parametrize("accumulate", [1, 2, 3])
def test_accumulation_matches_a_hand_written_loop(tmp_path: Path, accumulate: int) -> None:
    torch.manual_seed(3)
    model = BoringModel(lr=0.05)
    reference = BoringModel(lr=0.05)
    reference.load_state_dict(model.state_dict())
    data = loader(20, batch_size=4)  # 5 batches: the last window is incomplete when accumulate > 1
    epochs = 2

    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        batches = list(data)
        for i, batch in enumerate(batches):
            if i % accumulate == 0:
                optimizer.zero_grad()
            (reference.loss(reference(batch)) / accumulate).backward()
            if (i + 1) % accumulate == 0 or i + 1 == len(batches):
                optimizer.step()

    class Model(BoringModel):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    trained = Model(lr=0.05)
    trained.load_state_dict(model.state_dict())
    trainer = make_trainer(
        tmp_path, max_epochs=epochs, accumulate_grad_batches=accumulate, limit_val_batches=0
    )
    trainer.fit(trained, data)
    for ours, theirs in zip(trained.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert trainer.global_step == epochs * -(-5 // accumulate)


# --- gradient clipping -----------------------------------------------------------------------------------------


class ClipSpy(BoringModel):
    def __init__(self) -> None:
        super().__init__(lr=1.0)
        self.before: list[torch.Tensor] = []
        self.after: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        return 100 * self.loss(self(batch))  # large gradients

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.before.append(torch.cat([p.grad.flatten() for p in self.parameters()]))

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.after.append(torch.cat([p.grad.flatten() for p in self.parameters()]))


def test_gradient_clipping_by_norm(tmp_path: Path) -> None:
    model = ClipSpy()
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    make_trainer(tmp_path, max_steps=1, gradient_clip_val=0.5, limit_val_batches=0).fit(model)
    assert model.before[0].norm() > 0.5  # on_before_optimizer_step sees the unclipped gradients
    torch.testing.assert_close(model.after[0].norm(), torch.tensor(0.5), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        model.after[0], model.before[0] * 0.5 / model.before[0].norm(), rtol=1e-5, atol=1e-6
    )
    end = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(
        start - end, model.after[0], rtol=1e-5, atol=1e-6
    )  # SGD(lr=1) used the clipped grads


def test_gradient_clipping_by_value(tmp_path: Path) -> None:
    model = ClipSpy()
    trainer = make_trainer(
        tmp_path, max_steps=1, gradient_clip_val=0.01, gradient_clip_algorithm="value", limit_val_batches=0
    )
    trainer.fit(model)
    assert model.before[0].abs().max() > 0.01
    torch.testing.assert_close(model.after[0], model.before[0].clamp(-0.01, 0.01))


def test_no_clipping_by_default(tmp_path: Path) -> None:
    model = ClipSpy()
    make_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model)
    assert torch.equal(model.before[0], model.after[0])


def test_clipping_with_manual_optimization_is_rejected(tmp_path: Path) -> None:
    from stepstone.errors import MisconfigurationException

    class Manual(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(MisconfigurationException, match=r"gradient_clip_val=1.0.*manual optimization"):
        make_trainer(tmp_path, max_steps=1, gradient_clip_val=1.0).fit(Manual())
    with pytest.raises(MisconfigurationException, match=r"accumulate_grad_batches=2.*manual optimization"):
        make_trainer(tmp_path, max_steps=1, accumulate_grad_batches=2).fit(Manual())


# --- when validation runs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [(0, 4), (1, 8)]),  # once per epoch, after the last batch
        ({"val_check_interval": 2}, [(0, 2), (0, 4), (1, 6), (1, 8)]),
        ({"val_check_interval": 0.5}, [(0, 2), (0, 4), (1, 6), (1, 8)]),
        ({"val_check_interval": 0.25}, [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (1, 7), (1, 8)]),
        ({"val_check_interval": 3}, [(0, 3), (1, 7)]),  # counted within each epoch
        ({"check_val_every_n_epoch": 2}, [(1, 8)]),
        ({"check_val_every_n_epoch": None, "val_check_interval": 3}, [(0, 3), (1, 6)]),  # across epochs
        ({"limit_val_batches": 0}, []),
    ],
)
def test_validation_schedule(tmp_path: Path, kwargs: dict[str, Any], expected: list[tuple[int, int]]) -> None:
    model = Recorder()
    make_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0, **kwargs).fit(model)
    assert model.validated == expected


def test_val_check_interval_larger_than_the_epoch(tmp_path: Path) -> None:
    from stepstone.errors import MisconfigurationException

    with pytest.raises(MisconfigurationException, match=r"val_check_interval=5\) must be <= .* \(4\)"):
        make_trainer(tmp_path, max_epochs=2, val_check_interval=5).fit(Recorder())
    model = Recorder()
    make_trainer(tmp_path, max_epochs=3, val_check_interval=5, check_val_every_n_epoch=None).fit(model)
    assert model.validated == [(1, 5), (2, 10)]


def test_validation_runs_when_stopping_early(tmp_path: Path) -> None:
    class Stop(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step == 2:
                trainer.should_stop = True

    model = Recorder()
    make_trainer(tmp_path, max_epochs=3, num_sanity_val_steps=0, callbacks=[Stop()]).fit(model)
    assert model.validated == [(0, 2)]  # Lightning validates when should_stop ends the epoch


def test_no_validation_without_validation_step(tmp_path: Path) -> None:
    class NoVal(BoringModel):
        validation_step = L.LightningModule.validation_step  # type: ignore[assignment]

    trainer = make_trainer(tmp_path, max_epochs=1)
    with pytest.warns(UserWarning, match="no validation_step"):
        trainer.fit(NoVal())
    assert trainer.global_step == 4 and trainer.callback_metrics == {}


# --- the sanity check ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "expected"), [(0, 0), (1, 1), (2, 2), (-1, 3)])
def test_num_sanity_val_steps(tmp_path: Path, steps: int, expected: int) -> None:
    class Model(Recorder):
        def val_dataloader(self) -> Any:
            return [loader(12), loader(4)]  # 3 and 1 batches

        def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> Any:
            if self.trainer.sanity_checking and dataloader_idx == 0:
                self.sanity_batches += 1

    model = Model()
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, num_sanity_val_steps=steps)
    trainer.fit(model)
    assert model.sanity_batches == expected
    if steps != 0:
        assert trainer.num_sanity_val_batches == [min(expected, 3), min(expected, 1)]


def test_sanity_check_hooks(tmp_path: Path) -> None:
    calls: list[str] = []

    class Spy(L.Callback):
        def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            calls.append(f"start:{trainer.sanity_checking}")

        def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            calls.append(f"end:{trainer.sanity_checking}")

    make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[Spy()]).fit(BoringModel())
    assert calls == ["start:True", "end:True"]
    calls.clear()
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[Spy()]).fit(
        BoringModel()
    )
    assert calls == []  # no validation data: no sanity check


# --- unsized (iterable) data -----------------------------------------------------------------------------------


def test_iterable_dataset_knows_its_last_batch_and_validates_at_epoch_end(tmp_path: Path) -> None:
    flags: list[bool] = []

    class Model(Recorder):
        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            flags.append(self.trainer.fit_loop.batch_progress.is_last_batch)

    model = Model()
    trainer = make_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(model, iterable_loader(12), iterable_loader(8))
    assert trainer.num_training_batches == float("inf")
    assert flags == [False, False, True] * 2
    assert model.validated == [(0, 3), (1, 6)]
    assert trainer.num_val_batches == [float("inf")]


def test_iterable_dataset_with_val_check_interval(tmp_path: Path) -> None:
    model = Recorder()
    trainer = make_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0, val_check_interval=2)
    trainer.fit(model, iterable_loader(16), loader(4))
    assert model.validated == [(0, 2), (0, 4)]


def test_iterable_dataset_rejects_a_fractional_val_check_interval(tmp_path: Path) -> None:
    from stepstone.errors import MisconfigurationException

    with pytest.raises(MisconfigurationException, match=r"val_check_interval=0.5.*no length"):
        make_trainer(tmp_path, max_epochs=1, val_check_interval=0.5).fit(Recorder(), iterable_loader(16))


def test_sampler_epoch_is_set(tmp_path: Path) -> None:
    epochs: list[int] = []

    class Sampler(torch.utils.data.Sampler[int]):
        def __iter__(self) -> Any:
            return iter(range(8))

        def __len__(self) -> int:
            return 8

        def set_epoch(self, epoch: int) -> None:
            epochs.append(epoch)

    data = torch.utils.data.DataLoader(loader(8).dataset, batch_size=4, sampler=Sampler())
    make_trainer(tmp_path, max_epochs=3, limit_val_batches=0).fit(BoringModel(), data)
    assert epochs == [0, 1, 2]


# --- where a resumed fit continues (compared with Lightning 2.6.6) ----------------------------------------------

RESUME_CASES = {
    # A finished fit continued with a higher max_epochs (the final file, or the ModelCheckpoint's epoch-end file).
    "after-fit": {"save_at": ("final",)},
    "after-fit-with-validation": {"save_at": ("final",), "validate": True},
    "model-checkpoint-file": {"checkpoint": {}, "resume_file": "epoch=1-step=8.ckpt"},
    "on-train-epoch-end": {"save_at": ("epoch", 1)},
    "on-validation-end-at-epoch-end": {"save_at": ("val", 1), "validate": True},
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_a_finished_epoch_resumes_with_the_next_epoch_as_in_lightning(tmp_path: Path, case: str) -> None:
    from both_frameworks import resume

    options = {"first": {"max_epochs": 2}, "second": {"max_epochs": 4}, **RESUME_CASES[case]}
    if options.get("validate"):
        for key in ("first", "second"):
            options[key] = {**options[key], "num_sanity_val_steps": 0}
    runs = {name: resume(name, tmp_path / name, **options) for name in ("lightning", "stepstone")}
    assert runs["stepstone"] == runs["lightning"]
    assert runs["stepstone"]["second"] == (16, 4)


MAX_STEPS_CASES = {
    # max_steps=6 stops the first run in epoch 1 after 2 of its 4 batches.
    "epoch-end-then-max-steps": ({"save_at": ("epoch", 1)}, {"max_epochs": 5, "max_steps": 100}),
    "epoch-end-then-max-epochs": ({"save_at": ("epoch", 1)}, {"max_epochs": 3}),
    "after-fit-then-max-steps": ({"save_at": ("final",)}, {"max_epochs": 4, "max_steps": 100}),
    "after-fit-then-max-epochs": ({"save_at": ("final",)}, {"max_epochs": 4}),
}


@pytest.mark.parametrize("case", list(MAX_STEPS_CASES))
def test_an_epoch_cut_short_by_max_steps_resumes_as_in_lightning(tmp_path: Path, case: str) -> None:
    from both_frameworks import resume

    options, second = MAX_STEPS_CASES[case]
    first = {"max_epochs": 5, "max_steps": 6}
    runs = {
        name: resume(name, tmp_path / name, first, second, **options) for name in ("lightning", "stepstone")
    }
    assert runs["stepstone"] == runs["lightning"]


@pytest.mark.parametrize("validate", [False, True])
def test_resuming_from_the_last_batch_writes_no_second_file_for_its_step(
    tmp_path: Path, validate: bool
) -> None:
    from both_frameworks import resume

    options: dict[str, Any] = {
        "first": {"max_epochs": 2, "num_sanity_val_steps": 0},
        "second": {"max_epochs": 3, "num_sanity_val_steps": 0},
        "save_at": ("batch", 1, 3),  # on_train_batch_end of epoch 1's last batch
        "checkpoint": {"every_n_epochs": 1, "save_top_k": -1},
        "validate": validate,
    }
    runs = {name: resume(name, tmp_path / name, **options) for name in ("lightning", "stepstone")}
    assert runs["stepstone"]["files"] == runs["lightning"]["files"]
    assert runs["stepstone"]["files"][1] == [
        "epoch=0-step=4.ckpt",
        "epoch=1-step=8.ckpt",
        "epoch=2-step=12.ckpt",
    ]
    assert runs["stepstone"]["second"] == runs["lightning"]["second"] == (12, 3)
    # Deliberate difference: stepstone finishes the interrupted epoch (its validation and on_train_epoch_end).
    assert ("epoch_end", 1) in runs["stepstone"]["events"]
    assert ("epoch_end", 1) not in runs["lightning"]["events"]


SANITY_CASES = {
    "after-fit": ({"save_at": ("final",)}, {"max_epochs": 4}),
    "on-train-epoch-end": ({"save_at": ("epoch", 1)}, {"max_epochs": 4}),
    "mid-epoch": ({"save_at": ("batch", 1, 1)}, {"max_epochs": 4}),
    "iteration-based": ({"save_at": ("final",)}, {"max_epochs": 4, "max_steps": 100}),
}


@pytest.mark.parametrize("case", list(SANITY_CASES))
def test_a_resumed_fit_runs_the_sanity_check_when_lightning_does(tmp_path: Path, case: str) -> None:
    from both_frameworks import resume

    options, second = SANITY_CASES[case]
    runs = {
        name: resume(name, tmp_path / name, {"max_epochs": 2}, second, validate=True, **options)
        for name in ("lightning", "stepstone")
    }
    sanity = {name: [e for e in run["events"] if e[0] == "validation" and e[2]] for name, run in runs.items()}
    assert sanity["stepstone"] == sanity["lightning"]
    assert bool(sanity["stepstone"]) == (case in ("after-fit", "on-train-epoch-end"))
    if case in ("after-fit", "on-train-epoch-end"):
        # (Elsewhere the runs differ on purpose: stepstone continues mid-epoch with the unseen batches, and with
        # max_steps set Lightning trains an extra batch labelled batch_idx=4 of a 4-batch epoch.)
        assert runs["stepstone"] == runs["lightning"]


def test_the_sanity_check_of_a_resumed_fit_keeps_the_restored_metrics(tmp_path: Path) -> None:
    from both_frameworks import data, module_class

    model_class = module_class("stepstone", validate=True)
    seen: dict[str, float] = {}

    class Resumed(model_class):  # type: ignore[misc, valid-type]
        def on_train_start(self) -> None:
            seen.update({k: float(v) for k, v in self.trainer.callback_metrics.items()})

    first = make_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    first.fit(model_class(), data(4))
    first.save_checkpoint(tmp_path / "a.ckpt")
    second = make_trainer(tmp_path, max_epochs=2)
    second.fit(Resumed(), data(4), ckpt_path=tmp_path / "a.ckpt")
    assert seen == {"v": pytest.approx(float(first.callback_metrics["v"]))}


NOTHING_LEFT_CASES = {
    "max-steps-reached": {"max_epochs": 4, "max_steps": 8},
    "no-training-batches": {"max_epochs": 4, "limit_train_batches": 0},
    "max-epochs-reached": {"max_epochs": 2},
}


@pytest.mark.parametrize("case", list(NOTHING_LEFT_CASES))
def test_a_resume_with_nothing_left_to_train_keeps_lightnings_current_epoch(
    tmp_path: Path, case: str
) -> None:
    from both_frameworks import resume

    second = NOTHING_LEFT_CASES[case]
    runs = {
        name: resume(name, tmp_path / name, {"max_epochs": 2}, second, save_at=("epoch", 1))
        for name in ("lightning", "stepstone")
    }
    assert runs["stepstone"] == runs["lightning"]
    # Lightning completes the restored epoch only when max_epochs (not max_steps or an empty loader) ends the run.
    assert runs["stepstone"]["second"] == (8, 2 if case == "max-epochs-reached" else 1)


@pytest.mark.parametrize("validate", [False, True])
@pytest.mark.parametrize("save_at", [("final",), ("epoch", 1)])
def test_iteration_based_training_resumed_at_an_epoch_end_trains_whole_epochs(
    tmp_path: Path, validate: bool, save_at: tuple[Any, ...]
) -> None:
    """Deliberate difference: Lightning 2.6 trains none or one batch labelled batch_idx=4 of the 4-batch epoch."""
    from both_frameworks import resume

    second = {"max_epochs": 4, "max_steps": 100, "num_sanity_val_steps": 0}
    runs = {
        name: resume(name, tmp_path / name, {"max_epochs": 2}, second, save_at=save_at, validate=validate)
        for name in ("lightning", "stepstone")
    }
    trained = {name: [e[1:] for e in run["events"] if e[0] == "train"] for name, run in runs.items()}
    assert trained["stepstone"] == [(epoch, idx) for epoch in (2, 3) for idx in range(4)]
    assert runs["stepstone"]["second"] == (16, 4)
    out_of_range = [(epoch, idx) for epoch, idx in trained["lightning"] if idx >= 4]
    assert out_of_range == ([] if validate else [(2 if save_at == ("final",) else 1, 4)])
    assert len(trained["lightning"]) < len(trained["stepstone"])
