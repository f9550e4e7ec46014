"""The disk's write limit for a checkpoint's bytes, to compare saves with (helper of save_load and async).

A naive "write everything, then fsync" is not a limit: it hands the disk the whole file as one burst at the
fsync, while the engine's ``FdOutput`` asks the kernel to start writing back every ``WRITEBACK_EVERY`` bytes,
so a save can beat it. The two limits here cannot be beaten that way:

- ``early writeback``: plain ``os.write`` of the same bytes through the engine's own ``FdOutput`` (so the
  same ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` cadence), then fsync;
- ``O_DIRECT``: the bytes copied into two page-aligned anonymous buffers (``mmap``) and written from them with
  ``O_DIRECT`` by a second thread while the next block is filled (the page cache is bypassed), the unaligned
  tail written without ``O_DIRECT``, then fsync. Filesystems that refuse ``O_DIRECT`` (tmpfs: EINVAL) make
  ``DirectIOUnavailable``, reported with its reason.

Every writer takes the tensors and the total size to write: the tensor bytes are followed by zeros up to
``total`` so that the limits write exactly as many bytes as the checkpoint file they are compared with.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch

try:  # the engine's writer, so that the cadence is the engine's by construction
    from stepstone.checkpoint.outputs import WRITEBACK_EVERY, FdOutput
except ImportError:  # a tree without it: plain writes (the label says which cadence was used)
    FdOutput = None  # type: ignore[assignment,misc]
    WRITEBACK_EVERY = 0

#: Bytes per ``O_DIRECT`` write; a multiple of the page size.
DIRECT_BLOCK = 8 * 1024 * 1024
#: Alignment of ``O_DIRECT`` offsets and lengths (the page size covers every logical block size in use).
_ALIGN = mmap.PAGESIZE
_ZEROS = bytes(1024 * 1024)


class DirectIOUnavailable(OSError):
    """The filesystem refuses ``O_DIRECT`` (the message says why)."""


def filesystem_of(path: str) -> str:
    """The filesystem ``path`` lies on, as ``"TYPE (DEVICE on MOUNTPOINT)"`` from ``/proc/mounts``.

    Args:
        path: a file or folder.

    Returns:
        The description, or ``"unknown"`` where ``/proc/mounts`` cannot be read.
    """
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                device, mountpoint, kind = line.split()[:3]
                mountpoint = mountpoint.replace("\\040", " ")
                inside = real == mountpoint or real.startswith(mountpoint.rstrip("/") + "/")
                if inside and (best is None or len(mountpoint) >= len(best[1])):
                    best = (device, mountpoint, kind)
    except OSError:
        return "unknown"
    if best is None:
        return "unknown"
    free = os.statvfs(real)
    return f"{best[2]} ({best[0]} on {best[1]}, {free.f_bavail * free.f_frsize / 1024**3:.0f} GiB free)"


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors' data."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _pieces(tensors: Iterable[torch.Tensor], total: int | None) -> Iterator[memoryview]:
    """The tensors' bytes, then zeros up to ``total`` bytes (None: no padding)."""
    written = 0
    for tensor in tensors:
        view = memoryview(tensor.detach().contiguous().numpy()).cast("B")
        written += view.nbytes
        yield view
    missing = 0 if total is None else total - written
    if missing < 0:
        raise ValueError(f"total={total} is below the tensors' {written} bytes; pass total >= their size")
    while missing > 0:
        take = min(missing, len(_ZEROS))
        yield memoryview(_ZEROS)[:take]
        missing -= take


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def write_naive(tensors: Iterable[torch.Tensor], path: str, total: int | None = None) -> None:
    """``os.write`` of every byte, then one fsync (no early writeback: a save can beat this; informational).

    Args:
        tensors: the tensors whose bytes are written, in order.
        path: the file to create (truncated if it exists).
        total: bytes to write in all (zeros after the tensors); None: the tensors' bytes.
    """
    _write_then_fsync(tensors, path, total, early_writeback=False)


