"""Reading ranks from torchrun, SLURM and the launcher; every inconsistency named."""

from __future__ import annotations

import pytest

from stepstone.errors import MisconfigurationException
from stepstone.strategies import (
    ClusterEnvironment,
    check_matches,
    detect_environment,
    launcher_environment,
    single_process,
)
from stepstone.strategies.environment import LAUNCHED_BY_VAR, first_slurm_host

_TORCHRUN = {
    "RANK": "5",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "node01",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "abc",
}
_SLURM = {
    "SLURM_NTASKS": "6",
    "SLURM_PROCID": "4",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "2",
    "SLURM_JOB_NUM_NODES": "3",
    "SLURM_JOB_NODELIST": "node[01-03],gpu7",
    "SLURM_JOB_ID": "1234567",
    "SLURM_JOB_NAME": "train",
}


def test_nothing_set_means_no_launcher() -> None:
    assert detect_environment({}) is None
    single = single_process()
    assert (single.world_size, single.is_distributed, single.is_global_zero) == (1, False, True)


def test_torchrun_multi_node() -> None:
    env = detect_environment(_TORCHRUN)
    assert env == ClusterEnvironment(5, 1, 1, 8, 2, "node01", 29500, "torchrun")
    assert env.is_distributed and not env.is_global_zero
    assert env.init_method == "tcp://node01:29500"


def test_torchrun_single_node_defaults() -> None:
    env = detect_environment({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"})
    assert env is not None
    assert (env.local_rank, env.node_rank, env.num_nodes) == (1, 0, 1)


def test_ipv6_main_address_is_bracketed() -> None:
    env = detect_environment({**_TORCHRUN, "MASTER_ADDR": "fe80::1"})
    assert env is not None and env.init_method == "tcp://[fe80::1]:29500"


def test_launcher_children_are_told_apart_from_torchrun() -> None:
    env = detect_environment({**_TORCHRUN, LAUNCHED_BY_VAR: "42"})
    assert env is not None and env.source == "launcher"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RANK": "8"}, "RANK=8 is inconsistent with WORLD_SIZE=8"),
        ({"RANK": "-1"}, "RANK=-1 is inconsistent"),
        ({"RANK": "two"}, "RANK='two' is not an integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 is invalid"),
        ({"LOCAL_RANK": "4"}, "LOCAL_RANK=4 is inconsistent with LOCAL_WORLD_SIZE=4"),
        ({"LOCAL_WORLD_SIZE": "3"}, "LOCAL_WORLD_SIZE=3 does not divide WORLD_SIZE=8"),
        ({"GROUP_RANK": "2"}, "GROUP_RANK=2 is inconsistent"),
        ({"MASTER_ADDR": ""}, "MASTER_ADDR is not"),
        ({"MASTER_PORT": "70000"}, "main_port=70000"),
    ],
)
def test_inconsistent_torchrun_variables_are_named(change: dict[str, str], message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):
        detect_environment({**_TORCHRUN, **change})


def test_missing_world_size_is_named() -> None:
    env = dict(_TORCHRUN)
    del env["WORLD_SIZE"]
    with pytest.raises(MisconfigurationException, match="WORLD_SIZE is not set"):
        detect_environment(env)


def test_slurm_batch_job() -> None:
    env = detect_environment(_SLURM)
    assert env == ClusterEnvironment(4, 1, 2, 6, 3, "node01", 15000 + 4567, "slurm")


def test_slurm_master_variables_win() -> None:
    env = detect_environment({**_SLURM, "MASTER_ADDR": "head", "MASTER_PORT": "1234"})
    assert env is not None and (env.main_address, env.main_port) == ("head", 1234)


def test_interactive_slurm_shell_is_left_to_the_launcher() -> None:
    assert detect_environment({**_SLURM, "SLURM_JOB_NAME": "bash"}) is None
    assert detect_environment({**_SLURM, "SLURM_JOB_NAME": "interactive"}) is None


