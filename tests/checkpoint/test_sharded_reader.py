"""load_sharded reads each file of a sharded checkpoint once, and that read is its verification."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

from read_counting import count_reads
from stepstone.checkpoint import sharded as sharded_module
from stepstone.checkpoint.private_apis import StorageLocation
from stepstone.checkpoint.sharded import MARKER_NAME, META_NAME, load_sharded, save_sharded
from stepstone.checkpoint.sharded_commit import write_marker
from stepstone.checkpoint.sharded_reader import VerifyingReader
from stepstone.errors import CheckpointCorruptError


def _state(value: float) -> dict[str, Any]:
    return {
        "state_dict": {"w": torch.full((64, 32), value), "b": torch.arange(5.0) + value},
        "optimizer_states": [
            {"state": {"w": {"step": torch.tensor(value)}}, "param_groups": [{"lr": value}]}
        ],
        "epoch": int(value),
        "loops": {"fit": {"batch": int(value)}},
    }


def _template() -> dict[str, Any]:
    return {
        "state_dict": {"w": torch.zeros(64, 32), "b": torch.zeros(5)},
        "optimizer_states": [{"state": {"w": {"step": torch.tensor(0.0)}}, "param_groups": [{"lr": 0.0}]}],
    }


def _sizes(path: Path) -> dict[str, int]:
    files = json.loads((path / MARKER_NAME).read_text())["files"]
    return {name: entry["size"] for name, entry in files.items()}


def _flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x40
    path.write_bytes(bytes(data))


def _shard(path: Path) -> Path:
    (shard,) = path.glob("*.distcp")
    return shard


def test_each_file_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "one.ckpt"
    save_sharded(path, _state(3.0))
    reads = count_reads(monkeypatch, path)
    loaded = load_sharded(path, _template())
    assert torch.equal(loaded["state_dict"]["w"], torch.full((64, 32), 3.0)) and loaded["epoch"] == 3
    assert loaded["optimizer_states"][0]["param_groups"] == [{"lr": 3.0}]
    sizes = _sizes(path)
    # Every file of the marker, each once (a verify pass, then torch's read, read them 2-3 times).
    assert {name: reads[name] for name in sizes} == sizes


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_damaged_shard_is_named_and_a_good_load_overwrites_the_partial_fill(
    tmp_path: Path, where: str
) -> None:
    good, bad = tmp_path / "good.ckpt", tmp_path / "bad.ckpt"
    save_sharded(good, _state(1.0))
    save_sharded(bad, _state(2.0))
    shard = _shard(bad)
    size = shard.stat().st_size
    # start: the first item's zip header (torch.load fails on it); end: after every item was served.
    _flip(shard, {"start": 0, "middle": size // 2, "end": size - 1}[where])
    template = _template()
    with pytest.raises(CheckpointCorruptError, match=rf"{shard.name}.*CRC32 mismatch") as caught:
        load_sharded(bad, template)
    assert caught.value.path == str(shard)
    if where == "end":  # the items were copied before the last byte showed the damage
        assert torch.equal(template["state_dict"]["w"], torch.full((64, 32), 2.0))
    loaded = load_sharded(good, template)  # the fallback's load fills every entry again
    expected = _state(1.0)
    assert torch.equal(loaded["state_dict"]["w"], expected["state_dict"]["w"])
    assert torch.equal(loaded["state_dict"]["b"], expected["state_dict"]["b"])
    assert torch.equal(loaded["optimizer_states"][0]["state"]["w"]["step"], torch.tensor(1.0))


@pytest.mark.parametrize("name", [".metadata", META_NAME])
def test_damaged_metadata_and_meta_are_named(tmp_path: Path, name: str) -> None:
    path = tmp_path / "x.ckpt"
    save_sharded(path, _state(1.0))
    _flip(path / name, (path / name).stat().st_size // 2)
    with pytest.raises(CheckpointCorruptError, match=rf"x\.ckpt/{name}.*CRC32 mismatch"):
        load_sharded(path, _template())


def test_a_truncated_or_missing_shard_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    save_sharded(path, _state(1.0))
    shard = _shard(path)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointCorruptError, match=rf"{shard.name}.*its size is {len(data) // 2} bytes"):
        load_sharded(path, _template())
    shard.unlink()
    with pytest.raises(CheckpointCorruptError, match=rf"{shard.name}.*missing"):
        load_sharded(path, _template())


def test_without_verification_damage_is_not_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.ckpt"
    save_sharded(path, _state(1.0))
    _flip(_shard(path), _shard(path).stat().st_size - 1)  # the last item's zip trailer: it still loads
    reads = count_reads(monkeypatch, path)
    loaded = load_sharded(path, _template(), verify=False)
    assert torch.equal(loaded["state_dict"]["w"], torch.full((64, 32), 1.0))
    assert reads[_shard(path).name] == _shard(path).stat().st_size  # its items, once; no checksum


def test_a_torch_without_the_storage_fields_takes_two_verified_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.ckpt"
    save_sharded(path, _state(1.0))
    monkeypatch.setattr(sharded_module, "storage_locations", lambda storage_data: None)
    reads = count_reads(monkeypatch, path)
    loaded = load_sharded(path, _template())
    assert torch.equal(loaded["state_dict"]["w"], torch.full((64, 32), 1.0))
    shard = _shard(path)
    assert reads[shard.name] >= 2 * shard.stat().st_size  # checked, then read by torch's own reader
    _flip(shard, shard.stat().st_size - 1)
    with pytest.raises(CheckpointCorruptError, match=rf"{shard.name}.*CRC32 mismatch"):
        load_sharded(path, _template())


def test_the_corrupt_error_survives_pickling_between_ranks() -> None:
    error = pickle.loads(pickle.dumps(CheckpointCorruptError("/x/__1_0.distcp", "CRC32 mismatch")))
    assert isinstance(error, CheckpointCorruptError)
    assert (error.path, error.reason) == ("/x/__1_0.distcp", "CRC32 mismatch")


def test_each_file_gets_one_verifier_the_rank_reading_most_of_it() -> None:
    index = [MetadataIndex(f"t{i}") for i in range(3)]
    locations = {
        index[0]: StorageLocation("__0_0.distcp", 0, 100),
        index[1]: StorageLocation("__1_0.distcp", 0, 400),
        index[2]: StorageLocation("__1_0.distcp", 400, 8),
    }

    def plan(*indices: MetadataIndex) -> LoadPlan:
        size = torch.Size([1])
        items = [ReadItem(LoadItemType.TENSOR, i, size, i, size, size) for i in indices]
        return LoadPlan(items)

    files = {name: {"size": 0, "crc32": "0"} for name in ("__0_0.distcp", "__1_0.distcp", "__2_0.distcp")}
    reader = VerifyingReader("/x", Metadata({}), locations, files)
    # Rank 0 needs a few bytes of rank 1's file; no rank reads __2_0: rank 0 verifies it.
    plans = reader.prepare_global_plan([plan(index[0], index[2]), plan(index[1])])
    assert [p.storage_data for p in plans] == [("__0_0.distcp", "__2_0.distcp"), ("__1_0.distcp",)]
    assert [p.items for p in plans] == [plan(index[0], index[2]).items, plan(index[1]).items]


def test_a_file_no_item_needs_is_verified_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.ckpt"
    save_sharded(path, _state(1.0))
    (path / "__7_0.distcp").write_bytes(b"written by a rank whose items were all deduplicated away")
    write_marker(str(path), {})  # listed, with its checksum, as the save would list it
    reads = count_reads(monkeypatch, path)
    load_sharded(path, _template())
    assert reads["__7_0.distcp"] == (path / "__7_0.distcp").stat().st_size
    _flip(path / "__7_0.distcp", 3)
    with pytest.raises(CheckpointCorruptError, match=r"__7_0\.distcp.*CRC32 mismatch"):
        load_sharded(path, _template())


def test_a_shard_the_marker_does_not_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    save_sharded(path, _state(1.0))
    marker = json.loads((path / MARKER_NAME).read_text())
    shard = _shard(path)
    del marker["files"][shard.name]  # e.g. a file swapped in after the commit, under a name the marker lacks
    (path / MARKER_NAME).write_text(json.dumps(marker))
    with pytest.raises(CheckpointCorruptError, match=rf"{shard.name}.*commit marker does not"):
        load_sharded(path, _template())
