"""Preemption signals: on SIGTERM/SIGUSR1, finish the optimizer step, write a checkpoint, exit with code 75.

Clusters announce preemption and time limits with a signal (SLURM sends SIGTERM, or SIGUSR1 with
``--signal``), then kill the job after a grace period. While ``fit`` runs, the Trainer's handler only takes note
of the signal; the fit loop checks the note after every optimizer step (never inside one, never inside an
accumulation window), writes ``last-preempted.ckpt`` into the ModelCheckpoint's ``dirpath`` through the normal
commit protocol (marked ``checkpoint["stepstone"]["preempted"] = True``) and raises :class:`Preempted`, a
``SystemExit`` with code :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``: "try again"), so a job script can
requeue the job, whose next ``fit(ckpt_path="auto")`` or ``"last"`` continues exactly.

Further signals while the checkpoint is being written are noted and ignored, so they cannot interrupt the
commit. Handlers are installed only in the main thread (Python allows no other) and the previous handlers
are put back when ``fit`` returns.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

from stepstone.errors import MisconfigurationException

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["DEFAULT_PREEMPTION_SIGNALS", "PREEMPTED_EXIT_CODE", "Preempted", "PreemptionHandler"]

PREEMPTED_EXIT_CODE = 75
DEFAULT_PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")
PREEMPTED_FILENAME = "last-preempted.ckpt"


class Preempted(SystemExit):
    """Raised out of ``fit`` after a preemption checkpoint was committed; exits with code 75 if uncaught.

    Args:
        path: the checkpoint written (None when there was no ModelCheckpoint to write it).
        signum: the signal received.
    """

    def __init__(self, path: str | None, signum: int) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.path = path
        self.signum = signum


def resolve_signals(value: Iterable[int | str] | None) -> tuple[signal.Signals, ...]:
    """Validate ``Trainer(preemption_signals=...)``.

    Args:
        value: signal numbers or names (``"SIGTERM"``, ``signal.SIGUSR1``); None or ``()`` disables handling.

    Returns:
        The signals.

    Raises:
        MisconfigurationException: an unknown signal, or SIGKILL/SIGSTOP (which cannot be caught).
    """
    if value is None:
        return ()
    if isinstance(value, (str, int)):
        value = (value,)
    found: list[signal.Signals] = []
    for item in value:
        try:
            sig = signal.Signals[item] if isinstance(item, str) else signal.Signals(item)
        except (KeyError, ValueError):
            sig = None
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise MisconfigurationException(
                f"Trainer(preemption_signals={value!r}) contains {item!r}, which is not a signal that can be "
                "caught; pass names such as 'SIGTERM', 'SIGUSR1' (or () to disable preemption handling)."
            )
        found.append(sig)
    return tuple(dict.fromkeys(found))


class PreemptionHandler:
    """The Trainer's signal handling around ``fit`` (one per Trainer)."""

    def __init__(self, signals: tuple[signal.Signals, ...]) -> None:
        self.signals = signals
        self.requested: int | None = None
        self.saving = False
        self.consumed = False  # the signal led to a preemption save and exit
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere preemption is left to the process's handlers)."""
        self.requested = None
        self.consumed = False
        if not self.signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put the previous handlers back; a signal that arrived too late to stop training is delivered to them.

        A signal received after the last optimizer step (during the final validation, say) did not stop
        anything: ``fit`` ended normally. It was only borrowed, so it is raised again for the handler the
        program had before ``fit`` (by default SIGTERM then ends the process, as the sender meant).
        """
        for sig, previous in self._previous.items():
            # None means the previous handler was not installed from Python; the default is the closest.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        pending, self.requested = self.requested, None
        if pending is not None and not self.consumed:
            os.write(
                2,
                f"stepstone: fit ended before {signal.Signals(pending).name} could stop it; re-raised.\n".encode(),
            )
            signal.raise_signal(pending)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # os.write, not print: a handler may run in the middle of another print to stderr.
        name = signal.Signals(signum).name
        if self.requested is not None:
            os.write(2, f"stepstone: received {name} again; already stopping, ignored.\n".encode())
            return
        self.requested = signum
        os.write(
            2,
            f"stepstone: received {name}; finishing the current optimizer step, then saving a checkpoint and "
            "exiting.\n".encode(),
        )

    def due(self, trainer: Trainer) -> bool:
        """Whether to save and exit now (called after every optimizer step).

        Under DDP the ranks agree first: a signal that reached one rank stops every rank at the same step, so
        that they all take part in the same save (torchrun and srun forward the signal to every rank, but not
        at the same instant). This costs one tiny all-reduce per optimizer step; ``preemption_signals=None``
        removes it.

        Args:
            trainer: the Trainer whose fit is running.

        Returns:
            True when this rank or any other received a preemption signal.

        Raises:
            CollectiveError: the ranks could not agree within the strategy's timeout.
        """
        if trainer.world_size == 1 or not self.signals:
            return self.requested is not None
        from stepstone.strategies.collectives import agree

        return agree(self.requested is not None, require="any")

    def save_and_exit(self, trainer: Trainer) -> None:
        """Write the preemption checkpoint and raise :class:`Preempted`.

        Raises:
            Preempted: always.
        """
        signum = self.requested or signal.SIGTERM
        self.consumed = True
        name = signal.Signals(signum).name
        callback = trainer.checkpoint_callback
        path = None
        if callback is not None and callback.dirpath is not None:
            path = os.path.join(callback.dirpath, PREEMPTED_FILENAME)
            self.saving = True
            try:
                # The full state whatever save_weights_only says, committed like every checkpoint, so that
                # ckpt_path="last"/"auto" finds it; ModelCheckpoint's top-k and last bookkeeping are untouched.
                # Under DDP every rank builds it (the per-rank RNG states are gathered) and rank 0 writes it.
                trainer.checkpoint_port.save(path, weights_only=False)
            finally:
                self.saving = False
            where = f"saved {path} (resume with fit(ckpt_path='auto') or 'last')"
        else:
            where = "no checkpoint was saved: the Trainer has no ModelCheckpoint"
        print(
            f"stepstone: preempted by {name} at epoch {trainer.current_epoch}, global step {trainer.global_step}; "
            f"{where}. Exiting with code {PREEMPTED_EXIT_CODE}.",
            file=sys.stderr,
        )
        raise Preempted(path, signum)
