"""Trainer plugins: Lightning's ``AsyncCheckpointIO`` spelling for asynchronous checkpointing.

``Trainer(plugins=[AsyncCheckpointIO()])`` makes every ModelCheckpoint of the Trainer save in the background
(unless the callback says ``async_save=False``). Unlike Lightning's plugin, the state is snapshotted into
reusable host buffers (not cloned on the GPU), at most one save is in flight, nothing (``best_model_path``,
``last``, deletions, loggers) points at a file before it is committed, and a failed background save is raised
in the training process. ``trainer.save_checkpoint`` stays synchronous: it returns once the file is committed.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from stepstone.errors import MisconfigurationException

__all__ = ["AsyncCheckpointIO"]


class AsyncCheckpointIO:
    """Turn on asynchronous ModelCheckpoint saves for a Trainer (Lightning's plugin name).

    Args:
        checkpoint_io: Lightning's wrapped CheckpointIO; stepstone's engine does the I/O, so only None is
            accepted.

    Raises:
        MisconfigurationException: if ``checkpoint_io`` is given.
    """

    def __init__(self, checkpoint_io: Any = None) -> None:
        if checkpoint_io is not None:
            raise MisconfigurationException(
                f"AsyncCheckpointIO(checkpoint_io={checkpoint_io!r}) is not supported: stepstone's checkpoint "
                "engine does the I/O (local paths and fsspec URLs). Pass AsyncCheckpointIO() without arguments."
            )

    @override
    def __repr__(self) -> str:
        return "AsyncCheckpointIO()"
