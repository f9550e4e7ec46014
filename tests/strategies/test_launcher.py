"""Starting ranks: re-running the script (ddp), spawning a function (ddp_spawn), and noticing a dead rank."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
from torch.multiprocessing.spawn import ProcessRaisedException

from stepstone.errors import MisconfigurationException
from stepstone.strategies import (
    ChildExit,
    ChildProcessFailed,
    ScriptLauncher,
    SpawnedRankFailed,
    ddp_spawn,
    find_free_port,
    launcher_environment,
)
from stepstone.strategies.environment import LAUNCHED_BY_VAR, detect_environment
from stepstone.strategies.launcher import script_command
from strategies import dist_workers

_EXIT_BY_RANK = "import os, sys; sys.exit(int(os.environ['LOCAL_RANK']) + 2)"


def _launcher(num: int, code: str, **kwargs: object) -> ScriptLauncher:
    env = launcher_environment(num, env={}, port=find_free_port())
    return ScriptLauncher(env, num, command=[sys.executable, "-c", code], poll_interval=0.05, **kwargs)  # type: ignore[arg-type]


# --- the command line ---------------------------------------------------------------------------------
def _fake_main(monkeypatch: pytest.MonkeyPatch, spec_name: str | None) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name=spec_name) if spec_name else None  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, "__main__", main)


def test_script_command_reruns_a_script_with_its_arguments(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "train.py"
    script.write_text("")
    _fake_main(monkeypatch, None)
    monkeypatch.chdir(tmp_path)
    assert script_command(["train.py", "--lr", "0.1"]) == [sys.executable, str(script), "--lr", "0.1"]


def test_script_command_reruns_a_module_with_dash_m(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_main(monkeypatch, "pkg.train")
    assert script_command(["/x/pkg/train.py", "-v"]) == [sys.executable, "-m", "pkg.train", "-v"]


def test_script_command_refuses_python_dash_c(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_main(monkeypatch, None)
    with pytest.raises(MisconfigurationException, match="ddp_spawn"):
        script_command(["-c"])


# --- children -----------------------------------------------------------------------------------------
def test_child_environment_is_read_back_as_the_childs_rank() -> None:
    env = launcher_environment(3, env={"MASTER_PORT": "2345"})
    assert (env.global_rank, env.world_size, env.main_address, env.main_port) == (0, 3, "127.0.0.1", 2345)
    # Node 1 of a two-node run: global ranks 2 and 3.
    two_nodes = launcher_environment(2, 2, env={"NODE_RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "2345"})
    child_vars = ScriptLauncher(two_nodes, 2, env={"PATH": "/bin"}).child_env(1)
    assert child_vars["PATH"] == "/bin"
    assert child_vars[LAUNCHED_BY_VAR] == str(os.getpid())
    child = detect_environment(child_vars)
    assert child is not None
    assert (child.global_rank, child.local_rank, child.node_rank) == (3, 1, 1)
    assert (child.world_size, child.num_nodes, child.source) == (4, 2, "launcher")
    assert (child.main_address, child.main_port) == ("h0", 2345)


def test_launcher_must_run_in_local_rank_zero() -> None:
    env = launcher_environment(2, env={}, port=1234)
    with pytest.raises(MisconfigurationException, match="num_processes=3"):
        ScriptLauncher(env, 3)


@pytest.mark.timeout(30)
def test_watcher_notices_a_dead_child_and_stops_its_siblings() -> None:
    failures: list[ChildExit] = []
    code = (
        "import os, sys, time; r = int(os.environ['LOCAL_RANK']); time.sleep(60) if r == 2 else sys.exit(5)"
    )
    launcher = _launcher(3, code, on_failure=failures.append)
    launcher.launch()
    with pytest.raises(RuntimeError, match="once"):
        launcher.launch()
    deadline = time.monotonic() + 10
    while not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failures and failures[0].returncode == 5 and failures[0].local_rank == 1
    assert "rank 1 (local rank 1" in failures[0].describe()
    assert all(proc.poll() is not None for proc in launcher.children)  # the sleeping sibling was stopped
    with pytest.raises(ChildProcessFailed, match="exited with code 5"):
        launcher.check()
    with pytest.raises(ChildProcessFailed):
        launcher.join(timeout=5)


@pytest.mark.timeout(30)
def test_join_waits_for_children_that_succeed() -> None:
    launcher = _launcher(3, "import sys; sys.exit(0)")
    launcher.launch()
    launcher.join(timeout=10)
    assert [proc.returncode for proc in launcher.children] == [0, 0]
    assert launcher.failure is None


@pytest.mark.timeout(30)
def test_join_kills_children_that_do_not_exit() -> None:
    launcher = _launcher(2, "import time; time.sleep(60)")
    launcher.launch()
    with pytest.raises(TimeoutError, match=r"did not exit within 0\.3s"):
        launcher.join(timeout=0.3)
    # Killed by a signal, not exited at the end of its sleep: join did not wait for it.
    assert len(launcher.children) == 1
    assert launcher.children[0].poll() in (-signal.SIGTERM, -signal.SIGKILL)


@pytest.mark.timeout(30)
def test_context_manager_kills_children_and_names_the_dead_one_when_rank_zero_fails() -> None:
    launcher = _launcher(2, _EXIT_BY_RANK)
    with pytest.raises(OSError, match="collective failed") as info, launcher:
        raise OSError("collective failed")
    assert any("exited with code 3" in note for note in getattr(info.value, "__notes__", []))


# --- ddp (re-running a script) ------------------------------------------------------------------------
_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from datetime import timedelta
    import torch
    from stepstone.strategies import (
        ScriptLauncher, barrier, destroy_process_group, detect_environment, init_process_group,
        launcher_environment, reduce,
    )

    def main():
        out, mode = sys.argv[1], sys.argv[2]
        env = detect_environment()
        if env is None:
            env = launcher_environment(2)
            with ScriptLauncher(env, 2):
                run(env, out, mode)
        else:
            run(env, out, mode)

    def run(env, out, mode):
        init_process_group(env, "gloo", timedelta(seconds=300))
        try:
            if mode == "die" and env.global_rank == 1:
                os._exit(3)
            try:
                total = reduce(torch.tensor([env.global_rank + 1.0]), "sum").item()
            except Exception as exc:
                with open(os.path.join(out, f"error{env.global_rank}.txt"), "w") as f:
                    f.write(str(exc))
                raise
            spec = __spec__.name if __spec__ else None
            record = {"env": env.__dict__, "total": total, "argv": sys.argv[1:], "spec": spec}
            with open(os.path.join(out, f"rank{env.global_rank}.json"), "w") as f:
                json.dump(record, f)
            barrier("end")
        finally:
            destroy_process_group()

    if __name__ == "__main__":
        main()
    """
)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_NTASKS")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.timeout(90)
def test_ddp_reruns_a_dash_m_module_on_two_ranks(tmp_path: Path) -> None:
    import json

    package = tmp_path / "ddppkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(_SCRIPT)
    result = _run(["-m", "ddppkg.train", str(tmp_path), "ok"], tmp_path)
    assert result.returncode == 0, result.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["total"] for r in ranks] == [3.0, 3.0]
    assert [r["env"]["global_rank"] for r in ranks] == [0, 1]
    assert [r["env"]["source"] for r in ranks] == ["launcher", "launcher"]
    assert ranks[0]["env"]["main_port"] == ranks[1]["env"]["main_port"]
    assert [r["spec"] for r in ranks] == ["ddppkg.train", "ddppkg.train"]  # the child ran `-m ddppkg.train`
    assert ranks[1]["argv"] == [str(tmp_path), "ok"]


