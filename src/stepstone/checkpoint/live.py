"""The storages an async save under a memory budget did not stage: read live, before training goes on.

With ``HostStaging(max_staging_bytes=...)`` a snapshot stages only what fits the budget; the other storages
stay in the snapshot as views of the live tensors. The writer thread serializes the snapshot as usual, and
the training thread waits (``LiveGate.wait``) until the writer no longer needs the live memory: every live
storage's bytes were written to the file and checksummed. Only then may training change the weights, so
the file still holds the state as it was at the save call (snapshot isolation), in the same format.

The gate recognizes a live storage by the address of the buffer the zip writer hands the sink (CPU
storages are passed without a copy, by ``torch_zip`` as by ``torch.save``). It opens on the first write after the last live byte was seen -- torch
has then moved on to the next record -- or, whatever happens, when the save ends (``open``), so a storage
torch copies first (CUDA) or any surprise costs time, never isolation.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

from stepstone.checkpoint.record import CheckpointRecord
from stepstone.checkpoint.sink import ChecksummingSink
from stepstone.checkpoint.stable_memory import buffer_address
from stepstone.checkpoint.writer import AsyncWriter, SaveHandle, SyncWriter

__all__ = ["GatedSink", "LiveGate", "submit_staged"]


class LiveGate:
    """Opens once the writer has consumed the live storages of a snapshot.

    Args:
        ranges: ``(address, nbytes)`` of each live CPU storage (empty: nothing live, the gate is open).
        opaque: whether some live storage cannot be recognized by address (e.g. on a GPU): the gate then
            only opens when the save ends.
    """

    def __init__(self, ranges: list[tuple[int, int]] | None = None, opaque: bool = False) -> None:
        merged = sorted(set(ranges or []))
        self._starts = [start for start, _ in merged]
        self._sizes = [size for _, size in merged]
        self._left = {start: size for start, size in merged}  # bytes not yet seen, per live storage
        self._opaque = opaque
        self._event = threading.Event()
        #: Bytes of the live storages (what the training thread waits to be written).
        self.live_bytes = sum(self._sizes)
        if not self._left and not opaque:
            self._event.set()

    @property
    def is_open(self) -> bool:
        """Whether the training thread may go on."""
        return self._event.is_set()

    def open(self) -> None:
        """Let the training thread go on (the save ended, or no longer reads live memory)."""
        self._event.set()

    def wait(self) -> None:
        """Block until the gate opens."""
        self._event.wait()

    def before_write(self) -> None:
        """Called before each write: open if every live byte was already written (torch moved on)."""
        if not self._left and not self._opaque:
            self._event.set()

    def covers(self, view: memoryview) -> bool:
        """Whether ``view`` lies in a live storage (counts its bytes if so).

        Args:
            view: a buffer torch.save just wrote (contiguous bytes).

        Returns:
            True if it was live memory.
        """
        if not self._starts or view.nbytes == 0:
            return False
        address = buffer_address(view)
        if address is None:
            return False
        index = bisect.bisect_right(self._starts, address) - 1
        if index < 0 or address + view.nbytes > self._starts[index] + self._sizes[index]:
            return False
        start = self._starts[index]
        if start in self._left:
            self._left[start] -= view.nbytes
            if self._left[start] <= 0:
                del self._left[start]
        return True


class GatedSink:
    """The file object ``torch.save`` writes into when part of the state is live: counts it for the gate.

    Args:
        sink: the checksumming sink that does the work.
        gate: the gate the training thread waits on.
    """

    def __init__(self, sink: ChecksummingSink, gate: LiveGate) -> None:
        self._sink = sink
        self._gate = gate

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Pass ``data`` on; once it was live memory, wait until its checksum is computed too.

        Args:
            data: the next bytes of the stream.

        Returns:
            The number of bytes accepted.

        Raises:
            OSError: if writing fails.
        """
        self._gate.before_write()
        count = self._sink.write(data)
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if self._gate.covers(view):
            # The sink may checksum a state's buffer after write() returned; live memory must be done with
            # before the training thread is let go.
            self._sink.drain()
        return count

    def write_member(self, data: bytes | bytearray | memoryview) -> int:
        """Pass a zip member's data on (``ChecksummingSink.write_member``: written and hashed on return).

        Args:
            data: the member's bytes.

        Returns:
            Their CRC32.

        Raises:
            OSError: if writing fails.
        """
        self._gate.before_write()
        crc = self._sink.write_member(data)
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if self._gate.covers(view):
            self._sink.drain()  # a small member may have been staged, its chunk CRC still queued
        return crc

    def flush(self) -> None:
        """Nothing to do (torch calls this)."""
        self._sink.flush()


def submit_staged(
    writer: AsyncWriter | SyncWriter, gate: LiveGate, save: Callable[[LiveGate], CheckpointRecord]
) -> SaveHandle:
    """Run ``save`` of a snapshot on ``writer``; return once the snapshot's live storages are written.

    Args:
        writer: where the save runs.
        gate: the snapshot's gate (``HostStaging.live_gate``); open at once when everything was staged.
        save: writes the snapshot, opening ``gate`` when its live part is written (it is opened anyway
            when ``save`` ends, failed or not).

    Returns:
        The save's handle.

    Raises:
        CheckpointError: if the writer is closed.
        Exception: the previous save's failure, if nobody was told about it yet (nothing is started).
    """

    def job() -> CheckpointRecord:
        try:
            return save(gate)
        finally:
            gate.open()

    handle = writer.submit(job)
    gate.wait()  # snapshot isolation: training must not change live storages before they are written
    return handle
