"""The save-time weights_only check agrees with torch's own weights-only unpickler."""

from __future__ import annotations

import collections
import enum
import io
import pickle
import types
from typing import Any

import pytest
import torch

from stepstone.checkpoint.safety import check_weights_only_safe


class Color(enum.IntEnum):
    RED = 1


class Config:
    def __init__(self) -> None:
        self.lr = 0.1


class MyTensor(torch.Tensor):
    pass


Point = collections.namedtuple("Point", "x y")


def _tensor_with_attribute(value: object) -> torch.Tensor:
    tensor = torch.ones(2)
    tensor.note = value  # type: ignore[attr-defined]
    return tensor


def _allowed() -> dict[str, Any]:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    shared = {"w": torch.ones(3)}
    return {
        "scalars": [None, True, 3, 2.5, 1 + 2j, "text", b"bytes", bytearray(b"ba")],
        "containers": (collections.OrderedDict(a=1), collections.Counter(a=2), {1, 2}, {(1, "k"): 3}),
        "torch_values": [
            torch.float16,
            torch.device("cpu"),
            torch.Size([2, 3]),
            torch.strided,
            torch.per_tensor_affine,
        ],
        "tensors": {
            "dense": torch.randn(3, 4),
            "view": torch.arange(10)[2:5],
            "parameter": torch.nn.Parameter(torch.ones(2)),
            "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
            "sparse": torch.ones(2, 2).to_sparse(),
            "quantized": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8),
            "meta": torch.empty(3, device="meta"),
            "bf16": torch.ones(2, dtype=torch.bfloat16),
            "with_attribute": _tensor_with_attribute({"safe": [1, 2]}),
        },
        "storage": torch.ones(2).untyped_storage(),
        "shared": [shared, shared],
        "cycle": cyclic,
    }


def _torch_accepts(obj: object) -> bool:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError:
        return False
    return True


@pytest.mark.filterwarnings("ignore:.*(quantized|TypedStorage).*:UserWarning")
def test_allowed_objects_pass_and_torch_loads_them() -> None:
    allowed = _allowed()
    check_weights_only_safe(allowed)
    for name, value in allowed.items():
        assert _torch_accepts({name: value}), name


REFUSED = {
    "custom class": Config(),
    "namedtuple": Point(1, 2),
    "int enum": Color.RED,
    "defaultdict": collections.defaultdict(int),
    "frozenset": frozenset({1}),
    "slice": slice(1, 2),
    "range": range(3),
    "tensor subclass": torch.ones(2).as_subclass(MyTensor),
    "tensor attribute": _tensor_with_attribute(Config()),
    "namespace": types.SimpleNamespace(a=1),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_objects_are_refused_by_torch_too(name: str) -> None:
    value = REFUSED[name]
    with pytest.raises(TypeError, match="not weights_only-safe"):
        check_weights_only_safe({"x": value})
    assert not _torch_accepts({"x": value})


def test_numpy_objects_are_refused_with_a_conversion_hint() -> None:
    numpy = pytest.importorskip("numpy")
    for value in (numpy.float64(1.0), numpy.ones(2)):
        with pytest.raises(TypeError, match=r"torch\.from_numpy"):
            check_weights_only_safe({"x": value})
        assert not _torch_accepts({"x": value})


def test_error_names_the_key_path() -> None:
    state = {"hyper_parameters": {"cfg": Config()}}
    with pytest.raises(TypeError) as error:
        check_weights_only_safe(state)
    message = str(error.value)
    assert message.startswith("checkpoint['hyper_parameters']['cfg']: object of type")
    assert "Config" in message and "vars(obj)" in message and "Nothing was written" in message


@pytest.mark.parametrize(
    ("state", "path"),
    [
        ({"a": [1, {"b": Config()}]}, "checkpoint['a'][1]['b']"),
        ({"t": _tensor_with_attribute(Config())}, "checkpoint['t'].note"),
        ({Config(): 1}, "checkpoint<key"),
        ({"s": {Color.RED}}, "checkpoint['s']{set item}"),
    ],
)
def test_error_paths_for_lists_attributes_keys_and_sets(state: dict[Any, Any], path: str) -> None:
    with pytest.raises(TypeError) as error:
        check_weights_only_safe(state)
    assert str(error.value).startswith(path)


def test_deep_nesting_does_not_hit_the_recursion_limit() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(20_000):
        node["n"] = {}
        node = node["n"]
    node["bad"] = Config()
    with pytest.raises(TypeError, match=r"\['bad'\]"):
        check_weights_only_safe(deep)


def test_root_name_is_used_in_the_path() -> None:
    with pytest.raises(TypeError, match=r"^state\['x'\]"):
        check_weights_only_safe({"x": Config()}, root="state")
