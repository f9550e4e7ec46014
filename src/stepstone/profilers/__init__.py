"""Profilers (Lightning's names): time the Trainer's hooks and steps, and report where a run spends its time."""

from __future__ import annotations

from stepstone.profilers.profiler import PassThroughProfiler, Profiler
from stepstone.profilers.simple import SimpleProfiler

__all__ = ["PassThroughProfiler", "Profiler", "SimpleProfiler"]
