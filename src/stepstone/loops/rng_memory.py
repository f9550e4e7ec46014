"""Exact states of the process-global python ``random`` and numpy generators, read straight from their memory.

Why: a DataLoader worker reports its generator states with every batch it produces (``loops/worker_rng``).
``random.getstate()`` builds a tuple of 625 ints, which then has to be packed (~25 µs together), and numpy's
``np.random.get_state()`` copies its key array into a fresh ndarray through a dict (~35 µs): together 3% of
producing a batch of 64 CIFAR-sized images with a random crop and flip. Both generators keep their state in
fixed C structs inside their objects, and copying those bytes takes well under a microsecond:

- numpy's MT19937 ``key[624]`` and ``pos``: at the address that numpy's public ``BitGenerator.ctypes``
  interface gives (``state_address``).
- numpy's legacy cached gaussian (``has_gauss`` and ``gauss``, which ``np.random.normal`` and friends keep
  between calls): in the ``RandomState`` object, where no public accessor but ``get_state()`` reaches. It has to
  be read every time: consuming the cached gaussian (``has_gauss`` 1 -> 0) and ``set_state`` leave the MT19937
  bytes as they were, so unchanged MT19937 bytes do not prove an unchanged state.
- python's ``index`` and ``state[624]``: in the C part of the ``random.Random`` object; ``gauss_next`` is a
  plain attribute.

How it stays exact: nothing is assumed about where those bytes are. Each location is found by searching the
object's memory (``type(obj).__basicsize__`` bytes from ``id(obj)``, so nothing outside the object is read) for
the value ``getstate()``/``get_state()`` report, on a private probe generator set to distinctive states (a value
must occur exactly once and every probe state must read back exactly), and then confirmed once on the global
generator itself, again when numpy's global bit generator is replaced (``np.random.set_bit_generator``). On
anything unexpected -- another Python implementation, another layout, a bit generator other than MT19937, numpy
older than 1.25 (no ``np.random.get_bit_generator``) -- the public ``getstate()``/``get_state()`` are used, which
give the same values, only slower.
"""

from __future__ import annotations

import ctypes
import random
import struct
import sys
from array import array
from typing import Any

from stepstone.trainer.rng import numpy_global_state

__all__ = ["numpy_state", "python_state"]

_WORDS = 624  # both generators are a Mersenne twister: 624 32-bit words and a position
_KEY_BYTES = 4 * _WORDS
_INT = struct.Struct("@i")
# numpy's legacy gaussian cache (after the struct's leading pointer): int has_gauss, padding, double gauss.
_AUG = struct.Struct("@id")
_GAUSS_AT = struct.calcsize("@i0d")  # where the double starts within _AUG
# id() is an address only on CPython: elsewhere, never read memory.
_ON_CPYTHON = sys.implementation.name == "cpython"

PythonState = tuple[int, bytes, "float | None"]
NumpyState = tuple[str, bytes, int, int, float]


def python_state() -> PythonState:
    """The state of python's global ``random`` generator.

    Returns:
        ``(version, words, gauss_next)``: ``random.getstate()`` with its 625 ints (624 words, then the index)
        packed as native uint32 bytes (``array("I", ...).tobytes()``).
    """
    instance = getattr(random.getstate, "__self__", None)
    offset = _python_offset(instance)
    if offset is None or not isinstance(instance, random.Random):  # an offset is found only for a Random
        version, internal, gauss_next = random.getstate()
        return version, array("I", internal).tobytes(), gauss_next
    raw = ctypes.string_at(id(instance) + offset, 4 + _KEY_BYTES)  # the C int index, then the words
    return instance.VERSION, raw[4:] + raw[:4], instance.gauss_next  # type: ignore[attr-defined]  # typeshed omits it


def numpy_state(np: Any) -> NumpyState | dict[str, Any]:
    """The state of numpy's global (legacy) generator.

    Args:
        np: the numpy module.

    Returns:
        ``(kind, keys, pos, has_gauss, cached_gaussian)``: ``trainer.rng.numpy_global_state`` with the key
        array as native uint32 bytes; for a bit generator other than MT19937, its ``get_state`` dict.
    """
    reader = _numpy_reader(np)
    if reader is None:
        full = numpy_global_state(np)
        if isinstance(full, dict):  # a bit generator other than MT19937: its own state dict (picklable)
            return full
        kind, keys, pos, has_gauss, cached = full
        return str(kind), keys.tobytes(), int(pos), int(has_gauss), float(cached)
    return reader.read()


# (instance, offset of its index and words or None when they cannot be read), for the instance last seen.
_python_cache: tuple[object, int | None] | None = None


