"""The ``stepstone`` console script itself (a real subprocess): ``stepstone ckpt verify`` output and exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from stepstone.checkpoint import save_file


def test_console_script_verifies_and_fails_on_damage(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("stepstone")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "stepstone.cli"]
    good, bad = tmp_path / "good.ckpt", tmp_path / "bad.ckpt"
    save_file(good, {"w": torch.ones(1000)})
    data = bytearray(good.read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    # One run (an interpreter start costs seconds): the good file verifies, the bad one fails, exit code 1.
    result = subprocess.run(
        [*command, "ckpt", "verify", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert f"OK        {good}" in result.stdout and f"FAILED    {bad}" in result.stdout
    assert "1 of 2 file(s) verified" in result.stdout


def test_the_command_line_starts_without_importing_fsdp() -> None:
    # torch.distributed.checkpoint costs ~1 s to import: `import stepstone` and the command line skip it, and
    # FSDPStrategy is still exported (loaded on first use) and recognised.
    code = (
        "import sys, stepstone, stepstone.cli\n"
        "print('torch.distributed.checkpoint' in sys.modules)\n"
        "from stepstone.strategies import FSDPStrategy, is_fsdp\n"
        "print(is_fsdp(FSDPStrategy.__new__(FSDPStrategy)), is_fsdp(None), is_fsdp('fsdp'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "False", "False"]
