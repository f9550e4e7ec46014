"""The private torch/fsspec names stepstone relies on: probed in one place, with a fallback or a clear error."""

from __future__ import annotations

import itertools
import types
from pathlib import Path

import fsspec
import pytest
import torch
from torch.utils.data import DataLoader

from stepstone.checkpoint import load_file, private_apis, save_file, torch_zip, verify_file
from stepstone.checkpoint.private_apis import (
    PrivateApiChanged,
    fsspec_in_transaction,
    index_sampler,
    persistent_iterator,
    serialization_supported,
    set_index_sampler,
    skip_data_active,
    storage_locations,
    tensor_use_count,
)
from stepstone.errors import MisconfigurationException


@pytest.mark.parametrize("name", ["_save", "_get_storage_alignment", "_serialization_tls"])
def test_a_missing_serialization_name_falls_back_to_torch_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    assert serialization_supported() and torch_zip.supported()
    kept = {
        n: getattr(torch.serialization, n) for n in ("_save", "_get_storage_alignment", "_serialization_tls")
    }
    del kept[name]  # a torch without this private name (torch.save itself still has its own)
    monkeypatch.setattr(private_apis, "_torch_serialization", types.SimpleNamespace(**kept))
    assert not serialization_supported()
    assert not torch_zip.supported()  # False, not an AttributeError
    assert not skip_data_active()
    state = {"w": torch.arange(6.0)}
    save_file(tmp_path / "a.ckpt", state, metadata={"step": 1})
    assert verify_file(tmp_path / "a.ckpt").step == 1
    assert torch.equal(load_file(tmp_path / "a.ckpt")["w"], state["w"])


def test_the_reference_serializer_is_chosen_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert torch_zip.serializer() == "fast"
    monkeypatch.setenv("STEPSTONE_SERIALIZER", "reference")
    assert torch_zip.serializer() == "reference" and not torch_zip.supported()
    monkeypatch.setenv("STEPSTONE_SERIALIZER", "fastest")
    with pytest.raises(MisconfigurationException, match=r"STEPSTONE_SERIALIZER='fastest'.*'reference'"):
        torch_zip.supported()


def test_both_serializers_write_files_torch_loads_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"w": torch.randn(4, 5), "n": 3, "nested": [torch.arange(3)]}
    paths = {}
    for name in ("fast", "reference"):
        monkeypatch.setenv("STEPSTONE_SERIALIZER", name)
        paths[name] = tmp_path / f"{name}.ckpt"
        save_file(paths[name], state, metadata={"step": 2})
        assert verify_file(paths[name]).step == 2
    fast, reference = (torch.load(paths[n], weights_only=True) for n in ("fast", "reference"))
    assert torch.equal(fast["w"], reference["w"]) and fast["n"] == reference["n"] == 3
    assert torch.equal(fast["nested"][0], reference["nested"][0])


def test_a_missing_use_count_names_the_name_and_the_fix() -> None:
    assert tensor_use_count(torch.ones(1)) >= 1
    with pytest.raises(
        PrivateApiChanged, match=r"torch\.Tensor\._use_count.*torch 2\.\d+.*pip install 'torch<"
    ):
        tensor_use_count(types.SimpleNamespace())  # type: ignore[arg-type]


def test_data_loader_internals_are_probed() -> None:
    loader = DataLoader(list(range(8)), batch_size=2, num_workers=1, persistent_workers=True)
    assert persistent_iterator(loader) is None  # no iterator before the first epoch
    assert persistent_iterator(DataLoader(list(range(8)))) is None  # no persistent workers: nothing kept
    del loader._iterator
    with pytest.raises(PrivateApiChanged, match=r"DataLoader\._iterator"):
        persistent_iterator(loader)
    iterator = types.SimpleNamespace(_index_sampler="a")
    set_index_sampler(iterator, "b")
    assert index_sampler(iterator) == "b"
    with pytest.raises(PrivateApiChanged, match=r"_index_sampler"):
        index_sampler(object())


def test_fsspec_transactions_are_probed() -> None:
    fs = fsspec.filesystem("memory")
    assert not fsspec_in_transaction(fs)
    with fs.transaction:
        assert fsspec_in_transaction(fs)
    with pytest.raises(PrivateApiChanged, match=r"fsspec\.AbstractFileSystem\._intrans.*fsspec"):
        fsspec_in_transaction(object())


def test_the_worker_iterator_internals_are_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data import dataloader

    assert private_apis.worker_iterator_base() is dataloader._MultiProcessingDataLoaderIter
    monkeypatch.delattr(dataloader._MultiProcessingDataLoaderIter, "_try_put_index")
    with pytest.raises(private_apis.PrivateApiChanged, match=r"_try_put_index.*torch"):
        private_apis.worker_iterator_base()


def test_a_worker_iterator_without_its_cycle_names_it() -> None:
    with pytest.raises(private_apis.PrivateApiChanged, match="_worker_queue_idx_cycle"):
        private_apis.turn_worker_cycle(object(), 1)


def test_storage_entries_of_a_sharded_checkpoint_are_probed(tmp_path: Path) -> None:
    from stepstone.checkpoint.sharded import save_sharded
    from stepstone.checkpoint.sharded_reading import check_metadata_safe

    save_sharded(tmp_path / "x.ckpt", {"state_dict": {"w": torch.ones(3), "b": torch.zeros(2)}})
    storage_data = check_metadata_safe(str(tmp_path / "x.ckpt")).storage_data
    locations = storage_locations(storage_data)
    assert locations is not None and locations.keys() == storage_data.keys()
    ends = sorted((where.offset, where.offset + where.length) for where in locations.values())
    assert {where.relative_path for where in locations.values()} == {"__0_0.distcp"}
    assert ends[0][0] == 0 and all(a[1] <= b[0] for a, b in itertools.pairwise(ends))
    # A renamed field, or bytes behind stream transforms: None (the load then takes two verified passes).
    index = next(iter(storage_data))
    renamed = types.SimpleNamespace(path="__0_0.distcp", offset=0, length=1)
    assert storage_locations({index: renamed}) is None
    transformed = types.SimpleNamespace(relative_path="a", offset=0, length=1, transform_descriptors=["zstd"])
    assert storage_locations({index: transformed}) is None
    assert storage_locations(None) is None
