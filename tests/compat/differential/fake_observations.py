"""Hand-made observations and a small configuration for the tests of the comparison and its predicates.

The shapes are those :func:`compat.differential.program.run_flow` records; a test changes only the fields its
case is about.
"""

from __future__ import annotations

from typing import Any

from compat.differential import configs


def fit(**changes: Any) -> dict[str, Any]:
    """The observation of a plain two-epoch ``fit`` (two batches an epoch), with ``changes`` applied."""
    obs: dict[str, Any] = {
        "ckpt_path": None,
        "error": None,
        "trained": [[0, 0, [0, 1]], [0, 1, [2, 3]], [1, 0, [0, 1]], [1, 1, [2, 3]]],
        "optimizer_steps": 4,
        "val_runs": [[2, 0], [4, 1]],
        "sanity_runs": 1,
        "metrics_at_start": [],
        "global_step": 4,
        "current_epoch": 2,
        "callback_metrics": {"val_m": 0.5},
        "checkpoints": [],
        "weights": [0.1, 0.2],
        "files": {"ckpt0/epoch=1-step=4.ckpt": {"epoch": 1, "global_step": 4}},
    }
    obs.update(changes)
    return obs


def config() -> dict[str, Any]:
    """A generated configuration with batches of 2 and one ModelCheckpoint saving last into ``ckpt0``."""
    made = configs.generate(0)
    made["data"]["batch_size"] = 2
    made["checkpoints"] = [{**(made["checkpoints"] or [{}])[0], "dirpath": "ckpt0", "save_last": True}]
    return made


def resumed(**changes: Any) -> dict[str, Any]:
    """The observation of a run resumed from ``manual/mid.ckpt`` (epoch 0, global_step 1), ``changes`` applied."""
    files = {"manual/mid.ckpt": {"epoch": 0, "global_step": 1}}
    trained = [[0, 1, [0, 1]], [1, 0, [0, 1]], [1, 1, [2, 3]]]
    return fit(**{"ckpt_path": "manual/mid.ckpt", "files": files, "trained": trained, **changes})
