"""The run index: the committed checkpoints of a directory, with step, metrics, size and digest.

The index file (``.stepstone-index.json``) is only a cache that saves reading every trailer. The
directory listing is the truth: entries whose file is gone are dropped, ``*.ckpt`` files the index does
not know (or whose size changed) are described from their trailers, and a missing or damaged index is
rebuilt by scanning. Temporary files (hidden, ``.tmp-`` names) and symlinks (aliases such as a
``last.ckpt`` link) are never listed. The index is written
through the same commit protocol as checkpoints, so it is never seen half-written.

One writer per directory: two processes recording into the same index at once may lose each other's
entries (they would be re-discovered from the listing on the next read).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from typing import Any

from stepstone.checkpoint.inspection import describe, verify
from stepstone.checkpoint.record import CheckpointRecord, age_key
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

    def _scan(self, cached: dict[str, _Entry]) -> dict[str, _Entry]:
        """Reconcile ``cached`` with the directory listing: name -> (record, file version)."""
        found: dict[str, _Entry] = {}
        for name, (size, version) in self._storage.list_files(self._directory).items():
            if name.startswith(".") or not name.endswith(CHECKPOINT_SUFFIX):
                continue
            known = cached.get(name)
            # A cached record is reused only for the very same file: a commit that replaced it (even with a
            # file of the same size) changes its version.
            if known is not None and version and known[1] == version and known[0].size == size:
                found[name] = known
                continue
            try:
                found[name] = (describe(self._storage, self._path(name)), version)
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
            record: the record of a file in this directory.

        Raises:
            MisconfigurationException: if the record's name is not a ``*.ckpt`` file name.
        """
        if not record.name.endswith(CHECKPOINT_SUFFIX) or record.name.startswith("."):
            raise MisconfigurationException(
                f"RunIndex.record: {record.name!r} is not indexed; checkpoint names must end in "
                f"{CHECKPOINT_SUFFIX!r} and not start with '.'"
            )
        entries = self._scan(self._read_cache() or {})
        version = entries[record.name][1] if record.name in entries else ""
        entries[record.name] = (record, version)
        self._write(entries.values())

    def forget(self, *names: str) -> None:
        """Remove entries and write the index (the files themselves are not touched).

        Args:
            *names: file names to forget; unknown names are ignored.
        """
        entries = self._scan(self._read_cache() or {})
        self._write(entry for name, entry in entries.items() if name not in names)

    def rebuild(self) -> list[CheckpointRecord]:
        """Rebuild the index from the checkpoint files' trailers and write it.

        Returns:
            The records found, oldest first.
        """
        entries = self._scan({})
        self._write(entries.values())
        return sorted((record for record, _ in entries.values()), key=age_key)

    def newest_first(self) -> list[CheckpointRecord]:
        """Candidates for "latest": newest first (by step, then creation time).

        Returns:
            The records.
        """
        return sorted(self.entries(), key=age_key, reverse=True)

    def newest(self, valid_only: bool = True) -> CheckpointRecord | None:
        """The newest checkpoint, skipping (with a warning) any that fails verification.

        Args:
            valid_only: verify candidates (full checksum pass) and fall back to the next newest on
                corruption; files without a stepstone trailer cannot be verified and are skipped.

        Returns:
            The record (``verified=True`` when ``valid_only``), or None if there is none.
        """
        for candidate in self.newest_first():
            if not valid_only:
                return candidate
            try:
                return verify(self._storage, self._path(candidate.name))
            except CheckpointNotFoundError:
                continue
            except CheckpointCorruptError as error:
                warnings.warn(f"{error} Falling back to the next newest checkpoint.", stacklevel=2)
            except CheckpointError as error:
                warnings.warn(f"Skipping {candidate.path!r}: {error}", stacklevel=2)
        return None
