"""Where checkpoint bytes live: the local filesystem (pure ``os`` fast path) or any fsspec filesystem.

``storage_for(path)`` decides: plain paths and ``file://`` URLs are local and go through ``commit.py``
(temp file + fsync + rename + directory fsync). Any other protocol (``s3://``, ``gs://``, ``memory://``,
chained URLs) goes through fsspec. There, a file is written straight to its final name inside an fsspec
transaction: the object is only committed (S3 multipart completion, GCS upload finalization, memory store
insert) when the write succeeded and is discarded otherwise, so no partial object ever appears -- a
single object PUT is atomic on object stores. fsspec transactions are per filesystem instance; stepstone
serializes its own writes per instance, but another thread writing through the same cached instance at
the same moment would have its file committed with ours.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from stepstone.checkpoint import commit
from stepstone.checkpoint.filesystems import filesystem
from stepstone.checkpoint.outputs import FdOutput, RawOutput, StreamOutput
from stepstone.checkpoint.private_apis import fsspec_in_transaction
from stepstone.errors import CheckpointNotFoundError

__all__ = [
    "LocalStorage",
    "RemoteStorage",
    "Storage",
    "split_url",
    "storage_for",
]

T = TypeVar("T")
# Protocols whose fsspec package stepstone names as an extra: ``pip install stepstone[<extra>]``.
# Object stores (S3, GCS, Azure Blob) have no real folders: a prefix exists once an object is under it.
_REMOTE_LOCKS: dict[int, threading.Lock] = {}
_REMOTE_LOCKS_GUARD = threading.Lock()


class Storage(Protocol):
    """The operations the engine needs from a place that stores checkpoints."""

    is_local: bool

    def join(self, directory: str, name: str) -> str:
        """Path of ``name`` inside ``directory``."""

    def url(self, path: str) -> str:
        """The user-facing form of a storage path (a local path, or a URL with its protocol)."""

    def list_files(self, directory: str) -> dict[str, tuple[int, str]]:
        """Name -> (size, version) of the files in ``directory``; version changes when a file is replaced."""

    def size(self, path: str) -> int:
        """Size of a file in bytes (raises CheckpointNotFoundError if missing)."""

    def read_bytes(self, path: str) -> bytes:
        """Whole content of a file (raises CheckpointNotFoundError if missing)."""

    def write(self, path: str, write: Callable[[RawOutput], T], expected_size: int | None = None) -> T:
        """Commit a file whose bytes ``write`` produces; all or nothing."""

    def remove(self, path: str) -> None:
        """Remove a file; missing is not an error."""


class LocalStorage:
    """Local filesystem, through the commit protocol of ``commit.py``."""

    is_local = True

    def join(self, directory: str, name: str) -> str:
        """Path of ``name`` inside ``directory``.

        Args:
            directory: a local directory.
            name: a file name.

        Returns:
            The joined path.
        """
        return os.path.join(directory, name)

    def url(self, path: str) -> str:
        """The path itself (local paths need no protocol).

        Args:
            path: a local path.

        Returns:
            ``path``.
        """
        return path

    def list_files(self, directory: str) -> dict[str, tuple[int, str]]:
        """Regular files in ``directory`` (symlinks such as a ``last.ckpt`` alias are not listed).

        Args:
            directory: a local directory.

        Returns:
            Name -> (size, version); the version (inode and mtime) changes whenever a commit replaces the
            file, even with one of the same size. Empty if the directory does not exist.
        """
        found: dict[str, tuple[int, str]] = {}
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):  # removed while listing
                        if entry.is_file(follow_symlinks=False):
                            info = entry.stat(follow_symlinks=False)
                            found[entry.name] = (info.st_size, f"{info.st_ino}:{info.st_mtime_ns}")
        except FileNotFoundError:
            pass
        return found

    def size(self, path: str) -> int:
        """Size of a local file.

        Args:
            path: the file.

        Returns:
            Its size in bytes.

        Raises:
            CheckpointNotFoundError: if it does not exist.
        """
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"No checkpoint file at {path!r}") from None

    def read_bytes(self, path: str) -> bytes:
        """Whole content of a local file.

        Args:
            path: the file.

        Returns:
            Its bytes.

        Raises:
            CheckpointNotFoundError: if it does not exist.
        """
        try:
            with open(path, "rb") as stream:
                return stream.read()
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"No file at {path!r}") from None

    def write(self, path: str, write: Callable[[RawOutput], T], expected_size: int | None = None) -> T:
        """Commit a local file (temp + fsync + rename + dir fsync).

        Args:
            path: the final path.
            write: produces the bytes into the given output.
            expected_size: fail early when less disk space is free.

        Returns:
            What ``write`` returned.
        """
        return commit.atomic_write(path, lambda fd: write(FdOutput(fd)), expected_size=expected_size)

    def remove(self, path: str) -> None:
        """Remove a local file durably.

        Args:
            path: the file; missing is not an error.
        """
        commit.remove_file(path)


class RemoteStorage:
    """An fsspec filesystem (object store or other).

    Args:
        fs: the filesystem instance.
    """

    is_local = False

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs

    def join(self, directory: str, name: str) -> str:
        """Path of ``name`` inside ``directory``.

        Args:
            directory: a directory URL or path.
            name: a file name.

        Returns:
            The joined path.
        """
        return directory.rstrip("/") + "/" + name

    def url(self, path: str) -> str:
        """The path with its protocol, usable with ``load_file`` and friends.

        Args:
            path: a path of this filesystem.

        Returns:
            The URL.
        """
        return str(self.fs.unstrip_protocol(path))

    def list_files(self, directory: str) -> dict[str, tuple[int, str]]:
        """Files in ``directory``.

        Args:
            directory: a directory URL or path.

        Returns:
            Name -> (size, version); the version is built from what the backend reports (ETag, generation,
            modification time), "" when it reports nothing. Empty if the directory does not exist.
        """
        try:
            self.fs.invalidate_cache(directory)  # listings may be cached; the index needs the truth
            entries = self.fs.ls(directory, detail=True)
        except FileNotFoundError:
            return {}
        return {
            os.path.basename(e["name"].rstrip("/")): (int(e.get("size") or 0), _remote_version(e))
            for e in entries
            if e.get("type") == "file"
        }

    def size(self, path: str) -> int:
        """Size of a remote file.

        Args:
            path: the file.

        Returns:
            Its size in bytes.

        Raises:
            CheckpointNotFoundError: if it does not exist.
        """
        try:
            return int(self.fs.size(path))
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"No checkpoint file at {path!r}") from None

    def read_bytes(self, path: str) -> bytes:
        """Whole content of a remote file.

        Args:
            path: the file.

        Returns:
            Its bytes.

        Raises:
            CheckpointNotFoundError: if it does not exist.
        """
        try:
            with self.fs.open(path, "rb") as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"No file at {path!r}") from None

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a remote file.

        Args:
            path: the file.
            start: first byte.
            end: end (exclusive).

        Returns:
            The bytes.
        """
        return bytes(self.fs.cat_file(path, start=start, end=end))

    def write(self, path: str, write: Callable[[RawOutput], T], expected_size: int | None = None) -> T:
        """Write the object in one fsspec transaction (committed only on success).

        Args:
            path: the final object path.
            write: produces the bytes into the given output.
            expected_size: unused (object stores have no free-space query).

        Returns:
            What ``write`` returned.
        """
        del expected_size
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            self.fs.makedirs(parent, exist_ok=True)
        if fsspec_in_transaction(self.fs):  # inside the caller's own transaction: it commits or discards
            with self.fs.open(path, "wb") as stream:
                return write(StreamOutput(stream))
        with _remote_lock(self.fs), self.fs.transaction, self.fs.open(path, "wb") as stream:
            return write(StreamOutput(stream))

    def remove(self, path: str) -> None:
        """Remove a remote file.

        Args:
            path: the file; missing is not an error.
        """
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)


