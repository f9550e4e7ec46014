"""The run index: the committed checkpoints of a directory, with step, metrics, size and digest.

Nothing is stored in the directory: a checkpoint folder holds the checkpoints and, while a write is in
flight, hidden temporaries -- Lightning users list folders and load every file. The directory listing is
the truth and each checkpoint describes itself: a ``*.ckpt`` file by its trailer (a read at its end, a
range request for remote files), a sharded (FSDP) checkpoint directory by its commit marker. What was read
is remembered in this process only, per file version (size, inode, modification time and the trailer's own
CRC at the file's end; remote: the backend's ETag/generation), so a replaced file -- even one of the same
size -- is read again.

Temporary files (hidden, ``.tmp-`` names), symlinks (aliases such as a ``last.ckpt`` link) and any other
hidden file (such as the ``.stepstone-index.json`` earlier versions wrote, now ignored) are never listed.
A local directory holding the commit marker (``.stepstone-committed``, written last) is listed whatever its
name and handled as its kind (``kinds.py``: verified against the marker, deleted as a directory). Directories without the
marker (unfinished saves) and hidden ones (``.NAME.shardtmp-*``/``.NAME.shardold-*``) are never listed.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stepstone.checkpoint.kinds import SHARDED_DIRECTORY, is_uncommitted_directory, kind_of, remove_checkpoint
from stepstone.checkpoint.record import CheckpointRecord, age_key
from stepstone.checkpoint.selection import first_valid, newest_first
from stepstone.checkpoint.sharded_commit import MARKER_NAME
from stepstone.checkpoint.storage import split_url
from stepstone.errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    MisconfigurationException,
)

__all__ = ["CHECKPOINT_SUFFIX", "LEGACY_INDEX_NAME", "RunIndex"]

CHECKPOINT_SUFFIX = ".ckpt"
#: The index file earlier versions wrote into checkpoint folders: ignored; ``stepstone ckpt prune`` removes it.
LEGACY_INDEX_NAME = ".stepstone-index.json"
_END_BYTES = 16  # a trailer's footer (JSON length and CRC) and its magic
_REMOTE_READERS = 8  # trailers of remote files read at once
_CACHE_LIMIT = 8192  # records remembered per process (a few hundred bytes each)
_Version = tuple[int | None, str]  # (file size or None for a directory, version string)
_cache: dict[str, tuple[_Version, CheckpointRecord]] = {}  # URL -> what it was when last described
_cache_lock = threading.Lock()  # the async writer thread lists too


def _end_of(path: str, size: int) -> str:
    """The last bytes of a local file ("" if unreadable): a stepstone trailer's length and CRC, new with each save.

    The inode and the modification time alone do not tell a replaced file from the one cached: inodes are
    reused at once and the clock stamping files ticks every few milliseconds, so two same-size saves of
    ``last.ckpt`` in one tick look identical.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return ""
    try:
        return os.pread(fd, _END_BYTES, max(0, size - _END_BYTES)).hex()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _remember(path: str, version: _Version, record: CheckpointRecord) -> None:
    with _cache_lock:
        _cache.pop(path, None)
        _cache[path] = (version, record)
        while len(_cache) > _CACHE_LIMIT:
            del _cache[next(iter(_cache))]  # the longest unseen


def _recall(path: str, version: _Version) -> CheckpointRecord | None:
    with _cache_lock:
        known = _cache.get(path)
    return known[1] if known is not None and known[0] == version else None


