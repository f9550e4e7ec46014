"""The Lightning-compatible checkpoint dict: what ``trainer.save_checkpoint`` writes and ``fit(ckpt_path)`` restores.

Top-level keys are Lightning 2.x's (``epoch``, ``global_step``, ``pytorch-lightning_version``, ``state_dict``,
``loops``, ``callbacks``, ``optimizer_states``, ``lr_schedulers``, ``hparams_name``, ``hyper_parameters``,
datamodule entries), so Lightning can read stepstone checkpoints and the other way round. stepstone's own
entries live under the ``stepstone`` key.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from stepstone.errors import CheckpointCorruptError, CheckpointNotFoundError, MisconfigurationException
from stepstone.loops.progress import loops_state
from stepstone.strategies import is_fsdp
from stepstone.trainer.resume_state import dump_resume_state, load_resume_state

if TYPE_CHECKING:
    from stepstone.strategies.fsdp import FSDPStrategy
    from stepstone.trainer.state import TrainerFn
    from stepstone.trainer.trainer import Trainer

__all__ = ["LIGHTNING_COMPAT_VERSION", "dump_checkpoint", "restore_model_state", "restore_training_state"]

# The Lightning release whose checkpoint layout this matches; Lightning's loader requires the key to exist.
LIGHTNING_COMPAT_VERSION = "2.6.0"
FORMAT_VERSION = 1


def _plain_dict(value: Any) -> dict[str, Any]:
    # AttributeDict is a dict subclass, which torch.load(weights_only=True) refuses: store a plain dict.
    return {k: v for k, v in value.items()}


def _fsdp(trainer: Trainer) -> FSDPStrategy | None:
    strategy = trainer._strategy
    return strategy if is_fsdp(strategy) and strategy._module is not None else None


def _model_state(trainer: Trainer) -> dict[str, Any]:
    # FSDP: gathered onto rank 0 ("full"; {} elsewhere) or this rank's shards ("sharded"): every rank calls it.
    fsdp = _fsdp(trainer)
    return fsdp.model_state_dict() if fsdp is not None else trainer.lightning_module.state_dict()


def _optimizer_states(trainer: Trainer) -> list[dict[str, Any]]:
    fsdp = _fsdp(trainer)
    if fsdp is not None:
        return [fsdp.optimizer_state_dict(opt) for opt in trainer.optimizers]
    return [opt.state_dict() for opt in trainer.optimizers]


def dump_checkpoint(
    trainer: Trainer, weights_only: bool = False, marks: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Build the checkpoint dict of the Trainer's current state.

    Args:
        trainer: a Trainer with a model attached.
        weights_only: leave out optimizer, scheduler and callback state (Lightning's ``save_weights_only``).
        marks: entries added to ``checkpoint["stepstone"]`` (e.g. ``saved_on_exception``), kept even with
            ``weights_only``.

    Returns:
        The checkpoint dict, with Lightning's keys plus ``stepstone``.
    """
    from stepstone import __version__

    module = trainer.lightning_module
    checkpoint: dict[str, Any] = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "pytorch-lightning_version": LIGHTNING_COMPAT_VERSION,
        "state_dict": _model_state(trainer),
        "loops": loops_state(trainer.fit_loop.state_dict()),
        "stepstone": {
            "format_version": FORMAT_VERSION,
            "version": __version__,
            "metrics": {
                k: float(v.item())
                for k, v in trainer.callback_metrics.items()
                if isinstance(v, torch.Tensor) and v.numel() == 1
            },
        },
    }
    checkpoint["stepstone"].update(marks or {})
    if not weights_only:
        checkpoint["stepstone"].update(dump_resume_state(trainer))
        states = {cb.state_key: cb.state_dict() for cb in trainer.callbacks}
        checkpoint["callbacks"] = {key: state for key, state in states.items() if state}
        checkpoint["optimizer_states"] = _optimizer_states(trainer)
        checkpoint["lr_schedulers"] = [
            config.scheduler.state_dict() for config in trainer.lr_scheduler_configs
        ]
        if trainer._placement.scaler is not None:
            checkpoint["MixedPrecision"] = trainer._placement.scaler.state_dict()
    if module._hparams:
        checkpoint["hparams_name"] = module._hparams_name
        checkpoint["hyper_parameters"] = _plain_dict(module._hparams)
    datamodule = trainer.datamodule
    if datamodule is not None:
        if datamodule._hparams:
            checkpoint["datamodule_hparams_name"] = datamodule._hparams_name
            checkpoint["datamodule_hyper_parameters"] = _plain_dict(datamodule._hparams)
        state = datamodule.state_dict()
        if state:
            checkpoint[type(datamodule).__qualname__] = state
    if not weights_only:
        trainer._hooks.callbacks("on_save_checkpoint", checkpoint)
    trainer._hooks.module("on_save_checkpoint", checkpoint)
    if datamodule is not None:
        datamodule.on_save_checkpoint(checkpoint)
    return checkpoint


