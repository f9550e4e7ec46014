"""The one commit protocol for local files: a file is either fully written and durable, or invisible.

Protocol (DESIGN.md section 4):

1. write to a hidden temporary name in the same directory, ``.{name}.tmp-{pid}-{random}`` (same
   directory so that the rename cannot cross filesystems; hidden and not ending in ``.ckpt`` so readers
   never pick it up);
2. flush + ``fsync`` the file;
3. ``os.replace`` onto the final name (atomic on POSIX: readers see the old file or the new one);
4. ``fsync`` the directory, so that the rename itself survives a power loss.

On any failure, including ``KeyboardInterrupt``, the temporary file is removed and the exception
re-raised; the previous file under the final name is untouched. A process killed by SIGKILL leaves its
temporary file behind: ``sweep_stale_temps`` removes those whose writer is dead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "STALE_TEMP_AGE_S",
    "atomic_write",
    "copy_file",
    "ensure_dir",
    "fsync_dir",
    "is_temp_name",
    "link_file",
    "pid_alive",
    "remove_file",
    "sweep_stale",
    "sweep_stale_temps",
    "temp_path_for",
]

T = TypeVar("T")

#: A temp file of a live process is still removed once it is this old (seconds): its pid may have been
#: reused, or it was written from another host sharing the directory.
STALE_TEMP_AGE_S = 6 * 3600.0

_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")
_COPY_BLOCK = 64 * 1024 * 1024
# errno values meaning "copy_file_range cannot do this copy here", not "the copy failed".
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, None}


def temp_path_for(path: str) -> str:
    """A fresh temporary path next to ``path`` (same directory, hidden, never ``*.ckpt``).

    Args:
        path: the final path.

    Returns:
        The temporary path.
    """
    directory, name = os.path.split(path)
    # The name is cut so that the temp name stays under the usual 255-byte limit.
    return os.path.join(directory, f".{name[:200]}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary name made by ``temp_path_for``.

    Args:
        name: a file name.

    Returns:
        True for temporary names.
    """
    return _TEMP_RE.match(name) is not None


def fsync_dir(directory: str) -> None:
    """Make a directory's entries (creations, renames, removals) durable.

    Args:
        directory: the directory.

    Raises:
        OSError: if the directory cannot be opened or synced.
    """
    fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(directory: str) -> None:
    """Create ``directory`` and its missing parents, durably (each new entry's parent is fsynced).

    Args:
        directory: the directory to create.

    Raises:
        OSError: if a component exists and is not a directory, or creation fails.
    """
    directory = os.path.abspath(directory)
    missing: list[str] = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # created concurrently by another writer
            os.mkdir(path)
        fsync_dir(os.path.dirname(path))


