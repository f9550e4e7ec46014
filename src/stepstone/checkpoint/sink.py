"""The file-like object the zip writer writes into: it writes and checksums every byte in one pass.

``torch_zip`` hands it zip headers with ``write`` and each record's data with ``write_member``, which
writes the data straight from the tensor's memory while the pieces' CRCs are computed on other threads,
and returns the member's CRC combined from them (each byte hashed once; see ``write_member``). The rest
of this docstring describes ``write``, which is also what ``torch.save`` calls (the fallback):

``torch.save(obj, sink)`` hands the sink memoryviews of its buffers (tensor storages without a copy).
The chunk CRCs are computed on one worker thread, in stream order (a one-thread executor runs its jobs
FIFO), while the calling thread writes; ``zlib.crc32`` and ``os.write`` both release the GIL.

- A buffer inside one of the state's CPU storages (``StableMemory``) stays valid until ``torch.save``
  returns, so its CRC job is queued and ``write`` returns at once: stepstone's CRC then overlaps with
  torch's own work on the next record (its zip CRC32), not only with our write. Measured on a 2-vCPU VM,
  this is what makes a save as fast as ``torch.save`` + fsync.
- Any other large buffer is only valid during the call: its CRC runs concurrently with its write and is
  joined before ``write`` returns.
- Small writes (zip headers, the pickle, small tensors) are copied into a staging buffer, emitted in
  blocks: a state dict of thousands of tensors does not cost thousands of syscalls and thread hand-offs.

The last ``HOLD`` bytes of the stream are always held back: they are the zip's end-of-central-directory
record, whose final two bytes (the comment length) the trailer writer rewrites. Holding them back instead
of patching them afterwards (``pwrite``) also works for streams that cannot seek (object store uploads).
"""

from __future__ import annotations

import concurrent.futures
import zlib
from concurrent.futures import Future, ThreadPoolExecutor

from stepstone.checkpoint.checksum import ChunkedCrc32, crc32_combine
from stepstone.checkpoint.outputs import RawOutput
from stepstone.checkpoint.stable_memory import StableMemory

__all__ = ["HOLD", "ChecksummingSink"]

#: Bytes held back at the end of the stream: the size of a zip end-of-central-directory record.
HOLD = 22
#: Writes smaller than this are copied into the staging buffer.
_DIRECT_MIN = 1024 * 1024
#: The staging buffer is emitted once it holds this much.
_STAGE_LIMIT = 4 * 1024 * 1024