def restore_model_state(trainer: Trainer, checkpoint: dict[str, Any], path: str) -> None:
    """Restore datamodule state, the module's weights (after its ``on_load_checkpoint``) and callback state."""
    module = trainer.lightning_module
    datamodule = trainer.datamodule
    if datamodule is not None:
        state = checkpoint.get(type(datamodule).__qualname__)
        if state:
            datamodule.load_state_dict(state)
        datamodule.on_load_checkpoint(checkpoint)
    if "state_dict" not in checkpoint:
        raise MisconfigurationException(
            f"ckpt_path={path!r} has no 'state_dict' entry (keys: {sorted(checkpoint)}); it is not a model checkpoint."
        )
    trainer._hooks.module("on_load_checkpoint", checkpoint)
    fsdp = _fsdp(trainer)
    if fsdp is not None:  # full (from any world size) or this rank's shards
        fsdp.load_model_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    else:
        module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)


def restore_callbacks(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Give each callback its saved state (matched by ``state_key``) after its ``on_load_checkpoint``."""
    trainer._hooks.callbacks("on_load_checkpoint", checkpoint)
    saved = checkpoint.get("callbacks") or {}
    for callback in trainer.callbacks:
        state = saved.get(callback.state_key)
        if state:
            callback.load_state_dict(state)


def _check_count(kind: str, saved: list[Any], current: int, path: str) -> None:
    if len(saved) != current:
        raise MisconfigurationException(
            f"ckpt_path={path!r} holds {len(saved)} {kind} state(s) but configure_optimizers returned {current}; "
            "resume with the same optimizer/scheduler setup that wrote the checkpoint."
        )


def restore_training_state(trainer: Trainer, checkpoint: dict[str, Any], path: str) -> None:
    """Restore loops, optimizers, schedulers and precision state (fit only; after configure_optimizers).

    Raises:
        KeyError: the checkpoint holds only model weights (Lightning's exception type for this case).
        MisconfigurationException: the optimizer/scheduler counts differ from the checkpoint's.
    """
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop")
    if fit_loop:
        trainer.fit_loop.load_state_dict(fit_loop)
    # As in Lightning, the loops are restored before the missing optimizer state is found (the Trainer's
    # counters are the checkpoint's after the error).
    if "optimizer_states" not in checkpoint:
        raise KeyError(
            f"ckpt_path={path!r} holds only model weights (saved with save_weights_only=True), so training cannot "
            "resume from it. Load the weights with YourModel.load_from_checkpoint(path) and call fit() without "
            "ckpt_path."
        )
    saved_opts = checkpoint["optimizer_states"]
    _check_count("optimizer", saved_opts, len(trainer.optimizers), path)
    fsdp = _fsdp(trainer)
    for optimizer, state in zip(trainer.optimizers, saved_opts, strict=True):
        if fsdp is not None:
            fsdp.load_optimizer_state_dict(optimizer, state)  # keyed by parameter names
        else:
            optimizer.load_state_dict(state)
    saved_scheds = checkpoint.get("lr_schedulers", [])
    _check_count("lr_scheduler", saved_scheds, len(trainer.lr_scheduler_configs), path)
    for config, state in zip(trainer.lr_scheduler_configs, saved_scheds, strict=True):
        config.scheduler.load_state_dict(state)
    if trainer._placement.scaler is not None and "MixedPrecision" in checkpoint:
        trainer._placement.scaler.load_state_dict(checkpoint["MixedPrecision"])
    load_resume_state(trainer, checkpoint.get("stepstone") or {})
    max_epochs = trainer.fit_loop.max_epochs
    if max_epochs != -1 and trainer.current_epoch > max_epochs:
        raise MisconfigurationException(
            f"ckpt_path={path!r} was saved at epoch {trainer.current_epoch}, past Trainer(max_epochs={max_epochs}); "
            f"raise max_epochs to continue training (e.g. max_epochs={trainer.current_epoch + 1})."
        )


def resolve_checkpoint(
    t: Trainer, fn: TrainerFn, ckpt_path: str | os.PathLike[str] | None
) -> tuple[str | None, dict[str, Any] | None]:
    """Turn ``ckpt_path`` (None, a path, ``"best"``, ``"last"`` or ``"auto"``) into a file to load, or None.

    ``"last"`` and ``"auto"`` pick the newest committed checkpoint (by step; at equal steps a ``last*.ckpt``)
    of the ModelCheckpoints' directories that verifies, warning about each corrupt one skipped, and read it in
    that same pass (see ``resume_selection``; a sharded directory is chosen on its marker and verified while
    ``read_for_strategy`` loads it, falling back from there). With none, ``"last"`` warns and starts fresh (Lightning's
    behaviour); ``"auto"``, made for job scripts that may or may not have run before, starts fresh with an
    info message only. An explicit path is loaded as is: if it fails verification, loading raises (the user
    asked for that file).

    Returns:
        ``(path, its checkpoint dict if already read)``; ``(None, None)`` for nothing to load.

    Raises:
        MisconfigurationException: (a ``ValueError``, as Lightning raises) ``"best"`` without a ModelCheckpoint or
            a best model, or an unsupported selector.
        CheckpointNotFoundError: a local path that does not exist.
    """
    if ckpt_path is None:
        return None, None
    path = os.fspath(ckpt_path)
    if path == "best":
        return _best_path(t, fn.value), None
    if path in ("last", "auto"):
        from stepstone.trainer.resume_selection import newest_checkpoint

        chosen = newest_checkpoint(t.checkpoint_callbacks)
        if chosen is None and path == "auto":
            print(
                f'trainer.{fn.value}(ckpt_path="auto"): no checkpoint to resume from yet; starting from scratch.',
                file=sys.stderr,
            )
            return None, None
        if chosen is None:
            warnings.warn(
                f'trainer.{fn.value}(ckpt_path="last") found no checkpoint that verifies; starting from scratch.',
                UserWarning,
                stacklevel=4,
            )
            return None, None
        return chosen[0].path, chosen[1]
    if path in ("hpc", "registry") or path.startswith("registry:"):
        raise MisconfigurationException(
            f"trainer.{fn.value}(ckpt_path={path!r}) is not supported; pass a file path, 'last', 'auto' or "
            "'best'."
        )
    from stepstone.checkpoint import is_local
    from stepstone.checkpoint.kinds import FILE, kind_of

    if is_local(path) and not os.path.isfile(path) and kind_of(path) is FILE:
        raise CheckpointNotFoundError(f"Checkpoint file not found: {path}")
    return path, None


def _best_path(t: Trainer, fn: str) -> str:
    """The first ModelCheckpoint's best file, with Lightning's checks (ValueError, the type Lightning raises)."""
    if len(t.checkpoint_callbacks) > 1:
        warnings.warn(
            f'trainer.{fn}(ckpt_path="best") is called with several ModelCheckpoint callbacks; the best checkpoint '
            "of the first one is used.",
            UserWarning,
            stacklevel=5,
        )
    cb = t.checkpoint_callback
    if cb is None:
        raise ValueError(
            f'trainer.{fn}(ckpt_path="best") is set but no ModelCheckpoint is configured; add one (or '
            "enable_checkpointing=True) or pass a checkpoint path."
        )
    if not cb.best_model_path:
        if t.fast_dev_run:
            raise ValueError(
                f'You cannot execute trainer.{fn}(ckpt_path="best") with fast_dev_run=True (it saves no '
                "checkpoint); pass an exact checkpoint path to ckpt_path."
            )
        raise ValueError(
            f'trainer.{fn}(ckpt_path="best") is set but the ModelCheckpoint is not configured to save the best '
            "model, or has saved none in this Trainer yet; fit first or pass a checkpoint path."
        )
    return cb.best_model_path


def read_for_strategy(
    trainer: Trainer, path: str, preloaded: dict[str, Any] | None = None, fall_back: bool = False
) -> tuple[str | None, dict[str, Any] | None]:
    """Read a checkpoint for a run under FSDP (after the model is sharded and the optimizers exist).

    A sharded directory is read into this rank's shards (at any world size: torch.distributed.checkpoint
    reshards), each file once, verified as it is read; a single file is read whole on every rank and loaded
    through the strategy.

    Args:
        trainer: the Trainer (its FSDP strategy set up, optimizers created).
        path: a checkpoint file or a committed sharded directory.
        preloaded: the file's dict when the resume selection already read it (then nothing is read again).
        fall_back: ``path`` was chosen by ``ckpt_path="last"``/``"auto"``: a damaged directory is skipped with
            a warning and the next newest checkpoint is loaded instead (the same order as the selection).

    Returns:
        ``(the path loaded, its checkpoint dict)`` (shards in ``state_dict``/``optimizer_states`` for a
        directory); ``(None, None)`` when every candidate after a damaged one failed too.

    Raises:
        CheckpointCorruptError: a shard or the file fails verification (a directory only without
            ``fall_back``).
    """
    from stepstone.checkpoint.kinds import SHARDED_DIRECTORY, kind_of
    from stepstone.core.saving import read_checkpoint

    fsdp = _fsdp(trainer)
    current: str | None = path
    while current is not None:
        if fsdp is None or kind_of(current) is not SHARDED_DIRECTORY:
            return current, preloaded if preloaded is not None else read_checkpoint(
                current, map_location="cpu"
            )
        try:
            return current, _load_shards(fsdp, trainer, current)
        except CheckpointCorruptError as error:
            if not fall_back:
                raise
            warnings.warn(f"{error} Falling back to the next newest checkpoint.", UserWarning, stacklevel=4)
        current, preloaded = _next_candidate(trainer, current)
    return None, None


def _load_shards(fsdp: FSDPStrategy, trainer: Trainer, path: str) -> dict[str, Any]:
    from stepstone.checkpoint.sharded import load_sharded

    # A failed load may have filled part of the shards: the next candidate's load fills every entry again.
    return load_sharded(path, fsdp.sharded_state_template(trainer.optimizers))


def _next_candidate(trainer: Trainer, damaged: str) -> tuple[str | None, dict[str, Any] | None]:
    from stepstone.trainer.resume_selection import newest_checkpoint

    chosen = newest_checkpoint(trainer.checkpoint_callbacks, after=damaged)
    if chosen is None:
        warnings.warn(
            "No checkpoint older than the damaged one verifies; starting from scratch.",
            UserWarning,
            stacklevel=5,
        )
        return None, None
    return chosen[0].path, chosen[1]