def _size_text(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _check_free_space(directory: str, expected_size: int, path: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < expected_size:
        raise OSError(
            errno.ENOSPC,
            f"Not enough free space to write {path!r}: it needs about {_size_text(expected_size)} and "
            f"{directory!r} has {_size_text(free)} free. Free some space or choose another directory; "
            "nothing was written",
        )


def atomic_write(path: str, write: Callable[[int], T], *, expected_size: int | None = None) -> T:
    """Write a file through the commit protocol.

    Args:
        path: the final local path.
        write: called with a writable file descriptor of the temporary file; writes the whole content.
        expected_size: if given, fail before writing when the disk has less free space than this.

    Returns:
        What ``write`` returned.

    Raises:
        OSError: on any I/O failure (ENOSPC included); the temporary file is removed and a previous file
            under ``path`` is untouched.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    ensure_dir(directory)
    if expected_size is not None:
        _check_free_space(directory, expected_size, path)
    temp = temp_path_for(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        result = write(fd)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(directory)
    return result


def _copy_fd(source: int, target: int) -> None:
    offset = 0
    try:
        # In-kernel copy (may even share extents on btrfs/xfs); no bytes pass through Python.
        while True:
            copied = os.copy_file_range(source, target, _COPY_BLOCK)
            if copied == 0:
                return
            offset += copied
    except (AttributeError, OSError) as error:
        if isinstance(error, OSError) and error.errno not in _NO_COPY_RANGE:
            raise
    # Fallback (other OS, or a filesystem pair without copy_file_range): plain read/write from where the
    # fast path stopped.
    os.lseek(source, offset, os.SEEK_SET)
    os.lseek(target, offset, os.SEEK_SET)
    while block := os.read(source, _COPY_BLOCK):
        view = memoryview(block)
        while view:
            view = view[os.write(target, view) :]


def copy_file(source: str, target: str) -> None:
    """Copy a committed file to ``target`` through the commit protocol (a real copy, not a link).

    Args:
        source: an existing local file.
        target: the final local path of the copy.

    Raises:
        FileNotFoundError: if ``source`` does not exist.
        OSError: on I/O failure; ``target`` is then unchanged.
    """
    source_fd = os.open(source, os.O_RDONLY)
    try:
        size = os.fstat(source_fd).st_size

        def write(fd: int) -> None:
            _copy_fd(source_fd, fd)

        atomic_write(target, write, expected_size=size)
    finally:
        os.close(source_fd)


def link_file(target: str, link: str) -> None:
    """Atomically make ``link`` a symlink to ``target`` (replacing what was there).

    The link stores ``target`` relative to the link's directory, so the directory can be moved.

    Args:
        target: the existing file the link points to.
        link: the path of the link.

    Raises:
        FileNotFoundError: if ``target`` does not exist.
        OSError: on failure; ``link`` is then unchanged.
    """
    target = os.path.abspath(target)
    link = os.path.abspath(link)
    if not os.path.exists(target):
        raise FileNotFoundError(errno.ENOENT, f"link_file: target {target!r} does not exist", target)
    directory = os.path.dirname(link)
    ensure_dir(directory)
    temp = temp_path_for(link)
    try:
        os.symlink(os.path.relpath(target, directory), temp)
        os.replace(temp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(directory)


def remove_file(path: str) -> None:
    """Remove a file durably; a missing file is not an error.

    Args:
        path: the local file (or symlink) to remove.

    Raises:
        IsADirectoryError: if ``path`` is a directory.
        OSError: on other failures.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this host (the writer named by a temporary name).

    Args:
        pid: the process id.

    Returns:
        True if it exists (also when it belongs to another user), False if it is gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def sweep_stale(
    directory: str,
    pattern: re.Pattern[str],
    remove: Callable[[str], bool],
    *,
    max_age_s: float = STALE_TEMP_AGE_S,
) -> list[str]:
    """Remove the temporaries in ``directory`` whose writer died or that are older than ``max_age_s``.

    The one sweep of both checkpoint kinds: a temporary name carries its writer's pid (``pattern``'s first
    group). Temporaries of this process are left alone unless too old (another thread may be writing them).

    Args:
        directory: the local directory to clean (missing directory: nothing to do).
        pattern: matches temporary names; group 1 is the writer's pid.
        remove: removes one stale path; returns False if the path is not of this kind (left alone).
        max_age_s: age after which any temporary is stale.

    Returns:
        The removed paths.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed: list[str] = []
    now = time.time()
    for name in names:
        match = pattern.match(name)
        if match is None:
            continue
        path = os.path.join(directory, name)
        try:
            age = now - os.lstat(path).st_mtime
        except FileNotFoundError:
            continue
        pid = int(match.group(1))
        if (pid == os.getpid() or pid_alive(pid)) and age < max_age_s:
            continue
        with contextlib.suppress(FileNotFoundError):
            if remove(path):
                removed.append(path)
    if removed:
        fsync_dir(directory)
    return removed


def _unlink(path: str) -> bool:
    os.unlink(path)
    return True


def sweep_stale_temps(directory: str, *, max_age_s: float = STALE_TEMP_AGE_S) -> list[str]:
    """Remove temporary files left in ``directory`` by writers that died (never a committed file).

    Args:
        directory: the local directory to clean (missing directory: nothing to do).
        max_age_s: age after which any temp file is stale.

    Returns:
        The removed paths.
    """
    return sweep_stale(directory, _TEMP_RE, _unlink, max_age_s=max_age_s)