def write_early_writeback(tensors: Iterable[torch.Tensor], path: str, total: int | None = None) -> None:
    """``os.write`` through the engine's ``FdOutput`` (writeback started every 64 MiB), then fsync.

    Args: as for :func:`write_naive`.
    """
    _write_then_fsync(tensors, path, total, early_writeback=True)


def _write_then_fsync(
    tensors: Iterable[torch.Tensor], path: str, total: int | None, early_writeback: bool
) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        output = FdOutput(fd) if early_writeback and FdOutput is not None else None
        for piece in _pieces(tensors, total):
            if output is not None:
                output.write_all(piece)
            else:
                _write_all(fd, piece)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_direct(
    tensors: Iterable[torch.Tensor], path: str, total: int | None = None, block: int = DIRECT_BLOCK
) -> None:
    """``O_DIRECT`` writes of ``block`` bytes from page-aligned buffers (double-buffered), then fsync.

    Args:
        tensors: the tensors whose bytes are written, in order.
        path: the file to create (truncated if it exists).
        total: bytes to write in all (zeros after the tensors); None: the tensors' bytes.
        block: bytes per ``O_DIRECT`` write, a multiple of the page size.

    Raises:
        DirectIOUnavailable: the filesystem refuses ``O_DIRECT`` (e.g. tmpfs); the file is removed.
        ValueError: ``block`` is not a positive multiple of the page size.
    """
    if block <= 0 or block % _ALIGN:
        raise ValueError(f"block={block} must be a positive multiple of the page size {_ALIGN}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(path, flags | os.O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise DirectIOUnavailable(exc.errno, f"O_DIRECT refused by the filesystem of {path}") from exc
        raise
    buffers = [mmap.mmap(-1, block), mmap.mmap(-1, block)]  # anonymous mappings are page-aligned
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="direct-write") as pool:
            filled = _fill_and_write(fd, tensors, total, buffers, pool)
        _write_tail(fd, buffers[0], filled)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        fd = -1
        os.remove(path)
        if exc.errno == errno.EINVAL:
            raise DirectIOUnavailable(exc.errno, f"O_DIRECT write refused on {path}: {exc}") from exc
        raise
    finally:
        if fd >= 0:
            os.close(fd)
        for buffer in buffers:
            buffer.close()


def _fill_and_write(
    fd: int,
    tensors: Iterable[torch.Tensor],
    total: int | None,
    buffers: list[mmap.mmap],
    pool: ThreadPoolExecutor,
) -> int:
    """Fill the buffers in turn, each full one written on ``pool`` while the other fills.

    Returns how many bytes of the tail are left in ``buffers[0]`` (every full block is written).
    """
    block = len(buffers[0])
    pending: list[Future[None] | None] = [None, None]
    current, filled = 0, 0
    for piece in _pieces(tensors, total):
        while piece:
            take = min(block - filled, piece.nbytes)
            buffers[current][filled : filled + take] = piece[:take]
            piece, filled = piece[take:], filled + take
            if filled == block:
                pending[current] = pool.submit(_write_buffer, fd, buffers[current], block)
                current, filled = 1 - current, 0
                waiting = pending[current]
                if waiting is not None:
                    waiting.result()
    other = pending[1 - current]
    if other is not None:
        other.result()
    if current == 1 and filled:
        buffers[0][:filled] = buffers[1][:filled]
    return filled


def _write_buffer(fd: int, buffer: mmap.mmap, size: int) -> None:
    # The view is released on return, so that the buffer can be closed.
    with memoryview(buffer) as view:
        _write_all(fd, view[:size])


def _write_tail(fd: int, buffer: mmap.mmap, size: int) -> None:
    """The last ``size`` bytes: the page-aligned part with ``O_DIRECT``, the rest buffered."""
    aligned = size - size % _ALIGN
    _write_buffer(fd, buffer, aligned)
    if aligned < size:  # an unaligned length cannot be written with O_DIRECT
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        with memoryview(buffer) as view:
            _write_all(fd, view[aligned:size])
