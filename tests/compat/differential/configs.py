"""Seeded generator of random *valid* configurations for the differential test against Lightning 2.6.6.

A configuration is a plain JSON-able dict, so a difference can be reported as a literal that reproduces it
(``python -m compat.differential.long_run --config '<json>'``). Every configuration must be accepted by
Lightning: the generator respects its construction-time rules (mutually exclusive triggers, ``save_top_k`` with
``monitor=None``, distinct ``state_key``s, an int ``val_check_interval`` when ``check_val_every_n_epoch=None``).
Metric values are a function of the training position, never of history, so that a run that takes a different
path (an extra validation, a resumed run) still logs the same value at the same place in both frameworks.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

Config = dict[str, Any]

VAL_KEY = "val_m"
TRAIN_KEY = "train_m"
# Multiples of 1/8 (exact in binary, so both frameworks' means agree) with repeats (ties) and NaN.
_VALUES = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75]


def _metric_table(rng: random.Random) -> list[float]:
    size = rng.randint(2, 7)
    table = [rng.choice(_VALUES) for _ in range(size)]
    if rng.random() < 0.3:
        table[rng.randrange(size)] = math.nan
    if rng.random() < 0.3:  # a run of ties
        table = [table[0]] * size
    return table


def _train_keys(logging: Config) -> list[str]:
    """Names a ``self.log(TRAIN_KEY, on_step=..., on_epoch=...)`` call puts into ``callback_metrics``."""
    if logging["train_on_step"] and logging["train_on_epoch"]:
        return [f"{TRAIN_KEY}_step", f"{TRAIN_KEY}_epoch"]
    return [TRAIN_KEY]


def _trainer(rng: random.Random, n_train: int) -> Config:
    t: Config = {}
    t["max_epochs"] = rng.randint(1, 4)
    t["max_steps"] = rng.choice([-1, -1, -1, rng.randint(1, 3 * n_train)])
    t["limit_train_batches"] = rng.choice([None, None, rng.randint(1, n_train), rng.choice([0.5, 0.75, 1.0])])
    t["limit_val_batches"] = rng.choice([None, None, 0, 1, 2, rng.choice([0.5, 1.0, 0.0, 0.25])])
    cvene = rng.choice([1, 1, 1, 2, 3, None])
    t["check_val_every_n_epoch"] = cvene
    limit = t["limit_train_batches"]
    per_epoch = (
        n_train if limit is None else (limit if isinstance(limit, int) else max(1, int(n_train * limit)))
    )
    if cvene is None:
        t["val_check_interval"] = rng.randint(1, 2 * per_epoch)
    else:
        t["val_check_interval"] = rng.choice(
            [None, None, rng.randint(1, per_epoch), rng.choice([0.5, 0.25, 1.0])]
        )
    t["accumulate_grad_batches"] = rng.choice([1, 1, 1, 2, 3])
    t["num_sanity_val_steps"] = rng.choice([None, 0, 1, 2, -1])
    t["logger"] = rng.choice([False, False, False, "csv"])
    return t


_FILENAMES = [
    None,
    None,
    "{epoch}",
    "{epoch:02d}-{step}",
    "ck-{epoch}-{step:03d}",
    "{step}",
    "{epoch}-{METRIC:.2f}",
    "{METRIC:.3f}",
    "{step}-{METRIC}",
    "{epoch}-{nokey}",
    "best",
]


def _checkpoint(rng: random.Random, index: int, metric_keys: list[str]) -> Config:
    c: Config = {}
    c["dirpath"] = None if index == 0 and rng.random() < 0.3 else f"ckpt{index}"
    monitors: list[str | None] = [None, *metric_keys]
    if rng.random() < 0.05:
        monitors.append("nokey")  # a key that is never logged
    c["monitor"] = rng.choice(monitors)
    c["mode"] = rng.choice(["min", "max"])
    if c["monitor"] is None:
        c["save_top_k"] = rng.choice([-1, 0, 1, 1])
    else:
        c["save_top_k"] = rng.choice([-1, 0, 1, 1, 2, 3])
    c["save_last"] = rng.choice([None, None, True, False, "link"])
    c["save_weights_only"] = rng.random() < 0.15
    c["auto_insert_metric_name"] = rng.random() < 0.8
    trigger = rng.choice(["default", "default", "steps", "epochs", "epochs0"])
    c["every_n_train_steps"] = rng.randint(1, 5) if trigger == "steps" else rng.choice([None, None, None, 0])
    c["every_n_epochs"] = {"epochs": rng.randint(1, 3), "epochs0": 0}.get(trigger)
    c["save_on_train_epoch_end"] = rng.choice([None, None, True, False])
    c["enable_version_counter"] = rng.random() < 0.85
    template = rng.choice(_FILENAMES)
    if template is not None and "METRIC" in template:
        template = template.replace("METRIC", rng.choice(metric_keys))
    c["filename"] = template
    c["last_name"] = rng.choice([None, None, None, "{epoch}-last", "final-{step}", "latest"])
    return c


def _state_key(c: Config) -> tuple[Any, ...]:
    """Lightning's ``state_key`` fields, with the triggers resolved the way its constructor resolves them."""
    steps, epochs = c["every_n_train_steps"], c["every_n_epochs"]
    if steps is None and epochs is None:
        steps, epochs = 0, 1
    return (c["monitor"], c["mode"], steps or 0, epochs or 0)


def generate(seed: int) -> Config:
    """A random valid configuration, the same for the same ``seed``.

    Args:
        seed: selects the configuration.

    Returns:
        The configuration dict (JSON-able).
    """
    rng = random.Random(seed)
    n_train = rng.randint(3, 6)
    data = {"n_train": n_train, "n_val": rng.randint(1, 3), "batch_size": 2}
    trainer = _trainer(rng, n_train)
    validation = rng.choice(["loader", "loader", "loader", "none"])
    logging = {"train_on_step": rng.random() < 0.7, "train_on_epoch": rng.random() < 0.5}
    metric_keys = _train_keys(logging) + ([VAL_KEY] if validation == "loader" else [])
    checkpoints: list[Config] = []
    for index in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
        cand = _checkpoint(rng, index, metric_keys)
        if any(_state_key(cand) == _state_key(other) for other in checkpoints):
            continue  # Lightning keys callback state by these; a duplicate is a user error (issue: rejected).
        checkpoints.append(cand)
    last_step = 3 * n_train
    flows = {
        "continue_extra": rng.randint(1, 2),
        "stop_by": rng.choice(["max_steps", "callback"]),
        "stop_at": rng.randint(1, last_step),
        "save_at": rng.choice([None, rng.randint(1, last_step)]),
        "resume_pick": rng.randrange(1000),
    }
    return {
        "seed": seed,
        "data": data,
        "trainer": trainer,
        "validation": validation,
        "logging": logging,
        "val_table": _metric_table(rng),
        "train_table": _metric_table(rng),
        "checkpoints": checkpoints,
        "flows": flows,
    }


def size(config: Config) -> int:
    """How big a configuration is: smaller ones reproduce a difference more readably (used to pick examples)."""
    t = config["trainer"]
    steps = t["max_epochs"] * config["data"]["n_train"]
    return steps + 10 * len(config["checkpoints"]) + len(json.dumps(config)) // 40


def dumps(config: Config) -> str:
    """The configuration as one JSON line (NaN kept as ``NaN``, which ``json.loads`` reads back)."""
    return json.dumps(config, sort_keys=True)
