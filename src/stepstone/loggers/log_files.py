"""The file operations of the file-based loggers, on a local folder or any fsspec URL (``memory://``, ``s3://``).

A local path (or ``file://`` URL) takes the plain ``os`` path with atomic replaces; a URL goes through fsspec.
Object stores cannot append, so an append there rewrites the whole object (metric files are small).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, Any

from stepstone.core.hparams_yaml import write_atomically

__all__ = ["append_text", "is_dir", "is_file", "is_url", "local_path", "make_dirs", "read_text", "subfolders"]

_FILE_SCHEME = "file://"


def is_url(path: str) -> bool:
    """Whether ``path`` is a non-local fsspec URL (``file://`` counts as local).

    Args:
        path: a folder or file path.

    Returns:
        True when fsspec must handle it.
    """
    return "://" in path and not path.startswith(_FILE_SCHEME)


def local_path(path: str) -> str:
    """``path`` without a ``file://`` scheme (the ``os`` functions take plain paths).

    Args:
        path: a local path or a ``file://`` URL.

    Returns:
        The plain local path.
    """
    return path[len(_FILE_SCHEME) :] if path.startswith(_FILE_SCHEME) else path


def _fs(path: str) -> tuple[Any, str]:
    from stepstone.checkpoint.filesystems import filesystem

    return filesystem(path)


def make_dirs(path: str) -> None:
    """Create the folder ``path`` and its parents when missing."""
    if is_url(path):
        fs, target = _fs(path)
        fs.makedirs(target, exist_ok=True)
    else:
        os.makedirs(local_path(path), exist_ok=True)


def is_file(path: str) -> bool:
    """Whether a file exists at ``path``."""
    if is_url(path):
        fs, target = _fs(path)
        return bool(fs.isfile(target))
    return os.path.isfile(local_path(path))


def is_dir(path: str) -> bool:
    """Whether a folder exists at ``path``."""
    if is_url(path):
        fs, target = _fs(path)
        return bool(fs.isdir(target))
    return os.path.isdir(local_path(path))


def subfolders(path: str) -> list[str]:
    """The names of the folders directly in ``path``; ``[]`` when ``path`` is no folder."""
    if is_url(path):
        fs, target = _fs(path)
        if not fs.isdir(target):
            return []
        return [
            entry["name"].rstrip("/").rsplit("/", 1)[-1]
            for entry in fs.ls(target, detail=True)
            if entry["type"] == "directory"
        ]
    try:
        return [entry.name for entry in os.scandir(local_path(path)) if entry.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_text(path: str) -> str:
    """The contents of the text file ``path``."""
    if is_url(path):
        fs, target = _fs(path)
        with fs.open(target, "r", newline="", encoding="utf-8") as handle:
            return str(handle.read())
    with open(local_path(path), newline="", encoding="utf-8") as handle:
        return handle.read()


def write_whole(path: str, write: Callable[[IO[str]], object]) -> None:
    """Replace the file ``path`` with what ``write`` writes; readers never see half a file.

    Args:
        path: the file; its folder is created when missing.
        write: writes the contents to the open text handle.
    """
    if not is_url(path):
        write_atomically(local_path(path), write)
        return
    fs, target = _fs(path)
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    # One object PUT: an object store shows the old or the new object, never a part.
    with fs.open(target, "w", newline="", encoding="utf-8") as handle:
        write(handle)


def append_text(path: str, write: Callable[[IO[str]], object]) -> None:
    """Append what ``write`` writes to the existing file ``path``.

    Args:
        path: an existing file.
        write: writes the new text to the open text handle.
    """
    if not is_url(path):
        with open(local_path(path), "a", newline="", encoding="utf-8") as handle:
            write(handle)
        return
    old = read_text(path)

    def whole(handle: IO[str]) -> None:
        handle.write(old)
        write(handle)

    write_whole(path, whole)