def test_torchrun_wins_over_slurm() -> None:
    env = detect_environment({**_SLURM, **_TORCHRUN})
    assert env is not None and env.source == "torchrun" and env.global_rank == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SLURM_PROCID": "6"}, "SLURM_PROCID=6 is inconsistent with SLURM_NTASKS=6"),
        ({"SLURM_NODEID": "3"}, "SLURM_NODEID=3 is inconsistent with SLURM_JOB_NUM_NODES=3"),
        ({"SLURM_JOB_NODELIST": "node[01-03"}, "SLURM_JOB_NODELIST='node\\[01-03' cannot be parsed"),
        ({"SLURM_JOB_ID": ""}, "set MASTER_PORT"),
        ({"SLURM_NTASKS": "x"}, "SLURM_NTASKS='x' is not an integer"),
    ],
)
def test_inconsistent_slurm_variables_are_named(change: dict[str, str], message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):
        detect_environment({**_SLURM, **change})


def test_slurm_without_any_address_is_named() -> None:
    env = {k: v for k, v in _SLURM.items() if k != "SLURM_JOB_NODELIST"}
    with pytest.raises(MisconfigurationException, match="MASTER_ADDR"):
        detect_environment(env)


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node[01-03],gpu7", "node01"),
        ("gpu7,node[01-03]", "gpu7"),
        ("node[07,09-12]", "node07"),
        ("rack[2-3]-node[10-11]", "rack2-node10"),
        ("a[1,4-5]-ib", "a1-ib"),
        ("single", "single"),
        ("  host-1 ", "host-1"),
    ],
)
def test_first_slurm_host(nodelist: str, host: str) -> None:
    assert first_slurm_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["", "node]", "node[01", ",node1", "[]"])
def test_unparsable_nodelists_are_refused(nodelist: str) -> None:
    with pytest.raises(MisconfigurationException, match="cannot be parsed"):
        first_slurm_host(nodelist)


def test_launcher_environment_of_rank_zero() -> None:
    env = launcher_environment(4, env={}, port=2222)
    assert env == ClusterEnvironment(0, 0, 0, 4, 1, "127.0.0.1", 2222, "launcher")
    assert launcher_environment(1, env={}, port=2222).source == "single"
    picked = launcher_environment(2, env={})
    assert 0 < picked.main_port < 65536


def test_launcher_environment_multi_node_needs_the_main_address() -> None:
    with pytest.raises(MisconfigurationException, match="MASTER_ADDR and MASTER_PORT"):
        launcher_environment(2, 2, env={"NODE_RANK": "1"})
    with pytest.raises(MisconfigurationException, match="NODE_RANK=2 is inconsistent with num_nodes=2"):
        launcher_environment(2, 2, env={"NODE_RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(MisconfigurationException, match="devices=0"):
        launcher_environment(0, env={})


def test_dataclass_checks_its_own_values() -> None:
    with pytest.raises(MisconfigurationException, match="global_rank=2 is invalid with world_size=2"):
        ClusterEnvironment(2, 0, 0, 2, 1, "h", 1)
    with pytest.raises(MisconfigurationException, match="local_rank=-1"):
        ClusterEnvironment(0, -1, 0, 2, 1, "h", 1)
    with pytest.raises(MisconfigurationException, match="num_nodes=0"):
        ClusterEnvironment(0, 0, 0, 2, 0, "h", 1)
    with pytest.raises(AttributeError):
        single_process().global_rank = 3  # type: ignore[misc]


def test_check_matches_names_both_counts() -> None:
    env = detect_environment(_TORCHRUN)
    assert env is not None
    check_matches(env, devices=4, num_nodes=2)
    with pytest.raises(MisconfigurationException, match=r"devices=2, num_nodes=2.*world_size=8"):
        check_matches(env, devices=2, num_nodes=2)
    with pytest.raises(MisconfigurationException, match="nproc-per-node=8"):
        check_matches(env, devices=8, num_nodes=1)