@pytest.mark.timeout(90)
def test_ddp_script_whose_child_dies_fails_rank_zero_quickly(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    # The process group timeout is longer than _run's 60 s limit: rank 0 failed without waiting for it.
    result = _run([str(script), str(tmp_path), "die"], tmp_path)
    assert result.returncode != 0
    message = (tmp_path / "error0.txt").read_text()
    assert "reduce(sum) failed on rank 0 of 2" in message
    assert "rank 1 (local rank 1" in result.stderr and "exited with code 3" in result.stderr
    assert not (tmp_path / "rank0.json").exists()


# --- ddp_spawn ----------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_ddp_spawn_returns_rank_zero_result_with_the_rank_variables_set() -> None:
    result = ddp_spawn(dist_workers.report_environment, 2, (2_000_000,), main_port=find_free_port())
    env = result["env"]
    assert (env.global_rank, env.local_rank, env.world_size, env.source) == (0, 0, 2, "launcher")
    assert result["vars"]["RANK"] == "0" and result["vars"]["WORLD_SIZE"] == "2"
    assert result["payload"].shape == (2_000_000,)  # 8 MB through the pipe: read while waiting, no deadlock
    assert float(result["payload"][-1]) == 1_999_999.0


@pytest.mark.timeout(60)
def test_ddp_spawn_reraises_a_ranks_exception_with_its_traceback() -> None:
    with pytest.raises(KeyError, match="no such key on rank 1") as info:
        ddp_spawn(dist_workers.fail_on_rank_one, 2, ("raise",))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "spawned rank 1" in notes and "_nested_failure" in notes
    assert isinstance(info.value.__cause__, ProcessRaisedException)


@pytest.mark.timeout(60)
def test_ddp_spawn_reports_a_rank_that_died_without_an_exception() -> None:
    with pytest.raises(SpawnedRankFailed, match="died without reporting"):
        ddp_spawn(dist_workers.fail_on_rank_one, 2, ("exit",))


def test_ddp_spawn_rejects_a_bad_process_count() -> None:
    with pytest.raises(MisconfigurationException, match="nprocs=0"):
        ddp_spawn(dist_workers.fail_on_rank_one, 0)


@pytest.mark.timeout(60)
def test_children_die_with_a_killed_launching_process(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys, time
        from stepstone.strategies import ScriptLauncher, launcher_environment
        launcher = ScriptLauncher(launcher_environment(3, env={}), 3, command=[sys.executable, "-c", "import time; time.sleep(60)"])
        launcher.launch()
        print(" ".join(str(p.pid) for p in launcher.children), flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.kill()  # SIGKILL: no Python cleanup runs in the launching process
        parent.wait()
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and _not_zombie(pid)]
            time.sleep(0.05)
        assert not alive, f"children {alive} outlived the launching process"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        for pid in pids:  # when the test fails, do not leave the sleepers behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False
