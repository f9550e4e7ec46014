"""The two kinds of checkpoint -- one file, or a sharded directory -- behind one interface.

A checkpoint is either a single file (committed by ``commit.py``: a temporary sibling, fsync, rename) or a
directory of shards (committed by ``sharded_commit.py``: a temporary directory, a marker written last, rename).
Both are written, committed, described, verified, removed and swept the same way from the outside;
:func:`kind_of` is the one place that tells them apart, so the index, the manager, the CLI and the trainer's
resume path never repeat the file-or-directory branch.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol

from stepstone.checkpoint import commit, sharded_commit
from stepstone.checkpoint.inspection import describe, verify
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.storage import Storage, split_url
from stepstone.errors import CheckpointCorruptError

__all__ = [
    "FILE",
    "SHARDED_DIRECTORY",
    "CheckpointKind",
    "FileKind",
    "ShardedDirectoryKind",
    "is_uncommitted_directory",
    "kind_of",
    "remove_checkpoint",
    "sweep_stale_temps",
]


class CheckpointKind(Protocol):
    """What stepstone does with a checkpoint of one kind (a file or a sharded directory).

    Paths are local paths or URLs; a method given ``storage`` takes ``path`` as that storage names it.
    """

    #: ``"file"`` or ``"sharded"``.
    name: str

    def temp_path(self, path: str) -> str:
        """A fresh temporary path next to ``path`` where a save of this kind is written before its commit."""

    def commit(self, temp: str, path: str) -> None:
        """Make the complete temporary ``temp`` the checkpoint ``path``, atomically and durably."""

    def describe(self, path: str, storage: Storage | None = None) -> CheckpointRecord:
        """The record from the checkpoint's own metadata, cheaply (nothing verified)."""

    def verify(self, path: str, storage: Storage | None = None) -> CheckpointRecord:
        """Check every checksum; the record with ``verified=True``."""

    def remove(self, path: str, storage: Storage | None = None) -> None:
        """Delete the checkpoint durably; a missing one is not an error."""

    def sweep_stale_temps(self, directory: str) -> list[str]:
        """Remove the temporaries of this kind whose writer died; returns the removed paths."""


def _located(path: str, storage: Storage | None) -> tuple[Storage, str]:
    return (storage, path) if storage is not None else split_url(path)


class FileKind:
    """A checkpoint that is one file (``commit.py``'s protocol; local or remote)."""

    name = "file"

    def temp_path(self, path: str) -> str:
        """See :class:`CheckpointKind`."""
        return commit.temp_path_for(path)

    def commit(self, temp: str, path: str) -> None:
        """See :class:`CheckpointKind`."""
        os.replace(temp, path)
        commit.fsync_dir(os.path.dirname(os.path.abspath(path)))

    def describe(self, path: str, storage: Storage | None = None) -> CheckpointRecord:
        """See :class:`CheckpointKind` (a file without a trailer gets ``format_version=0``)."""
        return describe(*_located(path, storage))

    def verify(self, path: str, storage: Storage | None = None) -> CheckpointRecord:
        """See :class:`CheckpointKind`."""
        return verify(*_located(path, storage))

    def remove(self, path: str, storage: Storage | None = None) -> None:
        """See :class:`CheckpointKind`."""
        located, fs_path = _located(path, storage)
        located.remove(fs_path)

    def sweep_stale_temps(self, directory: str) -> list[str]:
        """See :class:`CheckpointKind`."""
        return commit.sweep_stale_temps(directory)


