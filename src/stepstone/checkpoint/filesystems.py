"""Which fsspec filesystem a URL names (with the missing extra named), and what counts as a folder there."""

from __future__ import annotations

from typing import Any

import fsspec

__all__ = ["filesystem", "is_folder_like"]

_EXTRAS = {"s3": "s3", "s3a": "s3"}
_OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"})


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it (``fsspec.core.url_to_fs``).

    Args:
        url: an fsspec URL (``s3://bucket/run``, ``memory://x``, chained URLs).
        storage_options: options for the filesystem (credentials, ``endpoint_url``, ...).

    Returns:
        ``(filesystem, path)``.

    Raises:
        ImportError: when the package of the URL's protocol is missing; for ``s3://`` it names the extra
            (``pip install stepstone[s3]``).
    """
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return fs, path
    except ImportError as error:
        protocols = [part.split("://", 1)[0] for part in url.split("::") if "://" in part]
        extras = sorted({_EXTRAS[p] for p in protocols if p in _EXTRAS})
        if not extras:
            raise
        raise ImportError(
            f"{url!r} needs an fsspec filesystem that is not installed ({error}); install it with "
            f"`pip install stepstone[{','.join(extras)}]`"
        ) from error


def is_folder_like(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether files can be written inside ``path`` without creating it first.

    On an object store a folder is only a key prefix: ``makedirs`` creates nothing and an empty folder does
    not exist, so any path not taken by a file counts (Lightning's rule too). Elsewhere: ``fs.isdir``.

    Args:
        fs: the filesystem.
        path: a path of ``fs``.

    Returns:
        True if ``path`` is (or, on an object store, may serve as) a folder.
    """
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & _OBJECT_STORE_PROTOCOLS:
        return not fs.isfile(path)
    return bool(fs.isdir(path))
