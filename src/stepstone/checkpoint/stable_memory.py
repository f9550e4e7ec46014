"""Which buffers stay valid for the whole save: the CPU tensor storages of the state being saved.

``torch.save`` passes the sink memoryviews that, in general, are only valid during the ``write`` call
(zip headers live in temporary strings). But when a memoryview points into a CPU storage of the state,
that memory is owned by the caller's state and stays valid, unchanged, until ``torch.save`` returns --
torch.save itself relies on that. For such buffers the sink may checksum them *after* ``write``
returns, so that stepstone's CRC runs while torch computes its own zip CRC of the next record instead of
after it. Anything not recognized (temporaries, copies of GPU tensors, sparse/quantized internals)
simply takes the synchronous path.

The address of a (read-only) memoryview is read through the C buffer protocol (``PyObject_GetBuffer``,
part of Python's stable ABI) with ctypes; where that is unavailable, no buffer is considered stable.
"""

from __future__ import annotations

import bisect
import ctypes
from collections import Counter, OrderedDict
from collections.abc import Callable

import torch

__all__ = ["StableMemory", "buffer_address", "memory_view"]


class _PyBuffer(ctypes.Structure):
    # The layout of Py_buffer (Include/pybuffer.h), stable across CPython 3.x.
    buf: int | None  # what ctypes returns for the c_void_p field below (None for NULL)
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


# PyObject_GetBuffer(view, byref(Py_buffer), flags) -> 0 on success; PyBuffer_Release(byref(Py_buffer)).
_GetBuffer = Callable[[memoryview, object, int], int]
_Release = Callable[[object], None]


def _buffer_api() -> tuple[_GetBuffer, _Release] | None:
    try:
        get_buffer = ctypes.pythonapi.PyObject_GetBuffer
        release = ctypes.pythonapi.PyBuffer_Release
    except (AttributeError, OSError):  # not CPython
        return None
    get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    get_buffer.restype = ctypes.c_int
    release.argtypes = [ctypes.POINTER(_PyBuffer)]
    release.restype = None
    return get_buffer, release


_API = _buffer_api()


def buffer_address(view: memoryview) -> int | None:
    """The address of the first byte of ``view``.

    Args:
        view: a contiguous memoryview.

    Returns:
        The address, or None when it cannot be determined.
    """
    if _API is None:
        return None
    get_buffer, release = _API
    info = _PyBuffer()
    if get_buffer(view, ctypes.byref(info), 0) != 0:
        return None
    try:
        return info.buf
    finally:
        release(ctypes.byref(info))


def _memory_api() -> Callable[[int, int, int], object] | None:
    try:
        from_memory = ctypes.pythonapi.PyMemoryView_FromMemory
    except (AttributeError, OSError):  # not CPython
        return None
    from_memory.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
    from_memory.restype = ctypes.py_object
    return from_memory


_FROM_MEMORY = _memory_api()
_PYBUF_READ = 0x100


def memory_view(address: int, nbytes: int) -> memoryview:
    """A read-only byte memoryview of ``nbytes`` at ``address``, without a copy.

    The view does not own the memory: the caller keeps its owner (a tensor storage) alive while it is used.

    Args:
        address: the first byte (e.g. ``UntypedStorage.data_ptr()`` of a CPU storage).
        nbytes: the length (> 0).

    Returns:
        The view, format ``"B"``.

    Raises:
        RuntimeError: on a Python without ``PyMemoryView_FromMemory`` (not CPython).
    """
    if _FROM_MEMORY is None:
        raise RuntimeError("PyMemoryView_FromMemory is not available on this Python")
    view = _FROM_MEMORY(address, nbytes, _PYBUF_READ)
    assert isinstance(view, memoryview)
    return view


def _storage_range(tensor: torch.Tensor) -> tuple[int, int] | None:
    if tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.is_quantized:
        return None
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # e.g. nested or wrapper tensors
        return None
    start = storage.data_ptr()
    return (start, start + storage.nbytes()) if storage.nbytes() and start else None


class StableMemory:
    """The address ranges of the CPU tensor storages reachable from a state.

    Args:
        state: the object being saved (already checked by ``safety.check_weights_only_safe``).
    """

    def __init__(self, state: object) -> None:
        ranges: set[tuple[int, int]] = set()
        seen: set[int] = set()
        stack = [state]
        while stack:
            item = stack.pop()
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, (dict, OrderedDict, Counter)):
                stack.extend(item.values())
            elif isinstance(item, (list, tuple, set)):
                stack.extend(item)
            elif isinstance(item, torch.Tensor):
                found = _storage_range(item)
                if found is not None:
                    ranges.add(found)
        merged = sorted(ranges)
        self._starts = [start for start, _ in merged]
        self._ends = [end for _, end in merged]

    def contains(self, view: memoryview) -> bool:
        """Whether all of ``view`` lies inside one of the storages.

        Args:
            view: a contiguous memoryview of bytes.

        Returns:
            True if the buffer stays valid until the save ends.
        """
        if not self._starts:
            return False
        address = buffer_address(view)
        if address is None:
            return False
        index = bisect.bisect_right(self._starts, address) - 1
        return index >= 0 and address + view.nbytes <= self._ends[index]
