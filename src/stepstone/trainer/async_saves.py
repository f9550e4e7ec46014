"""The Trainer's asynchronous checkpoint saves: one background writer and one set of host buffers per Trainer.

Every asynchronous ModelCheckpoint of a Trainer shares them, so at most one save is in flight and extra host
memory is one copy of the state, however many checkpoint callbacks there are. ModelCheckpoint keeps its own
pending save (the bookkeeping it applies once the file is committed); this module makes sure every pending
save is completed -- or its failure raised -- before the next one is taken and before ``fit`` returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepstone.checkpoint import AsyncWriter, HostStaging, SaveHandle, save_file_async

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["AsyncSaves"]


class AsyncSaves:
    """The writer thread and staging buffers of one Trainer (created on the first async save)."""

    def __init__(self) -> None:
        self._writer: AsyncWriter | None = None
        self._staging: HostStaging | None = None
        #: Budget of the host buffers for the next save (None: one full copy); set by the saving callback.
        self.max_staging_bytes: int | None = None

    @property
    def writer(self) -> AsyncWriter | None:
        """The background writer (None before the first asynchronous save)."""
        return self._writer

    @property
    def staging(self) -> HostStaging | None:
        """The host buffers (None before the first asynchronous save)."""
        return self._staging

    def save(self, path: str, checkpoint: dict[str, Any], metadata: dict[str, Any]) -> SaveHandle:
        """Snapshot ``checkpoint`` (waiting for the save in flight first) and write it in the background.

        Args:
            path: the final path or URL.
            checkpoint: the checkpoint dict (references to the live state; copied here).
            metadata: the trailer metadata.

        Returns:
            The save's handle.

        Raises:
            TypeError: if the checkpoint is not weights_only-safe.
            Exception: a previous save's failure nobody was told about yet.
        """
        if self._writer is None or self._staging is None:
            self._writer, self._staging = AsyncWriter(), HostStaging()
        self._staging.max_staging_bytes = self.max_staging_bytes
        return save_file_async(
            path, checkpoint, writer=self._writer, staging=self._staging, metadata=metadata
        )

    def wait_turn(self) -> None:
        """Backpressure before a new save: wait for the save in flight and report the wait (raises nothing)."""
        if self._writer is not None:
            self._writer.wait_turn()

    @staticmethod
    def complete_callbacks(trainer: Trainer) -> None:
        """Wait for and apply every ModelCheckpoint's pending save (so a new checkpoint holds their state).

        Args:
            trainer: the Trainer.

        Raises:
            Exception: the first pending save's failure (the callback's state then still names committed files).
        """
        for callback in trainer.checkpoint_callbacks:
            callback._complete_pending(trainer)

    def finish(self, trainer: Trainer) -> BaseException | None:
        """At teardown: complete every pending save, join the writer and free the buffers.

        Args:
            trainer: the Trainer.

        Returns:
            The first failure met (every pending save is still completed or failed), or None.
        """
        failure: BaseException | None = None
        for callback in trainer.checkpoint_callbacks:
            try:
                callback._complete_pending(trainer)
            except BaseException as error:  # returned to the caller, which raises it
                failure = failure or error
        if self._writer is not None:
            try:
                self._writer.wait()
            except BaseException as error:
                failure = failure or error
        if self._staging is not None:
            self._staging.release()
        return failure
