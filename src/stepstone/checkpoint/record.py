"""What is known about one committed checkpoint, and the schema of the metadata stored with it.

``CheckpointRecord`` is what every part of the engine passes around (the run index lists them, retention
policies decide over them, the manager returns them). The caller's metadata (step, epoch, metrics) is
validated here, at the boundary, and converted to/from JSON. Metrics are floats; non-finite values are
stored as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` so the trailer stays
standard JSON that any tool can read.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stepstone.errors import MisconfigurationException

__all__ = [
    "CheckpointRecord",
    "age_key",
    "basename",
    "decode_metrics",
    "encode_metrics",
    "normalize_metadata",
]

_METADATA_KEYS = ("step", "epoch", "metrics")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint file and what its trailer says about it.

    Args:
        path: the file's path or URL.
        name: the file name (last path component).
        size: file size in bytes.
        step: training step stored at save time, or None (unknown, e.g. a plain torch/Lightning file).
        epoch: epoch stored at save time, or None.
        metrics: metric values stored at save time (NaN/inf allowed).
        created: save time (seconds since the epoch); for files without a trailer, their mtime.
        verified: True only when this record came from a full checksum pass over the stored bytes
            (``verify_file``/``load_file``); False when built from the trailer alone, right after writing,
            or for a file without a trailer.
        format_version: the stepstone format version, 0 for a file without a stepstone trailer.
        digest: a short fingerprint of the content (CRC32 of the chunk checksum list and the size), ""
            when unknown. Two records with the same digest describe the same bytes.
    """

    path: str
    name: str
    size: int
    step: int | None
    epoch: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    created: float = 0.0
    verified: bool = False
    format_version: int = 0
    digest: str = ""

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-compatible dict (without ``path`` and ``verified``, which are contextual).

        Returns:
            A dict accepted by ``from_json``.
        """
        return {
            "name": self.name,
            "size": self.size,
            "step": self.step,
            "epoch": self.epoch,
            "metrics": encode_metrics(self.metrics),
            "created": self.created,
            "format_version": self.format_version,
            "digest": self.digest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str) -> CheckpointRecord:
        """Rebuild a record from ``to_json`` output.

        Args:
            data: the JSON dict.
            path: the file's path (the JSON holds its name only).

        Returns:
            The record, with ``verified=False``.

        Raises:
            ValueError: if a field is missing or has the wrong type.
        """
        _expect(data, "name", str)
        _expect(data, "size", int)
        _expect(data, "created", (int, float))
        _expect(data, "format_version", int)
        _expect(data, "digest", str)
        for key in ("step", "epoch"):
            if data.get(key) is not None:
                _expect(data, key, int)
        return cls(
            path=path,
            name=data["name"],
            size=data["size"],
            step=data.get("step"),
            epoch=data.get("epoch"),
            metrics=decode_metrics(data.get("metrics", {})),
            created=float(data["created"]),
            verified=False,
            format_version=data["format_version"],
            digest=data["digest"],
        )


def _expect(data: Mapping[str, Any], key: str, kinds: type | tuple[type, ...]) -> None:
    value = data.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ValueError(f"field {key!r} must be {kinds}, got {value!r}")


def encode_metrics(metrics: Mapping[str, float]) -> dict[str, float | str]:
    """Metrics as standard JSON values (non-finite floats become strings).

    Args:
        metrics: name -> float.

    Returns:
        name -> float, or "NaN"/"Infinity"/"-Infinity".
    """
    encoded: dict[str, float | str] = {}
    for name, value in metrics.items():
        if math.isnan(value):
            encoded[name] = "NaN"
        elif math.isinf(value):
            encoded[name] = "Infinity" if value > 0 else "-Infinity"
        else:
            encoded[name] = value
    return encoded


def decode_metrics(data: object) -> dict[str, float]:
    """Inverse of ``encode_metrics``.

    Args:
        data: the JSON value.

    Returns:
        name -> float.

    Raises:
        ValueError: if ``data`` is not a dict of numbers / non-finite markers.
    """
    if not isinstance(data, dict):
        raise ValueError(f"metrics must be a JSON object, got {data!r}")
    decoded: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, str) and value in _NON_FINITE:
            decoded[name] = _NON_FINITE[value]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            decoded[name] = float(value)
        else:
            raise ValueError(f"metric {name!r} has a non-numeric value {value!r}")
    return decoded


def _to_float(name: str, value: object) -> float:
    # Trainers log 0-dim tensors and numpy scalars; both convert losslessly through float().
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "numel", lambda: 1)() == 1:
        value = item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise MisconfigurationException(
        f"metadata['metrics'][{name!r}] = {value!r} is not a number; pass a float, an int or a "
        "one-element tensor"
    )


def _to_counter(key: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    raise MisconfigurationException(f"metadata[{key!r}] = {value!r} is invalid; pass an int >= 0 or None")


def normalize_metadata(metadata: Mapping[str, object] | None) -> dict[str, Any]:
    """Validate the caller's checkpoint metadata and return it in stored form.

    Args:
        metadata: None or a mapping with optional keys ``step`` (int >= 0), ``epoch`` (int >= 0) and
            ``metrics`` (mapping of str to float / one-element tensor).

    Returns:
        ``{"step": int | None, "epoch": int | None, "metrics": dict[str, float]}``.

    Raises:
        MisconfigurationException: naming the offending key and value and what to pass instead.
    """
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise MisconfigurationException(
            f"metadata must be a dict with keys {_METADATA_KEYS}, got {type(metadata).__name__}"
        )
    unknown = sorted(str(key) for key in metadata if key not in _METADATA_KEYS)
    if unknown:
        raise MisconfigurationException(
            f"metadata has unknown keys {unknown}; the allowed keys are {list(_METADATA_KEYS)} "
            "(store anything else in the checkpoint state itself)"
        )
    metrics = metadata.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise MisconfigurationException(
            f"metadata['metrics'] must be a dict of name -> float, got {type(metrics).__name__}"
        )
    for name in metrics:
        if not isinstance(name, str) or not name:
            raise MisconfigurationException(f"metadata['metrics'] keys must be non-empty str, got {name!r}")
    return {
        "step": _to_counter("step", metadata.get("step")),
        "epoch": _to_counter("epoch", metadata.get("epoch")),
        "metrics": {name: _to_float(name, value) for name, value in metrics.items()},
    }


def basename(path: str) -> str:
    """Last component of a local path or URL.

    Args:
        path: a path or URL.

    Returns:
        The file name.
    """
    return os.path.basename(path.rstrip("/"))


def age_key(record: CheckpointRecord) -> tuple[int, int, float, str]:
    """Sort key from oldest to newest: step (unknown first), then creation time, then name.

    Args:
        record: a checkpoint record.

    Returns:
        The key.
    """
    has_step = record.step is not None
    return (int(has_step), record.step if record.step is not None else 0, record.created, record.name)