class ShardedDirectoryKind:
    """A checkpoint that is a directory of shards with a commit marker (``sharded_commit.py``; local only)."""

    name = "sharded"

    def temp_path(self, path: str) -> str:
        """See :class:`CheckpointKind`."""
        return sharded_commit.temp_dir_for(path)

    def commit(self, temp: str, path: str) -> None:
        """See :class:`CheckpointKind`."""
        sharded_commit.commit_dir(temp, path)

    def describe(self, path: str, storage: Storage | None = None) -> CheckpointRecord:
        """See :class:`CheckpointKind`; a marker of the wrong shape is a ``CheckpointCorruptError``."""
        text = _located(path, storage)[1]
        try:
            marker = sharded_commit.read_marker(text)
            return sharded_commit.record_from_marker(text, marker, verified=False)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointCorruptError(text, f"its commit marker is malformed ({error!r})") from None

    def verify(self, path: str, storage: Storage | None = None) -> CheckpointRecord:
        """See :class:`CheckpointKind`."""
        text = _located(path, storage)[1]
        return sharded_commit.record_from_marker(text, sharded_commit.verify_dir(text), verified=True)

    def remove(self, path: str, storage: Storage | None = None) -> None:
        """See :class:`CheckpointKind` (a symlink alias is unlinked, its target kept)."""
        sharded_commit.remove_dir(_located(path, storage)[1])

    def sweep_stale_temps(self, directory: str) -> list[str]:
        """See :class:`CheckpointKind`."""
        return sharded_commit.sweep_stale_dirs(directory)


#: The two kinds (one instance each: compare with ``is``).
FILE = FileKind()
SHARDED_DIRECTORY = ShardedDirectoryKind()


def kind_of(path: str | os.PathLike[str], storage: Storage | None = None) -> CheckpointKind:
    """The kind of checkpoint at ``path``: the one file-or-directory branch of stepstone.

    Args:
        path: a local path or URL (or, with ``storage``, the path as that storage names it).
        storage: where ``path`` is; None to find out from ``path``.

    Returns:
        ``SHARDED_DIRECTORY`` for a local directory with its commit marker, else ``FILE`` (also for a missing
        path, a remote path, and a directory without a marker: the file kind's methods then report it).
    """
    located, text = _located(os.fspath(path), storage)
    if located.is_local and sharded_commit.is_committed_dir(text):
        return SHARDED_DIRECTORY
    return FILE


def is_uncommitted_directory(path: str | os.PathLike[str], storage: Storage | None = None) -> bool:
    """Whether ``path`` is a local directory that is not a checkpoint (no commit marker; not a symlink).

    Args:
        path: a local path or URL (or, with ``storage``, the path as that storage names it).
        storage: where ``path`` is; None to find out from ``path``.

    Returns:
        True for an unfinished save or any other plain directory, which no kind may read or delete.
    """
    located, text = _located(os.fspath(path), storage)
    return (
        located.is_local
        and os.path.isdir(text)
        and not os.path.islink(text)
        and not sharded_commit.is_committed_dir(text)
    )


def remove_checkpoint(path: str | os.PathLike[str], storage: Storage | None = None) -> None:
    """Delete a committed checkpoint durably, by its kind: the one way stepstone deletes a checkpoint.

    The run index, the manager's retention, the trainer's checkpoint port (callbacks) and ``remove_file`` all
    delete through here, so every deletion is durable (directory fsync) and a sharded directory is renamed
    aside before it is emptied (readers never see half of one).

    Args:
        path: a local path or URL (or, with ``storage``, the path as that storage names it); missing is not
            an error. A symlink (a ``last`` alias) is unlinked, its target kept.
        storage: where ``path`` is; None to find out from ``path``.

    Raises:
        IsADirectoryError: ``path`` is a directory without a commit marker (an unfinished save or a folder
            that is no checkpoint): nothing is deleted.
        OSError: the deletion failed.
    """
    located, text = _located(os.fspath(path), storage)
    if is_uncommitted_directory(text, located):
        raise IsADirectoryError(
            errno.EISDIR,
            "not deleted: a directory without the commit marker is no checkpoint (an unfinished save?); "
            "remove it yourself if you mean to",
            text,
        )
    kind_of(text, located).remove(text, located)


def sweep_stale_temps(directory: str) -> list[str]:
    """Remove the temporaries of every kind in a local ``directory`` whose writer died.

    Args:
        directory: the local checkpoint directory (missing: nothing to do).

    Returns:
        The removed paths.
    """
    return [path for kind in (FILE, SHARDED_DIRECTORY) for path in kind.sweep_stale_temps(directory)]
