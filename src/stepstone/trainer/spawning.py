"""``Trainer(strategy="ddp_spawn", devices=N)``: each entry point runs on N fresh processes, then returns here.

The calling process does not train. ``trainer.fit(model, ...)`` pickles the Trainer, the model and the data,
starts N processes with torch.multiprocessing ("spawn"), and each runs the same call as one DDP rank. When they
finish, rank 0 sends back what the caller needs to go on as if the work had run here (Lightning's behaviour):
the trained weights, the ModelCheckpoint state (``best_model_path``...), the loop counters, the logged metrics
and the call's return value. A rank's exception is re-raised here with that rank's traceback.

What spawn asks of the program: its entry point is guarded by ``if __name__ == "__main__":``, and the model,
the data and the callbacks can be pickled (defined at module level, no lambdas). ``strategy="ddp"`` has
neither requirement.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

import torch

from stepstone.errors import MisconfigurationException
from stepstone.strategies.environment import detect_environment
from stepstone.strategies.spawn import ddp_spawn

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["run_spawned"]


def run_spawned(trainer: Trainer, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``trainer.<method>(*args, **kwargs)`` on the spawned ranks and bring rank 0's outcome back here.

    Args:
        trainer: the Trainer of the calling process (``trainer._spawn`` processes are started).
        method: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        args: the call's positional arguments.
        kwargs: the call's keyword arguments.

    Returns:
        What the call returned on rank 0.

    Raises:
        MisconfigurationException: something the call needs cannot be pickled.
        BaseException: the first exception a rank raised.
    """
    processes = trainer._spawn
    assert processes is not None
    try:
        # Plain pickle bytes, not torch.multiprocessing's pickling: that one would put the model's tensors in
        # shared memory, and every rank's optimizer would then step the same weights.
        call = pickle.dumps((trainer, method, args, kwargs))
    except Exception as exc:
        raise MisconfigurationException(
            f"Trainer(strategy='ddp_spawn') sends the Trainer, the model and the data to {processes} new "
            f"processes, but they cannot be pickled: {exc!r}. Define them at module level (no lambdas or local "
            "classes), or use strategy='ddp' (no pickling)."
        ) from exc
    outcome = ddp_spawn(_rank_main, processes, args=(call,))
    _adopt(trainer, method, args, kwargs, outcome)
    return outcome["result"]


def _rank_main(call: bytes) -> Any:
    # A spawned rank: its place comes from the variables ddp_spawn set, exactly as under torchrun.
    trainer, method, args, kwargs = pickle.loads(call)  # the caller's own objects, pickled just above
    environment = detect_environment()
    assert environment is not None and trainer._strategy is not None
    trainer._strategy.environment = environment
    trainer._spawn = None  # this process runs the call itself
    result = getattr(trainer, method)(*args, **kwargs)
    if not trainer.is_global_zero:
        return None
    return _outcome(trainer, result)


def _outcome(trainer: Trainer, result: Any) -> dict[str, Any]:
    from stepstone.callbacks.model_checkpoint import ModelCheckpoint

    checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    return {
        "result": result,
        "weights": {k: v.detach().cpu().clone() for k, v in trainer.lightning_module.state_dict().items()},
        "checkpoints": [(cb.dirpath, cb.state_dict()) for cb in checkpoints],
        "loop": trainer.fit_loop.state_dict(),
        "callback_metrics": {k: v.detach().cpu() for k, v in trainer.callback_metrics.items()},
        "logged_metrics": {k: v.detach().cpu() for k, v in trainer.logged_metrics.items()},
        "status": (trainer.state.fn, trainer.state.status, trainer.should_stop),
    }


def _adopt(
    trainer: Trainer, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], outcome: dict[str, Any]
) -> None:
    from stepstone.callbacks.model_checkpoint import ModelCheckpoint

    model = args[0] if args else kwargs.get("model")
    model = model if model is not None else trainer._model
    if model is not None:
        with torch.no_grad():
            model.load_state_dict(outcome["weights"])
        trainer._model = model
        model.trainer = trainer
    checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    for callback, (dirpath, state) in zip(checkpoints, outcome["checkpoints"], strict=True):
        callback.dirpath = dirpath  # resolved on rank 0; then the state applies (same folder)
        callback.load_state_dict(state)
    if method == "fit":
        trainer.fit_loop.load_state_dict(outcome["loop"])
    trainer._metrics.callback_metrics.update(outcome["callback_metrics"])
    trainer._metrics.logged_metrics.update(outcome["logged_metrics"])
    trainer.state.fn, trainer.state.status, trainer.should_stop = outcome["status"]