class ChecksummingSink:
    """Writable file-like object for ``torch.save``: writes to ``output`` and feeds ``crc`` in order.

    Args:
        output: where the bytes go.
        crc: the chunked checksum accumulator; only the worker touches it until ``finish`` returns.
        pool: a one-thread executor running the CRC jobs (FIFO); None computes CRCs inline.
        stable: the buffers that stay valid until the end of the save (None: none does).
        pieces_pool: threads hashing the pieces of a zip member in parallel (``write_member``); None: the
            member's pieces are hashed on ``pool``, or inline without one.
    """

    def __init__(
        self,
        output: RawOutput,
        crc: ChunkedCrc32,
        pool: ThreadPoolExecutor | None,
        stable: StableMemory | None,
        pieces_pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self._output = output
        self._crc = crc
        self._pool = pool
        self._pieces_pool = pieces_pool or pool
        self._stable = stable
        self._stage = bytearray()
        self._pending: list[Future[None]] = []
        self._total = 0
        self._finished = False
        #: The first exception raised by the output; torch may wrap it, the caller re-raises this one.
        self.error: BaseException | None = None

    @property
    def total(self) -> int:
        """Bytes received from torch so far."""
        return self._total

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` to the stream.

        Args:
            data: the next bytes (any buffer; torch passes memoryviews).

        Returns:
            The number of bytes accepted (all of them).

        Raises:
            OSError: if writing to the output fails.
        """
        assert not self._finished, "write after finish"
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        size = view.nbytes
        self._total += size
        if size < _DIRECT_MIN:
            self._stage += view
            if len(self._stage) >= _STAGE_LIMIT:
                self._emit_stage(keep=HOLD)
            return size
        # A large buffer: the staged bytes go first, then the buffer itself without a copy, except its last
        # HOLD bytes, which stay staged in case this is the end of the stream.
        self._emit_stage(keep=0)
        body = view[: size - HOLD]
        if self._stable is not None and self._stable.contains(body):
            self._checksum_later(body)
            self._write(body)
        else:
            self._checksum_during_write(body)
        self._stage += view[size - HOLD :]
        return size

    def write_member(self, data: bytes | bytearray | memoryview) -> int:
        """Append the data of one zip member and return its CRC32, hashing every byte once.

        A large member is split at the trailer's chunk boundaries; the pieces are hashed on the pieces pool
        while this thread writes the member, and each piece's CRC is then folded both into its chunk and
        into the member's CRC (``crc32_combine``). Returns once the bytes are written and hashed: ``data``
        may be reused afterwards. A small member is hashed twice (staged like any small write), which
        costs less than combining.

        Args:
            data: the member's bytes (any buffer; not the end of the stream, the zip directory follows).

        Returns:
            ``zlib.crc32`` of ``data``.

        Raises:
            OSError: if writing to the output fails.
        """
        assert not self._finished, "write after finish"
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes < _DIRECT_MIN:
            self.write(view)
            return zlib.crc32(view)
        self._emit_stage(keep=0)
        self.drain()  # the accumulator is this thread's until the next queued job
        self._total += view.nbytes
        lengths = self._crc.pieces(view.nbytes)
        jobs: list[Future[int]] = []
        offset = 0
        for length in lengths:
            piece = view[offset : offset + length]
            offset += length
            if self._pieces_pool is None:
                jobs.append(_done(zlib.crc32(piece)))
            else:
                jobs.append(self._pieces_pool.submit(zlib.crc32, piece))
        try:
            self._write(view)
        finally:
            concurrent.futures.wait(jobs)  # no job may outlive the call: ``data`` is only valid during it
        return self._fold(jobs, lengths)

    def _fold(self, jobs: list[Future[int]], lengths: list[int]) -> int:
        member = jobs[0].result()
        self._crc.add(member, lengths[0])
        for job, length in zip(jobs[1:], lengths[1:], strict=True):
            piece = job.result()
            self._crc.add(piece, length)
            member = crc32_combine(member, piece, length)
        return member

    def flush(self) -> None:
        """Nothing to do: data reaches the output in ``write``/``finish`` (torch calls this)."""

    def finish(self) -> bytes:
        """Emit all staged bytes but the held-back tail, checksum the tail and wait for every CRC job.

        Returns:
            The last ``HOLD`` bytes of the stream, not yet written to the output.

        Raises:
            ValueError: if fewer than ``HOLD`` bytes were written in total.
        """
        if len(self._stage) < HOLD:
            raise ValueError(f"the serialized stream is shorter than {HOLD} bytes")
        self._emit_stage(keep=HOLD)
        tail = bytes(self._stage)
        self._stage = bytearray()
        self._checksum_later(memoryview(tail))
        self.drain()
        self._finished = True
        return tail

    def drain(self) -> None:
        """Wait for all queued CRC jobs (the worker must be done with the state's memory)."""
        pending, self._pending = self._pending, []
        concurrent.futures.wait(pending)
        for job in pending:
            job.result()

    def _emit_stage(self, keep: int) -> None:
        count = len(self._stage) - keep
        if count <= 0:
            return
        with memoryview(self._stage) as staged:
            block = staged[:count].tobytes()  # owned by the CRC job from now on
        del self._stage[:count]
        self._checksum_later(memoryview(block))
        self._write(memoryview(block))

    def _checksum_later(self, view: memoryview) -> None:
        if self._pool is None:
            self._crc.update(view)
        else:
            self._pending.append(self._pool.submit(self._crc.update, view))

    def _checksum_during_write(self, view: memoryview) -> None:
        if self._pool is None:
            self._crc.update(view)
            self._write(view)
            return
        job = self._pool.submit(self._crc.update, view)
        try:
            self._write(view)
        finally:
            # The view is only valid during this call: the worker must be done with it before we return,
            # whatever happened to the write.
            concurrent.futures.wait([*self._pending, job])
        self.drain()
        job.result()

    def _write(self, view: memoryview) -> None:
        try:
            self._output.write_all(view)
        except BaseException as error:
            if self.error is None:
                self.error = error
            raise


def _done(value: int) -> Future[int]:
    future: Future[int] = Future()
    future.set_result(value)
    return future
