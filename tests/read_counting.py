"""Counting the bytes read from the files of one directory (every ``open`` for reading goes through the count)."""

from __future__ import annotations

import builtins
import io
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest


class _CountingFileIO(io.FileIO):
    """A raw file that adds every byte it reads to ``counts[name]`` (buffered readers read through it)."""

    def __init__(self, path: str, counts: Counter[str]) -> None:
        super().__init__(path, "r")
        self._counts = counts
        self._key = os.path.basename(path)

    def read(self, size: int = -1, /) -> bytes:
        data = super().read(size)
        self._counts[self._key] += len(data or b"")
        return data

    def readall(self) -> bytes:
        data = super().readall()
        self._counts[self._key] += len(data)
        return data

    def readinto(self, buffer: Any, /) -> int:
        count = super().readinto(buffer)
        self._counts[self._key] += count or 0
        return count


def count_reads(monkeypatch: pytest.MonkeyPatch, directory: str | os.PathLike[str]) -> Counter[str]:
    """Count, per file name, the bytes read from the files directly inside ``directory`` from now on.

    Args:
        monkeypatch: the test's monkeypatch (``builtins.open`` and ``io.open``, which pathlib uses, are patched).
        directory: the directory whose files are counted; other files open as usual.

    Returns:
        The counter, filled as files are read.
    """
    counts: Counter[str] = Counter()
    real_open = builtins.open
    root = os.path.abspath(directory)

    def counting_open(file: Any, mode: str = "r", buffering: int = -1, *args: Any, **kwargs: Any) -> Any:
        counted = isinstance(file, (str, Path)) and os.path.dirname(os.path.abspath(file)) == root
        if not counted or set(mode) - {"r", "b"} or "b" not in mode:
            return real_open(file, mode, buffering, *args, **kwargs)
        raw = _CountingFileIO(os.fspath(file), counts)
        return raw if buffering == 0 else io.BufferedReader(raw)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return counts
