"""Moving nested batches to a device (the ``meta`` device stands in for an accelerator)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, defaultdict, namedtuple

import torch

from stepstone.core.transfer import move_to_device

META = torch.device("meta")


def test_tensor_and_identity() -> None:
    x = torch.ones(2)
    assert move_to_device(x, torch.device("cpu")) is x  # already there: no copy
    assert move_to_device(x, META).device == META


def test_containers_keep_their_types() -> None:
    Pair = namedtuple("Pair", "a b")
    batch = {
        "list": [torch.ones(1), 3],
        "tuple": (torch.ones(1), "s"),
        "pair": Pair(torch.ones(1), None),
        "ordered": OrderedDict(x=torch.ones(1)),
    }
    moved = move_to_device(batch, META)
    assert type(moved) is dict
    assert type(moved["list"]) is list and moved["list"][0].device == META and moved["list"][1] == 3
    assert type(moved["tuple"]) is tuple and moved["tuple"][1] == "s"
    assert type(moved["pair"]) is Pair and moved["pair"].a.device == META and moved["pair"].b is None
    assert type(moved["ordered"]) is OrderedDict and moved["ordered"]["x"].device == META
    assert batch["list"][0].device == torch.device("cpu")  # the input is not modified


def test_special_mappings() -> None:
    from types import MappingProxyType

    counts = defaultdict(list, {"x": torch.ones(1)})
    moved = move_to_device(counts, META)
    assert type(moved) is defaultdict and moved.default_factory is list and moved["x"].device == META
    proxy = move_to_device(MappingProxyType({"x": torch.ones(1)}), META)
    assert proxy["x"].device == META


def test_dataclasses() -> None:
    @dataclasses.dataclass
    class Batch:
        x: torch.Tensor
        label: str
        cache: torch.Tensor = dataclasses.field(init=False, default_factory=lambda: torch.zeros(1))

    moved = move_to_device(Batch(torch.ones(2), "a"), META)
    assert isinstance(moved, Batch) and moved.x.device == META and moved.label == "a"


def test_other_objects_are_left_alone() -> None:
    class HasTo:
        def to(self, device: torch.device) -> None:
            raise AssertionError("not called")

    obj = HasTo()
    assert move_to_device(obj, META) is obj
    assert move_to_device("text", META) == "text"
    assert move_to_device(None, META) is None
