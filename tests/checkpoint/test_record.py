"""Checkpoint records and the metadata schema validated at the boundary."""

from __future__ import annotations

import math

import pytest
import torch

from stepstone.checkpoint.record import (
    CheckpointRecord,
    age_key,
    basename,
    decode_metrics,
    encode_metrics,
    normalize_metadata,
)
from stepstone.errors import MisconfigurationException


def test_normalize_metadata_accepts_numbers_and_one_element_tensors() -> None:
    meta = normalize_metadata({"step": 10, "epoch": 2, "metrics": {"loss": torch.tensor(0.5), "acc": 1}})
    assert meta == {"step": 10, "epoch": 2, "metrics": {"loss": 0.5, "acc": 1.0}}
    assert normalize_metadata(None) == {"step": None, "epoch": None, "metrics": {}}


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({"stepp": 1}, "unknown keys ['stepp']"),
        ({"step": -1}, "metadata['step'] = -1"),
        ({"step": True}, "metadata['step'] = True"),
        ({"epoch": 1.5}, "metadata['epoch'] = 1.5"),
        ({"metrics": {"loss": "low"}}, "metadata['metrics']['loss'] = 'low'"),
        ({"metrics": {"loss": torch.ones(2)}}, "one-element tensor"),
        ({"metrics": [1.0]}, "must be a dict"),
        ({"metrics": {"": 1.0}}, "non-empty str"),
        ([("step", 1)], "must be a dict"),
    ],
)
def test_normalize_metadata_rejects_bad_values_naming_them(metadata: object, fragment: str) -> None:
    with pytest.raises(MisconfigurationException) as error:
        normalize_metadata(metadata)  # type: ignore[arg-type]
    assert fragment in str(error.value)


def test_metrics_round_trip_through_standard_json_including_non_finite() -> None:
    metrics = {"a": 1.5, "nan": math.nan, "inf": math.inf, "ninf": -math.inf}
    encoded = encode_metrics(metrics)
    assert encoded == {"a": 1.5, "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity"}
    decoded = decode_metrics(encoded)
    assert decoded["a"] == 1.5 and math.isnan(decoded["nan"]) and decoded["inf"] == math.inf
    with pytest.raises(ValueError, match="non-numeric"):
        decode_metrics({"x": "high"})
    with pytest.raises(ValueError, match="JSON object"):
        decode_metrics([1])


def test_record_json_round_trip_and_schema_errors() -> None:
    record = CheckpointRecord(
        path="/d/a.ckpt",
        name="a.ckpt",
        size=10,
        step=3,
        epoch=None,
        metrics={"l": math.inf},
        created=12.5,
        verified=True,
        format_version=1,
        digest="00ff00ff",
    )
    back = CheckpointRecord.from_json(record.to_json(), "/d/a.ckpt")
    assert back == CheckpointRecord(**{**record.__dict__, "verified": False})
    broken = record.to_json()
    broken["size"] = "10"
    with pytest.raises(ValueError, match="size"):
        CheckpointRecord.from_json(broken, "/d/a.ckpt")
    broken = record.to_json()
    broken["step"] = True
    with pytest.raises(ValueError, match="step"):
        CheckpointRecord.from_json(broken, "/d/a.ckpt")


def test_age_key_orders_by_step_then_time_with_unknown_steps_oldest() -> None:
    def rec(name: str, step: int | None, created: float) -> CheckpointRecord:
        return CheckpointRecord(path=name, name=name, size=1, step=step, epoch=None, created=created)

    records = [rec("c", 5, 1.0), rec("legacy", None, 99.0), rec("a", 5, 0.5), rec("b", 7, 0.0)]
    assert [r.name for r in sorted(records, key=age_key)] == ["legacy", "a", "c", "b"]


def test_basename_handles_paths_and_urls() -> None:
    assert basename("/x/y/z.ckpt") == "z.ckpt"
    assert basename("s3://bucket/run/z.ckpt") == "z.ckpt"
