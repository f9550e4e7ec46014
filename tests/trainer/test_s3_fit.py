"""Training with every folder on ``s3://`` (a real S3-API server on loopback, see ``tests/s3_server.py``).

The Trainer takes no storage options for its folders (as in Lightning): the endpoint comes from boto's
environment (``AWS_ENDPOINT_URL_S3``), which the ``s3`` fixture sets. Where it can, a test runs the same program
under Lightning 2.6.6 on the same server and compares what a user observes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch

from both_frameworks import data, framework, logging_module_class, quiet
from stepstone.checkpoint import load_file, verify_file


def _model_class(name: str) -> type:
    return logging_module_class(name, squared=True)


def _fit(name: str, max_epochs: int, ckpt_path: str | None = None, **trainer_args: Any) -> Any:
    pl, _ = framework(name)
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_args,
    )
    with quiet():
        trainer.fit(_model_class(name)(), data(3), data(2, seed=1), ckpt_path=ckpt_path)
    return trainer


def _files(url: str) -> dict[str, int]:
    """Relative path -> size of every object under ``url``."""
    fs, base = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {
        os.path.relpath(path, base): int(info["size"]) for path, info in fs.find(base, detail=True).items()
    }


def _text(url: str) -> str:
    with fsspec.open(url, "r") as stream:
        return str(stream.read())


def _weights(trainer: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}


def _checkpoint(name: str, dirpath: str, **kwargs: Any) -> Any:
    _, model_checkpoint = framework(name)
    return model_checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True, **kwargs)


def test_fit_on_s3_then_resume_from_last_equals_an_uninterrupted_run(s3_dir: str, tmp_path: Path) -> None:
    run = f"{s3_dir}/run"
    first = _fit("stepstone", 2, callbacks=[_checkpoint("stepstone", run)], logger=False)
    # The same program under Lightning, into its own s3 folder: the same objects.
    _fit("lightning", 2, callbacks=[_checkpoint("lightning", f"{s3_dir}/oracle")], logger=False)
    assert sorted(_files(run)) == sorted(_files(f"{s3_dir}/oracle"))
    assert "last.ckpt" in _files(run) and len(_files(run)) == 3  # top 2 + last
    callback = first.checkpoint_callback
    assert callback.best_model_path.startswith(f"{run}/") and callback.last_model_path == f"{run}/last.ckpt"
    assert verify_file(callback.last_model_path).step == first.global_step

    resumed = _fit(
        "stepstone", 4, ckpt_path=f"{run}/last.ckpt", callbacks=[_checkpoint("stepstone", run)], logger=False
    )
    straight = _fit(
        "stepstone", 4, callbacks=[_checkpoint("stepstone", str(tmp_path / "straight"))], logger=False
    )
    assert resumed.global_step == straight.global_step == 12
    for key, value in _weights(straight).items():
        assert torch.equal(_weights(resumed)[key], value), key
    assert len(_files(run)) == 3  # retention deleted the objects that left the top 2


def test_resume_with_ckpt_path_last_finds_the_newest_object(s3_dir: str, tmp_path: Path) -> None:
    # Deliberate difference: Lightning 2.6.6 looks for `last` through local paths, finds nothing on s3 and
    # trains from scratch (writing -v1 duplicates beside the old files); stepstone resumes as from a local folder.
    runs = {"s3": f"{s3_dir}/run", "local": str(tmp_path / "run")}
    resumed = {}
    for where, run in runs.items():
        _fit("stepstone", 2, callbacks=[_checkpoint("stepstone", run)], logger=False)
        resumed[where] = _fit(
            "stepstone", 3, ckpt_path="last", callbacks=[_checkpoint("stepstone", run)], logger=False
        )
    assert resumed["s3"].ckpt_path == f"{runs['s3']}/last.ckpt"
    assert (
        sorted(_files(runs["s3"]))
        == sorted(os.listdir(runs["local"]))
        == [
            "epoch=1-step=6.ckpt",
            "epoch=2-step=9.ckpt",
            "last.ckpt",
        ]
    )


def test_default_root_dir_on_s3_has_lightnings_layout(s3_dir: str) -> None:
    pl, _ = framework("lightning")
    ours = _fit("stepstone", 2, default_root_dir=f"{s3_dir}/ours")
    oracle_root = f"{s3_dir}/oracle"  # Lightning's default logger is TensorBoard: give it the CSVLogger
    _fit("lightning", 2, default_root_dir=oracle_root, logger=pl.pytorch.loggers.CSVLogger(oracle_root))
    layout = sorted(_files(f"{s3_dir}/ours"))
    assert layout == sorted(_files(oracle_root))
    assert layout == [
        "lightning_logs/version_0/checkpoints/epoch=1-step=6.ckpt",
        "lightning_logs/version_0/hparams.yaml",
        "lightning_logs/version_0/metrics.csv",
    ]
    assert ours.log_dir == f"{s3_dir}/ours/lightning_logs/version_0"
    for name in ("metrics.csv", "hparams.yaml"):
        ours_text, oracle_text = (
            _text(f"{root}/lightning_logs/version_0/{name}") for root in (f"{s3_dir}/ours", oracle_root)
        )
        assert ours_text == oracle_text, name  # the same seed and model: the same values too
    second = _fit("stepstone", 1, default_root_dir=f"{s3_dir}/ours")
    assert second.log_dir == f"{s3_dir}/ours/lightning_logs/version_1"


def test_save_checkpoint_and_load_from_checkpoint_through_s3(s3_dir: str) -> None:
    trainer = _fit("stepstone", 1, logger=False, enable_checkpointing=False)
    url = f"{s3_dir}/manual.ckpt"
    trainer.save_checkpoint(url)
    assert verify_file(url).step == trainer.global_step == 3
    loaded = _model_class("stepstone").load_from_checkpoint(url, lr=0.5)
    assert loaded.hparams.lr == 0.5
    for key, value in _weights(trainer).items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(load_file(url)["state_dict"]["layer.weight"], trainer.lightning_module.layer.weight)


@pytest.mark.parametrize("how", ["callback", "plugin"])
def test_async_saves_to_s3_equal_synchronous_ones(s3_dir: str, how: str) -> None:
    from stepstone.plugins import AsyncCheckpointIO

    sync = _fit("stepstone", 2, callbacks=[_checkpoint("stepstone", f"{s3_dir}/sync")], logger=False)
    if how == "callback":
        args: dict[str, Any] = {"callbacks": [_checkpoint("stepstone", f"{s3_dir}/async", async_save=True)]}
    else:
        args = {"callbacks": [_checkpoint("stepstone", f"{s3_dir}/async")], "plugins": [AsyncCheckpointIO()]}
    background = _fit("stepstone", 2, logger=False, **args)
    assert sorted(_files(f"{s3_dir}/async")) == sorted(_files(f"{s3_dir}/sync"))
    for name in _files(f"{s3_dir}/async"):
        ours, theirs = load_file(f"{s3_dir}/async/{name}"), load_file(f"{s3_dir}/sync/{name}")
        assert torch.equal(ours["state_dict"]["layer.weight"], theirs["state_dict"]["layer.weight"]), name
    assert background.checkpoint_callback.best_model_path.replace("/async/", "/sync/") == (
        sync.checkpoint_callback.best_model_path
    )


@pytest.mark.parametrize("name", ["lightning", "stepstone"])
def test_save_last_link_on_s3_is_refused_like_lightning(s3_dir: str, name: str) -> None:
    # An object store has no symlinks: both refuse at setup, naming the folder.
    _, model_checkpoint = framework(name)
    callback = model_checkpoint(dirpath=f"{s3_dir}/run", save_last="link")
    with pytest.raises(ValueError, match=r"save_last='link'.*local.*s3://"):
        _fit(name, 1, callbacks=[callback], logger=False)
    assert _files(s3_dir) == {}


def test_without_s3fs_an_s3_root_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["s3fs"] = None  # as if the package were not installed
        import stepstone as L
        from stepstone.callbacks import ModelCheckpoint
        from stepstone.demo import DemoModel, SyntheticDataModule
        for build in (
            lambda: L.Trainer(default_root_dir="s3://bucket/root"),
            lambda: L.Trainer(logger=False, callbacks=[ModelCheckpoint(dirpath="s3://bucket/ckpts")]),
        ):
            try:
                build().fit(DemoModel(), datamodule=SyntheticDataModule())
            except ImportError as error:
                print("ERROR:", error)
        """
    )
    src = Path(__file__).resolve().parents[2] / "src"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=120,
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2, result.stdout + result.stderr
    assert all("pip install stepstone[s3]" in line for line in errors), errors
