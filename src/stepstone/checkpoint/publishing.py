"""Publishing a committed checkpoint under a second name: a durable copy or a symlink (e.g. ``last.ckpt``).

The manager runs the publication right after the commit, on the thread that wrote the checkpoint: for a
background save that is the writer thread, so the training thread never copies a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from stepstone.checkpoint.filename_template import check_checkpoint_name
from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.storage import Storage, split_url
from stepstone.errors import MisconfigurationException

__all__ = ["AfterCommit", "publisher"]

#: Runs once a checkpoint is committed, with its record (its failure is the save's failure).
AfterCommit = Callable[[CheckpointRecord], None]


def publisher(
    storage: Storage, directory: str, options: dict[str, Any] | None, publish_as: object, link: bool
) -> tuple[str, AfterCommit]:
    """The publication of a checkpoint of ``directory`` as ``publish_as``.

    Args:
        storage: the storage of ``directory``.
        directory: the checkpoint directory, as ``storage`` names it.
        options: fsspec options for remote paths.
        publish_as: a plain name (inside ``directory``), or a path or URL (anything with a '/').
        link: publish a symlink instead of a copy (local paths only).

    Returns:
        The target as its storage names it (a local path: absolute), and the function that publishes a
        committed checkpoint's record there.

    Raises:
        MisconfigurationException: an invalid ``publish_as``, or ``link`` with a remote target.
    """
    if not isinstance(publish_as, str) or not publish_as:
        raise MisconfigurationException(f"publish_as must be a name or a path, got {publish_as!r}")
    if "/" in publish_as or os.sep in publish_as:
        target = publish_as
    else:
        target = storage.url(storage.join(directory, check_checkpoint_name("publish_as", publish_as)))
    located, fs_target = split_url(target, options)
    if link and not located.is_local:
        raise MisconfigurationException(
            f"publish_link=True needs a local path, got publish_as={publish_as!r}; publish a copy instead"
        )

    def publish(record: CheckpointRecord) -> None:
        import stepstone.checkpoint as engine  # looked up at the call (tests observe the thread)

        if link:
            engine.link_file(record.path, target)
        else:
            engine.copy_file(record.path, target, storage_options=options)

    return fs_target, publish
