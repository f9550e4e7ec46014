"""The commit protocol for checkpoint *directories* (sharded checkpoints): a marker written last.

A sharded checkpoint is written into a hidden temporary directory next to its final path
(``.{name}.shardtmp-{pid}-{random}``), every file fsynced; then a marker file, ``.stepstone-committed``
(JSON: step, epoch, metrics, and the size and CRC32 of every other file), is written through the one-file
commit protocol, the temporary directory is fsynced and renamed onto the final path, and the parent directory
is fsynced. A directory without the marker is never a checkpoint: readers refuse it, and a crash at any point
leaves either no directory under the final name or the complete one.

Temporary directories use their own suffix (not the ``.tmp-`` of one-file temporaries) so that
``commit.sweep_stale_temps``, which unlinks files, never meets a directory; :func:`sweep_stale_dirs` removes
them instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
import zlib
from collections.abc import Mapping
from typing import Any

from stepstone.checkpoint import commit
from stepstone.checkpoint.record import CheckpointRecord, decode_metrics, encode_metrics
from stepstone.errors import CheckpointCorruptError, CheckpointNotFoundError, MisconfigurationException

__all__ = [
    "MARKER_NAME",
    "SHARDED_FORMAT_VERSION",
    "check_checksum",
    "checksum_files",
    "commit_dir",
    "is_committed_dir",
    "local_dir",
    "read_marker",
    "record_from_marker",
    "remove_dir",
    "remove_sharded",
    "sweep_stale_dirs",
    "temp_dir_for",
    "verify_dir",
    "write_marker",
]

#: The file whose presence makes a directory a committed checkpoint (written last).
MARKER_NAME = ".stepstone-committed"
#: Version of the marker's JSON layout.
SHARDED_FORMAT_VERSION = 1

_TEMP_DIR_RE = re.compile(r"^\..+\.shard(?:tmp|old)-(\d+)-[0-9a-f]{8}$")
_READ_BLOCK = 16 * 1024 * 1024


def local_dir(path: str | os.PathLike[str]) -> str:
    """The absolute form of a local directory path.

    Args:
        path: a path (URLs are refused: sharded checkpoints live on local or shared POSIX filesystems).

    Returns:
        The absolute path.

    Raises:
        MisconfigurationException: for a URL.
    """
    text = os.fspath(path)
    if "://" in text:
        raise MisconfigurationException(
            f"path={text!r} is not local; sharded checkpoints are local directories"
        )
    return os.path.abspath(text)


def temp_dir_for(path: str, kind: str = "shardtmp") -> str:
    """A fresh hidden directory name next to ``path`` (same parent, so the final rename stays atomic).

    Args:
        path: the final directory path.
        kind: ``"shardtmp"`` for a save in progress, ``"shardold"`` for a replaced checkpoint being deleted.

    Returns:
        The temporary path (not created).
    """
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name[:200]}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _file_crc(path: str) -> tuple[int, int]:
    crc = 0
    size = 0
    with open(path, "rb") as stream:
        # Also makes the bytes durable: the shards were written by torch, which may not have fsynced them all.
        os.fsync(stream.fileno())
        while block := stream.read(_READ_BLOCK):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return size, crc


def _payload_files(directory: str) -> list[str]:
    names = []
    for root, _, files in os.walk(directory):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), directory)
            if relative != MARKER_NAME and not commit.is_temp_name(name):
                names.append(relative)
    return sorted(names)


def checksum_files(directory: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Size and CRC32 of the files of ``directory`` whose name starts with ``prefix`` (each fsynced first).

    Each rank checksums the shards it wrote, so that rank 0 does not read the whole checkpoint alone.

    Args:
        directory: the temporary checkpoint directory.
        prefix: e.g. ``"__1_"`` for the shards torch.distributed.checkpoint's rank 1 wrote.

    Returns:
        ``{name: {"size": int, "crc32": "8 hex digits"}}``.
    """
    found = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith(prefix) and os.path.isfile(os.path.join(directory, name)):
            size, crc = _file_crc(os.path.join(directory, name))
            found[name] = {"size": size, "crc32": f"{crc:08x}"}
    return found