_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "updated", "created")


def _remote_version(entry: dict[str, Any]) -> str:
    return "|".join(str(entry[key]) for key in _VERSION_KEYS if entry.get(key) is not None)


@contextlib.contextmanager
def _remote_lock(fs: fsspec.AbstractFileSystem) -> Iterator[None]:
    with _REMOTE_LOCKS_GUARD:
        lock = _REMOTE_LOCKS.setdefault(id(fs), threading.Lock())
    with lock:
        yield


def split_url(
    path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[Storage, str]:
    """The storage holding ``path`` and the path as that storage names it.

    Args:
        path: a local path, a ``file://`` URL or any fsspec URL.
        storage_options: options for the fsspec filesystem (credentials, endpoints, ...).

    Returns:
        ``(storage, path)``: a local absolute path for local storage, the fsspec path otherwise.
    """
    text = os.fspath(path)
    if "://" not in text and "::" not in text:
        return LocalStorage(), os.path.abspath(text)
    fs, fs_path = filesystem(text, storage_options)
    if isinstance(fs, LocalFileSystem):
        return LocalStorage(), os.path.abspath(fs_path)
    return RemoteStorage(fs), fs_path


def storage_for(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> Storage:
    """The storage holding ``path``.

    Args:
        path: a local path or URL.
        storage_options: options for the fsspec filesystem.

    Returns:
        A ``LocalStorage`` or a ``RemoteStorage``.
    """
    return split_url(path, storage_options)[0]
