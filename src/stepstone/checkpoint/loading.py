"""Loads a checkpoint: verified first (or while torch reads, never after), unpickled without code execution.

- A stepstone file (with trailer) is verified chunk by chunk *before* ``torch.load`` sees a byte of it
  (``verification.VerifiedReader``); a mismatch raises ``CheckpointCorruptError`` and no object is returned.
- A file without trailer (plain ``torch.save``, Lightning) is loaded with ``weights_only=True`` and no
  integrity check; if it needs pickle (``__reduce__``, arbitrary classes), ``UnsafeCheckpointError`` is
  raised, and ``trusted=True`` is the explicit opt-in to unpickle it with ``weights_only=False``.
- Whatever torch raises is wrapped into a stepstone error naming the file (never a raw zip/pickle error).
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import torch

from stepstone.checkpoint.format import TAIL_SIZE, TrailerInfo, parse_tail
from stepstone.checkpoint.inspection import open_local, read_local_trailer, record_from_trailer
from stepstone.checkpoint.progress import Progress
from stepstone.checkpoint.record import CheckpointRecord, basename
from stepstone.checkpoint.storage import RemoteStorage, Storage
from stepstone.checkpoint.verification import (
    ChunkVerifier,
    VerifiedReader,
    load_verify_threads,
    verify_buffer,
)
from stepstone.errors import CheckpointCorruptError, CheckpointError, UnsafeCheckpointError

__all__ = ["MapLocation", "load"]

MapLocation = Any  # None | str | torch.device | dict[str, str] | Callable, as torch.load accepts


_BOILERPLATE = ("Weights only load failed", "Check the documentation", "Please file an issue", "(1)", "(2)")


#: What torch's weights-only unpickler says when a file asks for code (a global, a class, a reduce call);
#: its other refusals ("Unsupported operand", "String is too long", ...) mean bytes that are not a pickle.
_CODE_MARKS = ("GLOBAL", "Can only create new object", "Can only build", "reduce for unrecognized function")


def _first_line(error: BaseException) -> str:
    """The informative line of torch's message (its weights-only errors wrap the reason in advice)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip()
        if reason:
            return reason.splitlines()[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_BOILERPLATE)]
    return (useful or lines or [type(error).__name__])[0]


def _torch_load(
    source: Any, url: str, map_location: MapLocation, *, trusted: bool, mmap: bool, verified: bool
) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=not trusted, mmap=mmap)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        if trusted or not any(mark in str(error) for mark in _CODE_MARKS):
            raise CheckpointCorruptError(url, f"it could not be unpickled ({_first_line(error)})") from error
        raise UnsafeCheckpointError(
            f"Checkpoint {url!r} contains objects that torch.load(weights_only=True) refuses "
            f"({_first_line(error)}): loading it would run code from the file. If you trust where this file "
            "comes from, pass trusted=True to load it with weights_only=False; otherwise do not load it."
        ) from error
    except Exception as error:
        reason = f"{type(error).__name__}: {_first_line(error)}"
        if not verified and "PytorchStreamReader" in str(error):
            raise CheckpointCorruptError(url, f"torch could not read the zip archive ({reason})") from error
        note = "its checksums verified" if verified else "it has no stepstone checksums, so it may be damaged"
        raise CheckpointError(f"torch.load failed on {url!r} ({note}): {reason}") from error


def _fd_path(fd: int, path: str) -> str:
    # Loading through /proc/self/fd reads the very file that was verified, even if another writer has
    # since replaced the name (os.replace gives the name a new inode; ours stays open).
    proc = f"/proc/self/fd/{fd}"
    return proc if os.path.exists(proc) else path


def _gated_load(
    fd: int,
    size: int,
    info: TrailerInfo,
    url: str,
    map_location: MapLocation,
    trusted: bool,
    progress: Progress | None,
) -> Any:
    verifier = ChunkVerifier(fd, info, url)
    with verifier.background(load_verify_threads()):
        try:
            state = _torch_load(
                VerifiedReader(fd, size, verifier, progress),
                url,
                map_location,
                trusted=trusted,
                mmap=False,
                verified=True,
            )
        except BaseException:
            if verifier.failure is not None:
                raise verifier.failure from None
            raise
        # torch skips a few bytes (zip local headers it does not need, padding): check them too.
        verifier.finish()
    if progress is not None:
        progress.finish()
    return state