def _python_offset(instance: object) -> int | None:
    global _python_cache
    if _python_cache is None or _python_cache[0] is not instance:
        _python_cache = (instance, _find_python_offset(instance))
    return _python_cache[1]


def _find_python_offset(instance: object) -> int | None:
    if not _ON_CPYTHON or not isinstance(instance, random.Random):
        return None
    probe = random.Random(20261204)
    probe.random()  # an index other than the seeding's
    offset = _locate_python(probe)
    return offset if offset is not None and _locate_python(instance) == offset else None


def _locate_python(generator: random.Random) -> int | None:
    _, internal, _ = generator.getstate()
    wanted = array("I", internal[-1:] + internal[:-1]).tobytes()  # index, then the words, as in the C struct
    return _find_once(ctypes.string_at(id(generator), type(generator).__basicsize__), wanted)


def _find_once(haystack: bytes, needle: bytes) -> int | None:
    at = haystack.find(needle)
    return at if at >= 0 and haystack.find(needle, at + 1) < 0 else None


class _NumpyReader:
    """Reads the legacy global generator: MT19937 bytes at ``state_address``, the gaussian cache in ``legacy``."""

    def __init__(self, legacy: Any, bit_generator: Any, aug_offset: int) -> None:
        # The references keep both objects (and so the addresses) alive for as long as this reader exists.
        self.legacy, self.bit_generator = legacy, bit_generator
        self.key_address = int(bit_generator.ctypes.state_address)
        self.aug_address = id(legacy) + aug_offset

    def read(self) -> NumpyState:
        raw = ctypes.string_at(self.key_address, _KEY_BYTES + _INT.size)
        has_gauss, gauss = _AUG.unpack(ctypes.string_at(self.aug_address, _AUG.size))
        return "MT19937", raw[:_KEY_BYTES], _INT.unpack_from(raw, _KEY_BYTES)[0], has_gauss, gauss


# (legacy generator, bit generator, reader or None), for the pair last seen; the gaussian cache's offset in a
# RandomState (None: not found), found once per process.
_numpy_cache: tuple[Any, Any, _NumpyReader | None] | None = None
_aug_offset: int | None = None
_aug_searched = False


def _numpy_reader(np: Any) -> _NumpyReader | None:
    global _numpy_cache
    legacy = getattr(np.random.get_state, "__self__", None)
    get_bit_generator = getattr(np.random, "get_bit_generator", None)
    bit_generator = get_bit_generator() if get_bit_generator is not None else None
    cache = _numpy_cache
    if cache is None or cache[0] is not legacy or cache[1] is not bit_generator:
        cache = _numpy_cache = (legacy, bit_generator, _make_numpy_reader(np, legacy, bit_generator))
    return cache[2]


def _make_numpy_reader(np: Any, legacy: Any, bit_generator: Any) -> _NumpyReader | None:
    global _aug_offset, _aug_searched
    if not _ON_CPYTHON or type(legacy) is not np.random.RandomState:
        return None
    if type(bit_generator) is not np.random.MT19937:
        return None
    if not _aug_searched:
        _aug_offset, _aug_searched = _find_aug_offset(np), True
    if _aug_offset is None:
        return None
    reader = _NumpyReader(legacy, bit_generator, _aug_offset)
    # The one check on the global generator itself: the same values as get_state.
    kind, keys, pos, has_gauss, cached = legacy.get_state(legacy=True)
    expected = (str(kind), keys.tobytes(), int(pos), int(has_gauss), float(cached))
    return reader if _same(reader.read(), expected) else None


def _find_aug_offset(np: Any) -> int | None:
    """Where a RandomState keeps ``has_gauss`` and ``gauss``, found on a private probe set to distinctive values."""
    probe = np.random.RandomState(np.random.MT19937(0))
    kind, keys, pos, _, _ = probe.get_state(legacy=True)
    size = type(probe).__basicsize__
    cases = ((1, 0.6180339887498949), (0, -1234.5678901234567), (1, 2.5e-300), (0, 0.0), (1, 0.0))
    offset: int | None = None
    for has_gauss, gauss in cases:
        probe.set_state((kind, keys, pos, has_gauss, gauss))
        raw = ctypes.string_at(id(probe), size)
        if offset is None:
            at = _find_once(raw, struct.pack("@d", gauss))
            if at is None or at < _GAUSS_AT or at - _GAUSS_AT + _AUG.size > size:
                return None
            offset = at - _GAUSS_AT
        if _AUG.unpack_from(raw, offset) != (has_gauss, gauss):
            return None
    return offset


def _same(read: NumpyState, expected: NumpyState) -> bool:
    # The gaussian compared as bytes: a NaN (which set_state accepts) is not equal to itself.
    return read[:4] == expected[:4] and struct.pack("@d", read[4]) == struct.pack("@d", expected[4])
