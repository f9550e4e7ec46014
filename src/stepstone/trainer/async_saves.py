"""The Trainer's asynchronous checkpoint saves: one background writer and one set of host buffers per Trainer.

Every asynchronous save of a Trainer shares them, so at most one save is in flight and extra host memory is one
copy of the state, however many checkpoint callbacks there are. The checkpoint port (``checkpoint_port``) settles
each save's bookkeeping before the next one is taken and before ``fit`` returns.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from stepstone.checkpoint import (
    AsyncWriter,
    CheckpointRecord,
    HostStaging,
    SaveHandle,
    remove_checkpoint,
    save_file_async,
)
from stepstone.checkpoint.format import estimate_size

__all__ = ["AsyncSaves"]


class AsyncSaves:
    """The writer thread and staging buffers of one Trainer (created on the first async save)."""

    def __init__(self) -> None:
        self._writer: AsyncWriter | None = None
        self._staging: HostStaging | None = None
        #: Budget of the host buffers for the next save (None: one full copy); set by the saving callback.
        self.max_staging_bytes: int | None = None
        self._deleter: ThreadPoolExecutor | None = None
        self._deletions: dict[str, Future[None]] = {}  # path -> its background deletion

    @property
    def writer(self) -> AsyncWriter | None:
        """The background writer (None before the first asynchronous save)."""
        return self._writer

    @property
    def staging(self) -> HostStaging | None:
        """The host buffers (None before the first asynchronous save)."""
        return self._staging

    def save(
        self,
        path: str,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        publish_as: str | None = None,
        publish_link: bool = False,
    ) -> SaveHandle:
        """Snapshot ``checkpoint`` (waiting for the save in flight first) and write it in the background.

        The free-space preflight runs on the writer thread before writing, as for a synchronous save.

        Args:
            path: the final path or URL.
            checkpoint: the checkpoint dict (references to the live state; copied here).
            metadata: the trailer metadata.
            publish_as: once committed, also make the file available under this path (a durable copy, or a
                symlink with ``publish_link``), on the writer thread: the training thread never copies.
            publish_link: link instead of copy.

        Returns:
            The save's handle.

        Raises:
            TypeError: if the checkpoint is not weights_only-safe.
            Exception: a previous save's failure nobody was told about yet.
        """
        self.settle_deletions(path)  # a file being deleted is not written again under its name meanwhile
        if self._writer is None or self._staging is None:
            self._writer, self._staging = AsyncWriter(), HostStaging()
        self._staging.max_staging_bytes = self.max_staging_bytes
        size = estimate_size(checkpoint)
        after_commit = None
        if publish_as is not None:
            target = publish_as

            def after_commit(record: CheckpointRecord) -> None:
                import stepstone.checkpoint as engine  # looked up at the call (tests observe the thread)

                (engine.link_file if publish_link else engine.copy_file)(record.path, target)

        return save_file_async(
            path,
            checkpoint,
            writer=self._writer,
            staging=self._staging,
            metadata=metadata,
            expected_size=size,
            after_commit=after_commit,
        )

    def remove_later(self, path: str) -> None:
        """Delete a committed checkpoint file that nothing names any more, on a background thread.

        Unlinking a large file takes the kernel a while (about 90 ms for 512 MiB on the development VM), which
        would otherwise stall the training step that completes a background save. The caller has already
        dropped the file from the index and from its state. A failure is raised, not dropped: by the next
        call of this method, by a save of the same path, or at the end of ``fit``.

        Args:
            path: a local checkpoint file.

        Raises:
            OSError: an earlier background deletion failed.
        """
        self._raise_failed([p for p, future in self._deletions.items() if future.done()])
        if self._deleter is None:
            self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepstone-delete")
        self._deletions[path] = self._deleter.submit(remove_checkpoint, path)

    def settle_deletions(self, path: str | None = None) -> None:
        """Wait for the background deletion of ``path`` (None: of every file).

        Args:
            path: a file about to be written (its pending deletion must not remove the new file).

        Raises:
            OSError: a deletion waited for failed.
        """
        self._raise_failed(
            list(self._deletions) if path is None else [path] if path in self._deletions else []
        )

    def _raise_failed(self, paths: list[str]) -> None:
        errors = [error for error in (self._deletions.pop(p).exception() for p in paths) if error is not None]
        if errors:
            raise errors[0]

    def wait_turn(self) -> None:
        """Backpressure before a new save: wait for the save in flight and report the wait (raises nothing)."""
        if self._writer is not None:
            self._writer.wait_turn()

    def finish(self) -> BaseException | None:
        """At teardown (after the port settled its saves): join the writer, settle deletions, free the buffers.

        Returns:
            The first failure met, or None.
        """
        failure: BaseException | None = None
        if self._writer is not None:
            try:
                self._writer.wait()
            except BaseException as error:
                failure = failure or error
        try:
            self.settle_deletions()
        except BaseException as error:
            failure = failure or error
        if self._deleter is not None:
            self._deleter.shutdown(wait=True)
            self._deleter = None
        if self._staging is not None:
            self._staging.release()
        return failure
