"""Checkpoint folders named by a local path or an fsspec URL (``s3://bucket/run``), for ``stepstone ckpt``.

Local folders are read with ``os`` (symlinks, sharded checkpoint directories); a URL through the engine's
storage layer, with the ``--storage-options`` JSON object (credentials, ``endpoint_url``) or, for S3, boto's
environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``...).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from stepstone.checkpoint.filesystems import filesystem
from stepstone.checkpoint.storage import split_url

__all__ = ["file_names", "is_folder", "is_url", "join", "storage_options"]


def storage_options(text: str) -> dict[str, Any]:
    """Parse ``--storage-options`` (argparse type): a JSON object of fsspec options.

    Args:
        text: the argument, e.g. ``'{"endpoint_url": "http://127.0.0.1:9000"}'``.

    Returns:
        The options.

    Raises:
        argparse.ArgumentTypeError: if it is not a JSON object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'must be a JSON object like \'{{"key": "value"}}\', got {text!r}')
    return value


def is_url(path: str) -> bool:
    """Whether ``path`` is a remote URL (``file://`` URLs and plain paths are local).

    Args:
        path: a path or URL.

    Returns:
        True for a URL of another filesystem than the local one.
    """
    return ("://" in path or "::" in path) and not path.startswith("file://")


def is_folder(path: str, options: dict[str, Any] | None) -> bool:
    """Whether ``path`` is a folder (on an object store: a prefix with objects under it).

    Args:
        path: a local path or URL.
        options: fsspec options for a URL.

    Returns:
        True for a folder.
    """
    if not is_url(path):
        return os.path.isdir(path)
    fs, target = filesystem(path, options)
    fs.invalidate_cache(target)
    return bool(fs.isdir(target))


def file_names(directory: str, options: dict[str, Any] | None) -> list[str]:
    """Names of the entries of a local folder, or of the files of a remote one.

    Args:
        directory: a local path or URL.
        options: fsspec options for a URL.

    Returns:
        The names.
    """
    if not is_url(directory):
        return os.listdir(directory)
    storage, path = split_url(directory, options)
    return list(storage.list_files(path))


def join(directory: str, name: str) -> str:
    """``name`` inside ``directory`` (a local path or URL).

    Args:
        directory: the folder.
        name: an entry's name.

    Returns:
        The path or URL.
    """
    return directory.rstrip("/") + "/" + name if is_url(directory) else os.path.join(directory, name)
