"""The profiler interface the Trainer calls (Lightning's ``Profiler``), and the one that records nothing."""

from __future__ import annotations

import os
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import fsspec
from typing_extensions import override

from stepstone.checkpoint.filesystems import filesystem

__all__ = ["PassThroughProfiler", "Profiler"]


class Profiler(ABC):
    """Base class of profilers: subclass it and implement :meth:`start` and :meth:`stop` (and :meth:`summary`).

    The Trainer calls :meth:`setup` when an entry point (fit, validate, ...) starts, wraps every hook and step in
    :meth:`profile`, and calls :meth:`describe` when the entry point ends successfully.

    Args:
        dirpath: folder of ``filename`` (default: the Trainer's ``log_dir``).
        filename: write the report to ``<dirpath>/<stage>-<filename>.txt`` instead of printing it.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._output_file: IO[str] | None = None
        self._write_stream: Callable[[str], object] | None = None
        self._local_rank: int | None = None
        self._stage: str | None = None

    @abstractmethod
    def start(self, action_name: str) -> None:
        """Start recording ``action_name``."""

    @abstractmethod
    def stop(self, action_name: str) -> None:
        """Stop recording ``action_name`` (started by :meth:`start`)."""

    def summary(self) -> str:
        """The report (empty for a profiler that records nothing)."""
        return ""

    @contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        """Record the time spent inside the ``with`` block as one call of ``action_name``."""
        try:
            self.start(action_name)
            yield action_name
        finally:
            self.stop(action_name)

    def _prepare_filename(self, extension: str = ".txt") -> str:
        parts = [p for p in (self._stage, self.filename) if p]
        if self._local_rank is not None:
            parts.append(str(self._local_rank))
        base = re.sub(r"_+", "_", re.sub(r"[\\/:*?\"<>|\n\r\t]", "_", "-".join(parts))).strip()
        return (base or "profile") + extension

    def _prepare_streams(self) -> None:
        if self._write_stream is not None:
            return
        if self.filename and self.dirpath:
            dirpath = os.fspath(self.dirpath)
            fs, _ = filesystem(dirpath)
            fs.makedirs(dirpath, exist_ok=True)
            handle = fsspec.open(f"{dirpath.rstrip('/')}/{self._prepare_filename()}", "a").open()
            self._output_file = handle
            self._write_stream = handle.write
        else:
            self._write_stream = self._print_on_rank_zero

    def _print_on_rank_zero(self, text: str) -> None:
        if self._local_rank in (None, 0):
            print(text, file=sys.stdout, flush=True)

    def describe(self) -> None:
        """Write the report (to the file when ``filename`` is set, else to stdout), then close the file."""
        self._prepare_streams()
        summary = self.summary()
        if summary and self._write_stream is not None:
            self._write_stream(summary)
        if self._output_file is not None:
            self._output_file.flush()
        self.teardown(stage=self._stage)

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Called by the Trainer when an entry point starts.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"`` (the report's title).
            local_rank: this process's local rank (its number goes into the file name).
            log_dir: the default ``dirpath``.
        """
        self._stage = stage
        self._local_rank = local_rank
        self.dirpath = self.dirpath or log_dir

    def teardown(self, stage: str | None) -> None:
        """Close the report file, if one is open."""
        self._write_stream = None
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None

    def __del__(self) -> None:
        self.teardown(stage=self._stage)

    @property
    def local_rank(self) -> int:
        """The local rank given to :meth:`setup` (0 before)."""
        return 0 if self._local_rank is None else self._local_rank


class PassThroughProfiler(Profiler):
    """Records nothing (the profiler of a Trainer without ``profiler=``)."""

    @override
    def start(self, action_name: str) -> None:
        """Do nothing."""

    @override
    def stop(self, action_name: str) -> None:
        """Do nothing."""