def _load_local(
    path: str,
    url: str,
    map_location: MapLocation,
    flags: tuple[bool, bool, bool],
    progress: Progress | bool,
) -> tuple[Any, CheckpointRecord]:
    verify, mmap, trusted = flags
    fd = open_local(path)
    try:
        try:
            size, info = read_local_trailer(fd, url)
        except CheckpointCorruptError:
            if verify:
                raise
            size, info = os.fstat(fd).st_size, None  # verify=False: no check at all, let torch try (salvage)
        if info is None or not verify:
            state = _torch_load(
                _fd_path(fd, path), url, map_location, trusted=trusted, mmap=mmap, verified=False
            )
        elif mmap:
            # torch maps the file itself, so everything is verified first (2 threads, page cache warmed).
            ChunkVerifier(fd, info, url).verify_all(threads=2)
            state = _torch_load(
                _fd_path(fd, path), url, map_location, trusted=trusted, mmap=True, verified=True
            )
        else:
            # Only this path reads through stepstone (the others hand torch the path), so only it reports.
            counter = Progress(f"loading {url!r}") if progress is True else progress or None
            state = _gated_load(fd, size, info, url, map_location, trusted, counter)
    finally:
        os.close(fd)
    return state, _record(url, size, info, verified=verify and info is not None)


def _load_remote(
    storage: RemoteStorage, path: str, url: str, map_location: MapLocation, verify: bool, trusted: bool
) -> tuple[Any, CheckpointRecord]:
    # Remote files are read whole into memory: the verified bytes are exactly the bytes unpickled.
    data = storage.read_bytes(path)
    try:
        info = parse_tail(data[-TAIL_SIZE:], data[:4], len(data), url)
    except CheckpointCorruptError:
        if verify:
            raise
        info = None  # verify=False: no check at all, let torch try (salvage)
    if info is not None and verify:
        verify_buffer(memoryview(data), info, url)
    state = _torch_load(
        io.BytesIO(data), url, map_location, trusted=trusted, mmap=False, verified=info is not None and verify
    )
    return state, _record(url, len(data), info, verified=verify and info is not None)


def _record(url: str, size: int, info: TrailerInfo | None, verified: bool) -> CheckpointRecord:
    if info is None:
        return CheckpointRecord(path=url, name=basename(url), size=size, step=None, epoch=None)
    return record_from_trailer(url, size, info, verified)


def load(
    storage: Storage,
    path: str,
    *,
    map_location: MapLocation,
    verify: bool,
    mmap: bool,
    trusted: bool,
    progress: Progress | bool = True,
) -> tuple[dict[str, Any], CheckpointRecord]:
    """Load a checkpoint (arguments already validated by the caller).

    Args:
        storage: where the file is.
        path: the storage path.
        map_location: as for ``torch.load``.
        verify: check the chunk CRCs (stepstone files only).
        mmap: memory-map tensor storages (local files only).
        trusted: allow unpickling arbitrary objects (``weights_only=False``).
        progress: report bytes and rate when a verified local load takes more than 2 s (True: to standard
            error; a ``Progress``: to it; False: never).

    Returns:
        ``(state, record)``; ``record.verified`` says whether the checksums were checked.

    Raises:
        CheckpointNotFoundError: if there is no file.
        CheckpointCorruptError: if the file is damaged; nothing is returned.
        UnsafeCheckpointError: if the file needs pickle and ``trusted`` is False.
        CheckpointError: if torch cannot load it for another reason, or it does not hold a dict.
    """
    url = storage.url(path)
    if isinstance(storage, RemoteStorage):
        state, record = _load_remote(storage, path, url, map_location, verify, trusted)
    else:
        state, record = _load_local(path, url, map_location, (verify, mmap, trusted), progress)
    if not isinstance(state, dict):
        raise CheckpointError(f"{url!r} holds a {type(state).__name__}, not a checkpoint dict")
    return state, record