def write_marker(
    directory: str, meta: Mapping[str, Any], known: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Checksum every file of ``directory`` (fsyncing each), then commit the marker file (the last write).

    Args:
        directory: the temporary checkpoint directory, complete except for its marker.
        meta: ``{"step", "epoch", "metrics", "world_size"}`` as normalized by the caller.
        known: checksums already computed by the ranks that wrote those files (see :func:`checksum_files`);
            the other files are read here.

    Returns:
        The marker's content.

    Raises:
        OSError: if a file cannot be read or the marker cannot be written.
    """
    files: dict[str, dict[str, Any]] = {}
    for relative in _payload_files(directory):
        if known is not None and relative in known:
            files[relative] = dict(known[relative])
            continue
        size, crc = _file_crc(os.path.join(directory, relative))
        files[relative] = {"size": size, "crc32": f"{crc:08x}"}
    marker = {
        "format": "stepstone-sharded",
        "version": SHARDED_FORMAT_VERSION,
        "step": meta.get("step"),
        "epoch": meta.get("epoch"),
        "metrics": encode_metrics(meta.get("metrics") or {}),
        "world_size": meta.get("world_size", 1),
        "created": time.time(),
        "files": files,
    }
    data = json.dumps(marker, indent=1, sort_keys=True).encode()
    commit.atomic_write(os.path.join(directory, MARKER_NAME), lambda fd: os.write(fd, data))
    for root, dirs, _ in os.walk(directory):
        for name in dirs:
            commit.fsync_dir(os.path.join(root, name))
    return marker


def is_committed_dir(path: str) -> bool:
    """Whether ``path`` is a committed sharded checkpoint (a directory holding the marker).

    Args:
        path: a local path.

    Returns:
        True only for a directory with its marker file that is not a temporary directory (an interrupted
        save may have written its marker but not been renamed yet).
    """
    name = os.path.basename(os.path.normpath(path))
    if _TEMP_DIR_RE.match(name):
        return False
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MARKER_NAME))


def read_marker(path: str) -> dict[str, Any]:
    """The marker of a committed sharded checkpoint.

    Args:
        path: the checkpoint directory.

    Returns:
        The marker's JSON content.

    Raises:
        CheckpointNotFoundError: no directory at ``path``, or a directory without the marker (an unfinished
            or foreign save, which is never loaded).
        CheckpointCorruptError: the marker is not valid JSON of the expected form.
    """
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(
            f"No sharded checkpoint directory at {path!r}"
            + ("; it is a file, load it with load_file" if os.path.isfile(path) else "")
        )
    if _TEMP_DIR_RE.match(os.path.basename(os.path.normpath(path))):
        raise CheckpointNotFoundError(
            f"{path!r} is the temporary directory of an unfinished save, not a checkpoint"
        )
    marker_path = os.path.join(path, MARKER_NAME)
    try:
        with open(marker_path, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"{path!r} is not a committed checkpoint: it has no {MARKER_NAME} marker (an unfinished or "
            "interrupted save). Load an earlier checkpoint; this directory can be deleted."
        ) from None
    try:
        marker = json.loads(raw)
    except ValueError as error:
        raise CheckpointCorruptError(marker_path, f"the marker is not valid JSON ({error})") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        raise CheckpointCorruptError(marker_path, "the marker has no 'files' table")
    return marker


def verify_dir(path: str) -> dict[str, Any]:
    """Check the size and CRC32 of every file the marker lists (reads them all).

    Args:
        path: the checkpoint directory.

    Returns:
        The marker.

    Raises:
        CheckpointNotFoundError: as for :func:`read_marker`.
        CheckpointCorruptError: naming the first file that is missing, truncated or damaged.
    """
    marker = read_marker(path)
    for relative, expected in sorted(marker["files"].items()):
        file_path = os.path.join(path, relative)
        try:
            size, crc = _file_crc(file_path)
        except FileNotFoundError:
            raise CheckpointCorruptError(
                file_path, "the file is missing from the checkpoint directory"
            ) from None
        check_checksum(file_path, size, crc, expected)
    return marker


def check_checksum(path: str, size: int, crc: int, expected: Mapping[str, Any]) -> None:
    """Compare a file's size and CRC32, as read, with its entry in the marker.

    Args:
        path: the file (named in the error).
        size: the bytes read.
        crc: their CRC32.
        expected: the marker's ``{"size", "crc32"}`` entry for the file.

    Raises:
        CheckpointCorruptError: naming the file, when the size or the CRC32 differs.
    """
    if size != expected.get("size"):
        raise CheckpointCorruptError(path, f"its size is {size} bytes, {expected.get('size')} were written")
    if f"{crc:08x}" != expected.get("crc32"):
        raise CheckpointCorruptError(path, f"CRC32 mismatch (stored {expected.get('crc32')}, read {crc:08x})")


def record_from_marker(path: str, marker: Mapping[str, Any], verified: bool) -> CheckpointRecord:
    """The engine's record of a sharded checkpoint (for the run index and ``stepstone ckpt``).

    Args:
        path: the checkpoint directory.
        marker: its marker.
        verified: whether the files were just checked.

    Returns:
        The record; ``size`` is the total of the files, ``digest`` a CRC32 of the per-file checksums.
    """
    files = marker["files"]
    listing = ",".join(f"{name}:{files[name]['crc32']}" for name in sorted(files))
    return CheckpointRecord(
        path=path,
        name=os.path.basename(os.path.normpath(path)),
        size=sum(int(entry["size"]) for entry in files.values()),
        step=marker.get("step"),
        epoch=marker.get("epoch"),
        metrics=decode_metrics(marker.get("metrics", {})),
        created=float(marker.get("created", 0.0)),
        verified=verified,
        format_version=int(marker.get("version", SHARDED_FORMAT_VERSION)),
        digest=f"{zlib.crc32(listing.encode()):08x}",
    )


def commit_dir(temp: str, path: str) -> None:
    """Rename a complete temporary directory (marker included) onto ``path``, durably.

    An existing checkpoint under ``path`` is first renamed aside, then deleted once the new one is in place:
    a crash between the two renames leaves the old checkpoint under a hidden name (swept later) and no
    checkpoint at ``path`` -- never a partial one.

    Args:
        temp: the temporary directory (same parent as ``path``).
        path: the final path.

    Raises:
        OSError: if ``path`` exists and is not a directory, or a rename fails.
    """
    parent = os.path.dirname(os.path.abspath(path))
    commit.fsync_dir(temp)
    old = None
    if os.path.lexists(path):
        if not os.path.isdir(path) or os.path.islink(path):
            raise IsADirectoryError(
                f"Cannot save a sharded checkpoint at {path!r}: a file is there; remove it"
            )
        old = temp_dir_for(path, "shardold")
        os.replace(path, old)
    os.replace(temp, path)
    commit.fsync_dir(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        commit.fsync_dir(parent)


def remove_dir(path: str) -> None:
    """Delete a sharded checkpoint durably: renamed aside first (it stops being a checkpoint at once).

    Args:
        path: the checkpoint directory; missing is not an error. A symlink (a ``last`` alias) is unlinked, its
            target kept.
    """
    if os.path.islink(path):
        commit.remove_file(path)
        return
    if not os.path.isdir(path):
        return
    old = temp_dir_for(path, "shardold")
    os.replace(path, old)
    commit.fsync_dir(os.path.dirname(os.path.abspath(path)))
    shutil.rmtree(old, ignore_errors=True)


def _remove_temp_dir(path: str) -> bool:
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def sweep_stale_dirs(directory: str, *, max_age_s: float = commit.STALE_TEMP_AGE_S) -> list[str]:
    """Remove temporary checkpoint directories whose writer died (or that are older than ``max_age_s``).

    Args:
        directory: the parent directory of the checkpoints.
        max_age_s: age after which a temporary directory is stale even if its pid is alive.

    Returns:
        The removed paths.
    """
    return commit.sweep_stale(directory, _TEMP_DIR_RE, _remove_temp_dir, max_age_s=max_age_s)


def remove_sharded(path: str | os.PathLike[str]) -> None:
    """Delete a sharded checkpoint directory durably (renamed aside first: it is gone at once for readers).

    Args:
        path: the checkpoint directory; missing is not an error.
    """
    remove_dir(local_dir(path))
