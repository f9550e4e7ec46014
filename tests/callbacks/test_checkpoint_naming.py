from __future__ import annotations

import pytest
import torch

from stepstone.callbacks.checkpoint_naming import check_names, format_name, template_fields
from stepstone.errors import MisconfigurationException


def test_default_template_is_epoch_step() -> None:
    assert format_name(None, {"epoch": torch.tensor(3), "step": torch.tensor(120)}) == "epoch=3-step=120"


def test_seed_page_template() -> None:
    metrics = {"epoch": torch.tensor(2), "val_loss": torch.tensor(0.3217)}
    assert (
        format_name("sample-mnist-{epoch:02d}-{val_loss:.2f}", metrics)
        == "sample-mnist-epoch=02-val_loss=0.32"
    )


def test_without_metric_names() -> None:
    metrics = {"epoch": torch.tensor(2), "val_loss": torch.tensor(0.3217)}
    name = format_name("{epoch:02d}-{val_loss:.2f}", metrics, auto_insert_metric_name=False)
    assert name == "02-0.32"


def test_logged_int_is_float_like_lightning() -> None:
    # self.log stores numbers as float tensors, so "{global_step}" prints 11.0 (Lightning does the same).
    metrics = {"epoch": torch.tensor(0), "global_step": torch.tensor(11.0)}
    assert (
        format_name("sample-mnist-{epoch:02d}-{global_step}", metrics)
        == "sample-mnist-epoch=00-global_step=11.0"
    )


def test_missing_metric_counts_as_zero() -> None:
    assert format_name("{epoch}-{missing}", {"epoch": torch.tensor(1)}) == "epoch=1-missing=0"


def test_names_with_slash_and_dot() -> None:
    metrics = {"epoch": torch.tensor(1), "val/loss": torch.tensor(0.3), "acc.top1": torch.tensor(0.5)}
    assert format_name("{epoch:02d}-{val/loss:.2f}", metrics) == "epoch=01-val/loss=0.30"
    assert format_name("{acc.top1:.1f}", metrics) == "acc.top1=0.5"


def test_prefix_and_custom_characters() -> None:
    metrics = {"epoch": torch.tensor(1), "step": torch.tensor(5)}
    assert format_name(None, metrics, prefix="run", join="_", equals=":") == "run_epoch:1-step:5"


def test_template_fields() -> None:
    assert template_fields("a-{epoch:02d}-{val/loss:.2f}-{step}") == ["epoch", "val/loss", "step"]


@pytest.mark.parametrize("extension", [".ckpt", ".model.ckpt"])
def test_check_names_accepts_ckpt_endings(extension: str) -> None:
    check_names({"filename": None, "CHECKPOINT_NAME_LAST": "last-{epoch}", "sub": "runs/{epoch}"}, extension)


@pytest.mark.parametrize(
    ("templates", "extension", "match"),
    [
        ({"filename": None}, ".pt", r"FILE_EXTENSION='.pt' is not supported.*Keep FILE_EXTENSION='.ckpt'"),
        ({"filename": None}, "", r"FILE_EXTENSION='' is not supported"),
        ({"CHECKPOINT_NAME_LAST": ".last"}, ".ckpt", r"CHECKPOINT_NAME_LAST='.last' gives hidden file names"),
        ({"filename": "runs/.{epoch}"}, ".ckpt", r"filename='runs/.{epoch}' gives hidden.*'.epoch=0.ckpt'"),
    ],
)
def test_check_names_refuses_names_the_folder_would_not_recognise(
    templates: dict[str, str | None], extension: str, match: str
) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        check_names(templates, extension)
