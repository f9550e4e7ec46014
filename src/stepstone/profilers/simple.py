"""``SimpleProfiler``: the duration of each action, reported as a table when the run ends (Lightning's)."""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

from typing_extensions import override

from stepstone.profilers.profiler import Profiler

__all__ = ["SimpleProfiler"]


class SimpleProfiler(Profiler):
    """Records how long each action takes; the report gives each action's mean duration, number of calls, total
    time and share of the run, sorted by total time.

    Args:
        dirpath: folder of ``filename`` (default: the Trainer's ``log_dir``).
        filename: write the report to ``<dirpath>/<stage>-<filename>.txt`` instead of printing it.
        extended: include the number of calls and the percentage columns (default True).

    Raises:
        ValueError: (from :meth:`start`/:meth:`stop`) an action started twice, or stopped without a start.
    """

    def __init__(
        self, dirpath: str | Path | None = None, filename: str | None = None, extended: bool = True
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.current_actions: dict[str, float] = {}
        self.recorded_durations: defaultdict[str, list[float]] = defaultdict(list)
        self.extended = extended
        self.start_time = time.perf_counter()

    @override
    def start(self, action_name: str) -> None:
        """Start timing ``action_name``.

        Raises:
            ValueError: it is already being timed.
        """
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    @override
    def stop(self, action_name: str) -> None:
        """Stop timing ``action_name`` and record the duration.

        Raises:
            ValueError: it was not started.
        """
        end = time.perf_counter()
        if action_name not in self.current_actions:
            raise ValueError(
                f"Attempting to stop recording an action ({action_name}) which was never started."
            )
        self.recorded_durations[action_name].append(end - self.current_actions.pop(action_name))

    @override
    def summary(self) -> str:
        """The report table (title ``"<STAGE> Profiler Report"``); empty of rows when nothing was recorded."""
        sep = os.linesep
        title = f"{self._stage.upper()} " if self._stage is not None else ""
        output = f"{title}Profiler Report{sep}"
        if not self.recorded_durations:
            return output
        width = max(len(action) for action in self.recorded_durations)
        columns = ["Mean duration (s)", "Num calls", "Total time (s)", "Percentage %"]
        if not self.extended:
            columns = [columns[0], columns[2]]

        def row(action: str, *cells: str) -> str:
            return f"{sep}|  {action:<{width}s}\t|" + "".join(f"  {cell:<15}\t|" for cell in cells)

        header = row("Action", *columns)
        rule = f"{sep}{'-' * len(header.expandtabs())}"
        output += rule + header + rule
        total_duration = time.perf_counter() - self.start_time
        stats = []
        for action, durations in self.recorded_durations.items():
            total = math.fsum(durations)
            stats.append(
                (action, total / len(durations), len(durations), total, 100.0 * total / total_duration)
            )
        if self.extended:
            stats.sort(key=lambda s: s[4], reverse=True)
            calls = sum(s[2] for s in stats)
            output += row("Total", "-", f"{calls}", f"{total_duration:.5}", "100 %") + rule
            for action, mean, count, total, share in stats:
                output += row(action, f"{mean:.5}", f"{count}", f"{total:.5}", f"{share:.5}")
        else:
            stats.sort(key=lambda s: s[1], reverse=True)
            for action, mean, _, total, _ in stats:
                output += row(action, f"{mean:.5}", f"{total:.5}")
        return output + rule + sep
