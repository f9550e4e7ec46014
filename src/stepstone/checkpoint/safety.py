"""Refuses, before anything is written, a state that ``torch.load(weights_only=True)`` could not read back.

stepstone promises that every checkpoint it writes loads with ``weights_only=True`` (no code from the
file is ever executed). torch only discovers a non-allowlisted object when *loading*; this module finds
it when *saving*, by walking the structure (not the tensor data, so it is cheap) and naming the key path
of the first offending object.

The allowlist mirrors torch's default weights-only unpickler (``torch._weights_only_unpickler``, checked
against torch 2.13): plain containers (dict, OrderedDict, Counter, list, tuple, set), scalars (None, bool,
int, float, complex, str, bytes, bytearray), torch.Tensor / torch.nn.Parameter (dense, sparse, quantized,
nested, meta, any device, and their Python attributes if those are safe), storages, torch.Size,
torch.dtype, torch.device, torch.layout and torch.qscheme. Exact types are required: a subclass (a
namedtuple, an IntEnum, a numpy scalar, a defaultdict) is pickled by reference to its class, which the
weights-only unpickler refuses. Globals registered with ``torch.serialization.add_safe_globals`` are
deliberately not accepted: a plain ``torch.load(path, weights_only=True)`` elsewhere would refuse them.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

import torch

__all__ = ["check_weights_only_safe"]

_ATOMS: frozenset[type] = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        bytearray,
        torch.dtype,
        torch.device,
        torch.layout,
        torch.qscheme,
    }
)
_MAPPINGS: frozenset[type] = frozenset({dict, OrderedDict, Counter})
_SEQUENCES: frozenset[type] = frozenset({list, tuple, set, torch.Size})
_TENSORS: frozenset[type] = frozenset({torch.Tensor, torch.nn.Parameter})

# A node of the key path: (parent node, accessor text). Built as a linked list so that the walk costs
# nothing per element; the path string is only assembled for the error message.
_PathNode = tuple[Any, str]


def _render(node: _PathNode | None) -> str:
    parts: list[str] = []
    while node is not None:
        node, accessor = node
        parts.append(accessor)
    return "".join(reversed(parts))


def _hint(obj: object) -> str:
    if isinstance(obj, torch.Tensor):
        return "convert it to a plain tensor (torch.Tensor) or save its components separately"
    module = type(obj).__module__
    if module.startswith("numpy"):
        return "convert it with torch.from_numpy(...) or .item()/.tolist()"
    if isinstance(obj, (tuple, list, dict, set, frozenset)):
        return "convert it to a plain dict/list/tuple/set (e.g. dict(x), list(x), x._asdict())"
    return "convert it to a dict, list, str, number or tensor (e.g. vars(obj), dataclasses.asdict(obj), str(obj))"


def _unsafe(obj: object, node: _PathNode | None) -> TypeError:
    kind = type(obj)
    name = f"{kind.__module__}.{kind.__qualname__}"
    return TypeError(
        f"{_render(node)}: object of type {name} is not weights_only-safe (torch.load(..., weights_only=True) "
        f"would refuse to load it); {_hint(obj)} before saving. Nothing was written."
    )


def _children(obj: object, kind: type, node: _PathNode) -> list[tuple[object, _PathNode]]:
    """The objects contained in ``obj`` with their key paths (empty for atoms)."""
    if kind in _MAPPINGS:
        assert isinstance(obj, dict)
        pairs: list[tuple[object, _PathNode]] = []
        for key, value in obj.items():
            pairs.append((key, (node, f"<key {key!r}>")))
            pairs.append((value, (node, f"[{key!r}]")))
        return pairs
    if kind in _SEQUENCES:
        assert isinstance(obj, (list, tuple, set))
        if kind is set:
            return [(item, (node, "{set item}")) for item in obj]
        return [(item, (node, f"[{index}]")) for index, item in enumerate(obj)]
    if kind in _TENSORS:
        # Python attributes set on a tensor are pickled with it (torch._tensor._rebuild_from_type_v2).
        attributes = getattr(obj, "__dict__", None) or {}
        return [(value, (node, f".{name}")) for name, value in attributes.items()]
    return []


def check_weights_only_safe(obj: object, root: str = "checkpoint") -> None:
    """Raise if ``torch.load(weights_only=True)`` would refuse any object inside ``obj``.

    Args:
        obj: the state about to be saved.
        root: name used for ``obj`` in the key path of the error message.

    Raises:
        TypeError: naming the key path (e.g. ``checkpoint['hyper_parameters']['cfg']``), the offending
            type and how to convert it.
    """
    seen: set[int] = set()  # containers already walked: shared references and cycles are walked once
    stack: list[tuple[object, _PathNode]] = [(obj, (None, root))]
    while stack:
        item, node = stack.pop()
        kind = type(item)
        if kind in _ATOMS:
            continue
        if isinstance(item, (torch.UntypedStorage, torch.storage.TypedStorage)):
            continue
        if kind not in _MAPPINGS and kind not in _SEQUENCES and kind not in _TENSORS:
            raise _unsafe(item, node)
        if id(item) in seen:
            continue
        seen.add(id(item))
        stack.extend(reversed(_children(item, kind, node)))
