"""The run index: the committed checkpoints of a directory, with step, metrics, size and digest.

The index file (``.stepstone-index.json``) is only a cache that saves reading every trailer. The
directory listing is the truth: entries whose file is gone are dropped, ``*.ckpt`` files the index does
not know (or whose size changed) are described from their trailers, and a missing or damaged index is
rebuilt by scanning. Temporary files (hidden, ``.tmp-`` names) and symlinks (aliases such as a
``last.ckpt`` link) are never listed. The index is written
through the same commit protocol as checkpoints, so it is never seen half-written.

Sharded (FSDP) checkpoints are directories: a local directory holding the commit marker
(``.stepstone-committed``, written last) is listed whatever its name, described from its marker
(:func:`read_sharded_info`), verified with :func:`verify_sharded` and deleted with :func:`remove_sharded`.
Directories without the marker (unfinished saves) and hidden ones (``.NAME.shardtmp-*``/``.NAME.shardold-*``)
are never listed. Their cached records are reused while the marker file is the same (a new commit replaces it).

One writer per directory: two processes recording into the same index at once may lose each other's
entries (they would be re-discovered from the listing on the next read).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import warnings
from collections.abc import Iterable
from typing import Any

from stepstone.checkpoint.inspection import describe, verify
from stepstone.checkpoint.record import CheckpointRecord, age_key
from stepstone.checkpoint.sharded_commit import MARKER_NAME, remove_sharded
from stepstone.checkpoint.sharded_reading import is_sharded_checkpoint, read_sharded_info, verify_sharded
from stepstone.checkpoint.storage import split_url
from stepstone.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    MisconfigurationException,
)

__all__ = ["CHECKPOINT_SUFFIX", "INDEX_FILENAME", "RunIndex"]

INDEX_FILENAME = ".stepstone-index.json"
CHECKPOINT_SUFFIX = ".ckpt"
_SCHEMA = "stepstone-index"
_VERSION = 1
_Entry = tuple[CheckpointRecord, str]  # a record and the version of the file it describes
_SHARDED_VERSION = "sharded:"  # prefix of a directory's version (its marker's inode, mtime and size)


class RunIndex:
    """The index of the checkpoints in one directory.

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
        self._index_path = self._storage.join(self._directory, INDEX_FILENAME)

    @property
    def directory(self) -> str:
        """The directory, as a user-facing path or URL."""
        return self._storage.url(self._directory)

    def _path(self, name: str) -> str:
        return self._storage.join(self._directory, name)

    def _read_cache(self) -> dict[str, _Entry] | None:
        """The index file's entries, or None when it is missing or damaged."""
        try:
            data = json.loads(self._storage.read_bytes(self._index_path))
            if not isinstance(data, dict) or data.get("format") != _SCHEMA or data.get("version") != _VERSION:
                raise ValueError("not a stepstone index (version 1)")
            entries = data["entries"]
            if not isinstance(entries, list):
                raise ValueError("'entries' is not a list")
            cache: dict[str, _Entry] = {}
            for entry in entries:
                record = CheckpointRecord.from_json(entry, self._storage.url(self._path(entry["name"])))
                cache[record.name] = (record, str(entry.get("file_version", "")))
            return cache
        except CheckpointNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            warnings.warn(
                f"The checkpoint index {self._storage.url(self._index_path)!r} is damaged ({error}); it is "
                "rebuilt from the checkpoint files' trailers.",
                stacklevel=4,
            )
            return None

    def _sharded_dirs(self) -> dict[str, str]:
        """Committed sharded checkpoint directories (local only): name -> version of their marker."""
        if not self._storage.is_local:
            return {}
        found: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(self._directory) as items:
            for item in items:
                if item.name.startswith(".") or not item.is_dir(follow_symlinks=False):
                    continue  # hidden: temporary (.NAME.shardtmp-*) or replaced (.NAME.shardold-*) directories
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    info = os.stat(os.path.join(item.path, MARKER_NAME))
                    if stat.S_ISREG(info.st_mode):
                        found[item.name] = (
                            f"{_SHARDED_VERSION}{info.st_ino}:{info.st_mtime_ns}:{info.st_size}"
                        )
        return found

    def _listing(self) -> dict[str, tuple[int | None, str]]:
        """``*.ckpt`` files (name -> size, version) and sharded directories (name -> None, version)."""
        found: dict[str, tuple[int | None, str]] = {
            name: (size, version)
            for name, (size, version) in self._storage.list_files(self._directory).items()
            if not name.startswith(".") and name.endswith(CHECKPOINT_SUFFIX)
        }
        found.update((name, (None, version)) for name, version in self._sharded_dirs().items())
        return found

    def _describe(self, name: str, sharded: bool) -> CheckpointRecord:
        path = self._path(name)
        if not sharded:
            return describe(self._storage, path)
        try:
            return read_sharded_info(path)
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # a marker of the wrong shape
            raise CheckpointCorruptError(path, f"its commit marker is malformed ({error!r})") from None

    def _scan(self, cached: dict[str, _Entry]) -> dict[str, _Entry]:
        """Reconcile ``cached`` with the directory listing: name -> (record, file version)."""
        found: dict[str, _Entry] = {}
        for name, (size, version) in self._listing().items():
            known = cached.get(name)
            # A cached record is reused only for the very same file (or marker): a commit that replaced it
            # (even with a file of the same size) changes its version.
            if known is not None and version and known[1] == version and size in (None, known[0].size):
                found[name] = known
                continue
            try:
                found[name] = (self._describe(name, sharded=size is None), version)
            except CheckpointNotFoundError:
                continue  # removed since the listing
            except CheckpointCorruptError as error:
                warnings.warn(f"Ignoring {error}", stacklevel=4)
        return found

    def entries(self) -> list[CheckpointRecord]:
        """The committed checkpoints, oldest first (index reconciled with the directory).

        Returns:
            The records (``verified=False``).
        """
        return sorted((record for record, _ in self._scan(self._read_cache() or {}).values()), key=age_key)

    def _write(self, entries: Iterable[_Entry]) -> None:
        rows = [{**record.to_json(), "file_version": version} for record, version in entries]
        body = {"format": _SCHEMA, "version": _VERSION, "entries": sorted(rows, key=lambda row: row["name"])}
        data = json.dumps(body, indent=1, allow_nan=False).encode()
        self._storage.write(self._index_path, lambda output: output.write_all(memoryview(data)))

    def record(self, record: CheckpointRecord) -> None:
        """Add (or replace) a committed checkpoint and write the index.

        Args:
            record: the record of a ``*.ckpt`` file, or of a committed sharded checkpoint directory, in this
                directory.

        Raises:
            MisconfigurationException: if the record's name is hidden, or neither a ``*.ckpt`` file name nor
                a committed sharded directory.
        """
        name = record.name
        if name.startswith(".") or not (name.endswith(CHECKPOINT_SUFFIX) or self.is_sharded(name)):
            raise MisconfigurationException(
                f"RunIndex.record: {name!r} is not indexed; checkpoint names must end in {CHECKPOINT_SUFFIX!r} "
                "(or be a committed sharded checkpoint directory) and not start with '.'"
            )
        entries = self._scan(self._read_cache() or {})
        version = entries[name][1] if name in entries else ""
        entries[name] = (record, version)
        self._write(entries.values())

    def forget(self, *names: str) -> None:
        """Remove entries and write the index (the files themselves are not touched).

        Args:
            *names: file names to forget; unknown names are ignored.
        """
        entries = self._scan(self._read_cache() or {})
        self._write(entry for name, entry in entries.items() if name not in names)

    def is_sharded(self, name: str) -> bool:
        """Whether ``name`` is a committed sharded checkpoint directory of this (local) directory.

        Args:
            name: an entry name, as in ``CheckpointRecord.name``.

        Returns:
            True for a directory with its commit marker; False for files, remote directories and anything else.
        """
        return self._storage.is_local and is_sharded_checkpoint(self._path(name))

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
        if self.is_sharded(name):
            return verify_sharded(self._path(name))
        return verify(self._storage, self._path(name))

    def delete(self, *names: str) -> None:
        """Forget entries, then delete them: files durably, sharded directories with :func:`remove_sharded`.

        The index is written first, so that it never lists a deleted checkpoint.

        Args:
            *names: entry names; missing ones are ignored.

        Raises:
            MisconfigurationException: a name is a directory without the commit marker (not a checkpoint:
                nothing is deleted).
            OSError: a deletion failed.
        """
        for name in names:
            path = self._path(name)
            if (
                self._storage.is_local
                and os.path.isdir(path)
                and not os.path.islink(path)
                and not self.is_sharded(name)
            ):
                raise MisconfigurationException(
                    f"RunIndex.delete({name!r}): {path!r} is a directory without the {MARKER_NAME} marker, not a "
                    "committed checkpoint; it was not deleted (remove it yourself if it is an unfinished save)"
                )
        self.forget(*names)
        for name in names:
            if self.is_sharded(name):
                remove_sharded(self._path(name))
            else:
                self._storage.remove(self._path(name))

    def rebuild(self) -> list[CheckpointRecord]:
        """Rebuild the index from the checkpoint files' trailers and write it.

        Returns:
            The records found, oldest first.
        """
        entries = self._scan({})
        self._write(entries.values())
        return sorted((record for record, _ in entries.values()), key=age_key)

    def newest_first(self) -> list[CheckpointRecord]:
        """Candidates for "latest": newest first (by step, then creation time), files and directories alike.

        Returns:
            The records.
        """
        return sorted(self.entries(), key=age_key, reverse=True)

    def newest(self, valid_only: bool = True) -> CheckpointRecord | None:
        """The newest checkpoint, skipping (with a warning) any that fails verification.

        Args:
            valid_only: verify candidates (full checksum pass, files and sharded directories alike) and fall
                back to the next newest on corruption; files without a stepstone trailer cannot be verified
                and are skipped.

        Returns:
            The record (``verified=True`` when ``valid_only``), or None if there is none.
        """
        for candidate in self.newest_first():
            if not valid_only:
                return candidate
            try:
                return self.verify(candidate.name)
            except CheckpointNotFoundError:
                continue
            except CheckpointCorruptError as error:
                warnings.warn(f"{error} Falling back to the next newest checkpoint.", stacklevel=2)
            except CheckpointError as error:
                warnings.warn(f"Skipping {candidate.path!r}: {error}", stacklevel=2)
        return None