class RunIndex:
    """The checkpoints of one directory, read from their trailers (or sharded commit markers).

    Args:
        directory: the checkpoint directory (local path or URL).
        storage_options: fsspec options for remote directories.

    Raises:
        MisconfigurationException: if ``directory`` is not a path.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
    ) -> None:
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise MisconfigurationException(
                f"RunIndex(directory={directory!r}): pass a directory path or URL"
            )
        self._storage, self._directory = split_url(os.fspath(directory), storage_options)

    @property
    def directory(self) -> str:
        """The directory, as a user-facing path or URL."""
        return self._storage.url(self._directory)

    def _path(self, name: str) -> str:
        return self._storage.join(self._directory, name)

    def _sharded_dirs(self) -> list[str]:
        """Committed sharded checkpoint directories (local only)."""
        if not self._storage.is_local:
            return []
        found: list[str] = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(self._directory) as items:
            for item in items:
                if item.name.startswith(".") or not item.is_dir(follow_symlinks=False):
                    continue  # hidden: temporary (.NAME.shardtmp-*) or replaced (.NAME.shardold-*) directories
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    if stat.S_ISREG(os.stat(os.path.join(item.path, MARKER_NAME)).st_mode):
                        found.append(item.name)
        return found

    def _listing(self) -> dict[str, _Version]:
        """``*.ckpt`` files (name -> size, version) and sharded directories (name -> None, "").

        A sharded directory has no version: its marker is read every time (it is small, and a cached record
        could not be told apart from a new commit's).
        """
        found: dict[str, _Version] = {}
        for name, (size, version) in self._storage.list_files(self._directory).items():
            if not name.startswith(".") and name.endswith(CHECKPOINT_SUFFIX):
                local = self._storage.is_local and version
                found[name] = (size, f"{version}:{_end_of(self._path(name), size)}" if local else version)
        found.update((name, (None, "")) for name in self._sharded_dirs())
        return found

    def _describe(self, name: str, version: _Version) -> CheckpointRecord | CheckpointCorruptError | None:
        """The record of one listed entry; the error of a damaged one; None for one removed since the listing."""
        try:
            return self._read(name, version)
        except CheckpointNotFoundError:
            return None
        except CheckpointCorruptError as error:
            return error

    def _url(self, name: str) -> str:
        return self._storage.url(
            self._path(name)
        )  # the cache key: a storage path does not name the filesystem

    def _read(self, name: str, version: _Version) -> CheckpointRecord:
        path = self._path(name)
        record = kind_of(path, self._storage).describe(path, self._storage)
        if version[1] and record.size == version[0]:
            _remember(self._url(name), version, record)  # a file replaced since the listing is not remembered
        return record

    def entries(self) -> list[CheckpointRecord]:
        """The committed checkpoints, oldest first; a damaged one is skipped with a warning.

        Returns:
            The records (``verified=False``).
        """
        listing = self._listing()
        outcomes: list[CheckpointRecord | CheckpointCorruptError | None] = []
        unread: list[tuple[str, _Version]] = []
        for name, version in listing.items():
            known = _recall(self._url(name), version) if version[1] else None  # no version: read every time
            if known is None:
                unread.append((name, version))
            else:
                outcomes.append(known)
        if self._storage.is_local or len(unread) < 2:
            outcomes += [self._describe(name, version) for name, version in unread]
        else:  # remote: each trailer costs round trips; overlap them
            with ThreadPoolExecutor(min(_REMOTE_READERS, len(unread)), "stepstone-index") as pool:
                outcomes += pool.map(lambda item: self._describe(*item), unread)
        found = []
        for outcome in outcomes:
            if isinstance(outcome, CheckpointCorruptError):
                warnings.warn(f"Ignoring {outcome}", stacklevel=2)  # here, in the caller's thread
            elif outcome is not None:
                found.append(outcome)
        return sorted(found, key=age_key)

    def is_sharded(self, name: str) -> bool:
        """Whether ``name`` is a committed sharded checkpoint directory of this (local) directory.

        Args:
            name: an entry name, as in ``CheckpointRecord.name``.

        Returns:
            True for a directory with its commit marker; False for files, remote directories and anything else.
        """
        return kind_of(self._path(name), self._storage) is SHARDED_DIRECTORY

    def verify(self, name: str) -> CheckpointRecord:
        """Check every checksum of one checkpoint, a file or a sharded directory.

        Args:
            name: the entry name.

        Returns:
            Its record, with ``verified=True``.

        Raises:
            CheckpointNotFoundError: nothing committed under ``name``.
            CheckpointCorruptError: a damaged file (the error names it).
            CheckpointError: a file without a stepstone trailer.
        """
        path = self._path(name)
        return kind_of(path, self._storage).verify(path, self._storage)

    def delete(self, *names: str) -> None:
        """Delete checkpoints durably, each by its kind (``kinds.kind_of``).

        Args:
            *names: entry names; missing ones are ignored.

        Raises:
            MisconfigurationException: a name is a directory without the commit marker (not a checkpoint:
                nothing is deleted).
            OSError: a deletion failed.
        """
        for name in names:
            path = self._path(name)
            if is_uncommitted_directory(path, self._storage):
                raise MisconfigurationException(
                    f"RunIndex.delete({name!r}): {path!r} is a directory without the {MARKER_NAME} marker, not a "
                    "committed checkpoint; it was not deleted (remove it yourself if it is an unfinished save)"
                )
        for name in names:
            remove_checkpoint(self._path(name), self._storage)

    def newest_first(self) -> list[CheckpointRecord]:
        """Candidates for "latest": newest first (by step, then creation time), files and directories alike.

        Returns:
            The records.
        """
        return newest_first(self.entries())

    def newest(self, valid_only: bool = True) -> CheckpointRecord | None:
        """The newest checkpoint, skipping (with a warning) any that fails verification.

        Args:
            valid_only: verify candidates (full checksum pass, files and sharded directories alike) and fall
                back to the next newest on corruption; files without a stepstone trailer cannot be verified
                and are skipped.

        Returns:
            The record (``verified=True`` when ``valid_only``), or None if there is none.
        """
        candidates = self.newest_first()
        if not valid_only:
            return candidates[0] if candidates else None
        found = first_valid(candidates, lambda candidate: self.verify(candidate.name))
        return found[1] if found is not None else None
