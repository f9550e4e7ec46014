"""Progress reports of long saves: silent when quick, bytes and rate every few seconds when slow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from stepstone.checkpoint import Progress, load_file, save_file
from stepstone.checkpoint.outputs import FdOutput
from stepstone.checkpoint.progress import ProgressOutput


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_quick_operations_stay_silent() -> None:
    lines: list[str] = []
    clock = FakeClock()
    progress = Progress("saving 'x'", delay_s=2.0, emit=lines.append, clock=clock)
    clock.now = 1.9
    progress.add(10 * 1024 * 1024)
    progress.finish()
    assert lines == []


def test_slow_operations_report_bytes_and_rate_then_done() -> None:
    lines: list[str] = []
    clock = FakeClock()
    progress = Progress("saving 'x'", delay_s=2.0, interval_s=5.0, emit=lines.append, clock=clock)
    for second in range(1, 13):  # 100 MiB per second for 12 s
        clock.now = float(second)
        progress.add(100 * 1024 * 1024)
    progress.finish()
    assert len(lines) == 4  # at 2 s, 7 s, 12 s, and the final line
    assert lines[0] == "stepstone: saving 'x': in progress, 200 MiB in 2.0 s (100 MiB/s)"
    assert lines[-1] == "stepstone: saving 'x': done, 1,200 MiB in 12.0 s (100 MiB/s)"


def test_large_writes_are_counted_in_pieces() -> None:
    counted: list[int] = []

    class Recorder:
        def add(self, count: int) -> None:
            counted.append(count)

    class Sink:
        def write_all(self, data: memoryview) -> None:
            pass

    ProgressOutput(Sink(), Recorder()).write_all(memoryview(bytearray(150 * 1024 * 1024)))  # type: ignore[arg-type]
    assert counted == [64 * 1024 * 1024, 64 * 1024 * 1024, 22 * 1024 * 1024]


def test_a_slowed_save_reports_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, clock = FdOutput.write_all, FakeClock()

    def slow(self: FdOutput, data: memoryview) -> None:
        clock.now += 0.03  # a slow disk, on a clock the test controls
        real(self, data)

    monkeypatch.setattr(FdOutput, "write_all", slow)
    lines: list[str] = []
    state: dict[str, Any] = {
        f"t{i}": torch.full((300_000,), float(i)) for i in range(12)
    }  # 12 writes >= 1 MiB
    path = tmp_path / "slow.ckpt"
    progress = Progress(f"saving {str(path)!r}", delay_s=0.1, interval_s=0.1, emit=lines.append, clock=clock)
    save_file(path, state, progress=progress)
    assert len(lines) >= 3 and lines[-1].startswith(f"stepstone: saving {str(path)!r}: done, ")
    assert "MiB/s" in lines[0] and "in progress" in lines[0]
    assert torch.equal(load_file(path)["t11"], state["t11"])


def test_saves_report_to_stderr_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real, clock = FdOutput.write_all, FakeClock()

    def slow(self: FdOutput, data: memoryview) -> None:
        clock.now += 0.1
        real(self, data)

    monkeypatch.setattr(FdOutput, "write_all", slow)
    monkeypatch.setitem(Progress.__init__.__kwdefaults__, "delay_s", 0.05)  # the 2 s default, shortened
    monkeypatch.setitem(Progress.__init__.__kwdefaults__, "clock", clock)
    save_file(tmp_path / "a.ckpt", {"w": torch.zeros(300_000)})
    assert "stepstone: saving" in capsys.readouterr().err


def test_a_slowed_load_reports_bytes_and_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.ckpt"
    state = {f"t{i}": torch.full((300_000,), float(i)) for i in range(12)}
    save_file(path, state, progress=False)
    real, clock = os.preadv, FakeClock()

    def slow(fd: int, buffers: list[memoryview], offset: int) -> int:
        clock.now += 0.02  # a slow disk: every read (verification and torch's) takes its time
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", slow)
    lines: list[str] = []
    progress = Progress(
        f"loading {str(path)!r}", delay_s=0.05, interval_s=0.05, emit=lines.append, clock=clock
    )
    loaded = load_file(path, progress=progress)
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert len(lines) >= 2 and "in progress" in lines[0] and "MiB/s" in lines[0]
    assert lines[-1].startswith(f"stepstone: loading {str(path)!r}: done, 14 MiB in ")
    assert progress.done >= 12 * 300_000 * 4


def test_a_load_counts_every_byte_torch_reads_on_a_fake_clock(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    save_file(path, {"w": torch.arange(1_000_000, dtype=torch.float32)}, progress=False)
    clock = FakeClock()
    lines: list[str] = []

    def tick() -> float:
        clock.now += 1.5  # every read looks slow: reports start after 2 s of fake time
        return clock.now

    progress = Progress("loading 'c'", delay_s=2.0, interval_s=5.0, emit=lines.append, clock=tick)
    assert torch.equal(load_file(path, progress=progress)["w"], torch.arange(1_000_000, dtype=torch.float32))
    assert lines and lines[0].startswith("stepstone: loading 'c': in progress, ")
    assert lines[-1].startswith("stepstone: loading 'c': done, 4 MiB in ")


def test_quick_loads_stay_silent_and_can_opt_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "q.ckpt"
    save_file(path, {"w": torch.zeros(1000)}, progress=False)
    load_file(path)
    monkeypatch.setitem(Progress.__init__.__kwdefaults__, "delay_s", -1.0)  # every read "takes long"
    load_file(path, progress=False)
    assert capsys.readouterr().err == ""
    load_file(path)
    assert "stepstone: loading" in capsys.readouterr().err
