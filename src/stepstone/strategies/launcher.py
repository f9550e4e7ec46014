"""Starting the ranks of a run on this node: re-running the script (``ddp``) or spawning a function (``ddp_spawn``).

``ScriptLauncher`` is what Lightning does for ``Trainer(strategy="ddp", devices=N)`` from a plain
``python train.py``: the original process becomes local rank 0 and starts N-1 copies of the same command line
with the rank variables set; each copy reaches the same ``Trainer(...)`` line and finds itself a child through
:func:`~stepstone.strategies.environment.detect_environment`. A watcher thread notices a child that dies and
stops its siblings, so nobody waits on a dead rank; the dead rank's closed connections (or the process group
timeout) make rank 0's next collective fail, and :meth:`ScriptLauncher.check` names the child that died.

``ddp_spawn`` (the spawn launcher) lives in :mod:`stepstone.strategies.spawn`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from stepstone.errors import MisconfigurationException
from stepstone.strategies.environment import LAUNCHED_BY_VAR, ClusterEnvironment

__all__ = ["ChildExit", "ChildProcessFailed", "ScriptLauncher", "find_free_port", "script_command"]

_PR_SET_PDEATHSIG = 1


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now on ``host`` (the OS picks it; another process could still take it later).

    Args:
        host: the interface to bind.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def script_command(argv: Sequence[str] | None = None) -> list[str]:
    """The command line that re-runs this program: same interpreter, same script or ``-m`` module, same args.

    Args:
        argv: the arguments (default ``sys.argv``); ``argv[0]`` is the script.

    Returns:
        The command, e.g. ``[sys.executable, "/abs/train.py", "--lr", "0.1"]`` or
        ``[sys.executable, "-m", "pkg.train", "--lr", "0.1"]``.

    Raises:
        MisconfigurationException: the program is not a script (``python -c``, a REPL or a notebook).
    """
    import __main__  # imported here: the main module is only meaningful at launch time

    argv = list(sys.argv if argv is None else argv)
    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name:
        # `python -m pkg.train` (or `python -m pkg`, whose spec is `pkg.__main__`): re-run the module by name.
        return [sys.executable, "-m", spec.name, *argv[1:]]
    if not argv or argv[0] in ("", "-c", "-") or not os.path.isfile(argv[0]):
        raise MisconfigurationException(
            f"strategy='ddp' re-runs the script to start the other ranks, but this program ({argv[:1]!r}) is not "
            "a script file (python -c, a REPL or a notebook?). Use strategy='ddp_spawn', or run a script."
        )
    return [sys.executable, os.path.abspath(argv[0]), *argv[1:]]


@dataclass(frozen=True)
class ChildExit:
    """A child rank that exited with an error.

    Attributes:
        local_rank: its local rank.
        global_rank: its global rank.
        pid: its process id.
        returncode: its exit status (negative: killed by that signal).
    """

    local_rank: int
    global_rank: int
    pid: int
    returncode: int

    def describe(self) -> str:
        """A sentence naming the rank and how it ended."""
        how = (
            f"was killed by signal {-self.returncode}"
            if self.returncode < 0
            else f"exited with code {self.returncode}"
        )
        return f"rank {self.global_rank} (local rank {self.local_rank}, pid {self.pid}) {how}"


class ChildProcessFailed(RuntimeError):
    """A rank started by the launcher exited with an error (its own output says why)."""

    def __init__(self, failure: ChildExit) -> None:
        self.failure = failure
        super().__init__(
            f"Distributed run failed: {failure.describe()}; its error is printed above in its output. The other "
            "ranks were stopped."
        )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: the child gets SIGKILL if the launching process dies (e.g. SIGKILLed) instead of living on.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ScriptLauncher:
    """Starts local ranks 1..N-1 of this node by re-running the command line; this process is local rank 0.

    Args:
        environment: local rank 0's environment (see
            :func:`~stepstone.strategies.environment.launcher_environment`).
        num_processes: ranks on this node (``Trainer(devices=N)``).
        command: the command to run (default :func:`script_command`).
        env: the children's base environment (default ``os.environ``).
        poll_interval: seconds between checks of the children.
        on_failure: called (from the watcher thread) with the first child that failed, after its siblings
            were stopped.

    Raises:
        MisconfigurationException: ``environment`` is not local rank 0 or disagrees with ``num_processes``.
    """

    def __init__(
        self,
        environment: ClusterEnvironment,
        num_processes: int,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        poll_interval: float = 0.2,
        on_failure: Callable[[ChildExit], None] | None = None,
    ) -> None:
        if environment.local_rank != 0 or environment.world_size != num_processes * environment.num_nodes:
            raise MisconfigurationException(
                f"ScriptLauncher(num_processes={num_processes}) must run in local rank 0 of a world of "
                f"{num_processes} x {environment.num_nodes} processes; got {environment}. Was LOCAL_RANK set "
                "by hand?"
            )
        self.environment = environment
        self.num_processes = num_processes
        self._command = list(command) if command is not None else None
        self._base_env = env  # None: os.environ as it is at launch (seed_everything may have run since)
        self._poll_interval = poll_interval
        self._on_failure = on_failure
        self.children: list[subprocess.Popen[bytes]] = []
        self._failure: ChildExit | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def child_env(self, local_rank: int) -> dict[str, str]:
        """The environment of the child with ``local_rank`` (the torchrun variables, plus a launcher marker)."""
        e = self.environment
        env = dict(os.environ if self._base_env is None else self._base_env)
        env.update(
            RANK=str(e.node_rank * self.num_processes + local_rank),
            LOCAL_RANK=str(local_rank),
            WORLD_SIZE=str(e.world_size),
            LOCAL_WORLD_SIZE=str(self.num_processes),
            GROUP_RANK=str(e.node_rank),
            NODE_RANK=str(e.node_rank),
            MASTER_ADDR=e.main_address,
            MASTER_PORT=str(e.main_port),
        )
        env[LAUNCHED_BY_VAR] = str(os.getpid())
        return env

    def launch(self) -> None:
        """Start the children and the watcher thread (once).

        Raises:
            RuntimeError: called twice.
            MisconfigurationException: this program cannot be re-run (see :func:`script_command`).
        """
        if self.children:
            raise RuntimeError("ScriptLauncher.launch() was already called; it starts the ranks only once.")
        command = self._command if self._command is not None else script_command()
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        for local_rank in range(1, self.num_processes):
            self.children.append(
                subprocess.Popen(command, env=self.child_env(local_rank), preexec_fn=preexec)
            )
        self._watcher = threading.Thread(target=self._watch, name="stepstone-rank-watcher", daemon=True)
        self._watcher.start()

    @property
    def failure(self) -> ChildExit | None:
        """The first child that exited with an error (None while all are well)."""
        return self._failure

    def check(self) -> None:
        """Raise if a child failed (call it when a collective fails, to name the real cause).

        Raises:
            ChildProcessFailed: a child exited with an error.
        """
        if self._failure is not None:
            raise ChildProcessFailed(self._failure)

    def _exit_of(self, index: int, proc: subprocess.Popen[bytes]) -> ChildExit:
        local_rank = index + 1
        global_rank = self.environment.node_rank * self.num_processes + local_rank
        return ChildExit(local_rank, global_rank, proc.pid, int(proc.returncode))

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_interval):
            codes = [proc.poll() for proc in self.children]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                self._failure = self._exit_of(failed[0], self.children[failed[0]])
                self._terminate()
                if self._on_failure is not None:
                    self._on_failure(self._failure)
                return
            if all(code == 0 for code in codes):
                return

    def _terminate(self, grace: float = 3.0) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                # A rank blocked inside a collective may not react to SIGTERM in time.
                proc.kill()
                proc.wait()

    def _stop_watcher(self) -> None:
        self._stop.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()

    def join(self, timeout: float | None = None) -> None:
        """Wait for every child to exit (rank 0 calls it when its own work is done).

        Args:
            timeout: seconds to wait; then the children are killed.

        Raises:
            ChildProcessFailed: a child exited with an error.
            TimeoutError: the children did not exit within ``timeout`` (they were killed).
        """
        try:
            for index, proc in enumerate(self.children):
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._terminate()
                    raise TimeoutError(
                        f"Rank {self._exit_of(index, proc).global_rank} (pid {proc.pid}) did not exit within "
                        f"{timeout}s after rank 0 finished; it was killed."
                    ) from None
                if proc.returncode != 0 and self._failure is None:
                    self._failure = self._exit_of(index, proc)
        finally:
            self._stop_watcher()
        self.check()

    def kill(self, grace: float = 3.0) -> None:
        """Stop every child: SIGTERM, then SIGKILL after ``grace`` seconds (rank 0 calls it when it fails).

        Args:
            grace: seconds a child gets to exit after SIGTERM.
        """
        self._stop_watcher()
        self._terminate(grace)

    def diagnose(self, wait: float = 1.0) -> ChildExit | None:
        """The child that failed on its own, waiting up to ``wait`` seconds for one to show up.

        Call it when this rank's collective failed: the usual cause is a child that died a moment earlier.

        Args:
            wait: seconds to keep looking.

        Returns:
            The first child found exited with an error, or None.
        """
        deadline = time.monotonic() + wait
        while self._failure is None:
            for index, proc in enumerate(self.children):
                if proc.poll() not in (None, 0):
                    self._failure = self._exit_of(index, proc)
                    break
            if self._failure is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return self._failure

    def __enter__(self) -> ScriptLauncher:
        self.launch()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.join()
            return
        self.diagnose()
        self.kill()
        if self._failure is not None and exc is not None:
            note = f"The run failed because {self._failure.describe()} (see its output above)."
            getattr(exc, "add_note", lambda _: None)(note)  # Python >= 3.11
