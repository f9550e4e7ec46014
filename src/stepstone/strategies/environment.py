"""Where this process sits in a multi-process run: ranks, world size and the main node's address.

The values come from whoever started the processes. Detection precedence (first match wins):

1. **torchrun / the stepstone launcher**: ``RANK`` is set. ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
   are then required; ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and ``GROUP_RANK`` (or ``NODE_RANK``) are read when
   set. Children started by :class:`~stepstone.strategies.launcher.ScriptLauncher` carry
   ``STEPSTONE_LAUNCHED_BY`` as well and are reported with ``source="launcher"``.
2. **SLURM**: ``SLURM_NTASKS`` and ``SLURM_PROCID`` are set and the job is not an interactive shell
   (``SLURM_JOB_NAME`` of ``bash``/``interactive``, as in Lightning: ``python train.py`` typed inside ``salloc``
   is launched by the trainer instead). The main address is ``MASTER_ADDR`` or the first host of
   ``SLURM_JOB_NODELIST``; the port ``MASTER_PORT`` or one derived from ``SLURM_JOB_ID`` (Lightning's rule),
   so that every task agrees without talking.
3. **Nothing**: a single process, or the original process of a run the trainer launches itself
   (:func:`launcher_environment`).

torchrun wins over SLURM because ``srun torchrun ...`` sets both, and torchrun's values are the per-process
ones. Every inconsistency raises :class:`MisconfigurationException` naming the variable, its value and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from stepstone.errors import MisconfigurationException

__all__ = [
    "LAUNCHED_BY_VAR",
    "ClusterEnvironment",
    "check_matches",
    "detect_environment",
    "first_slurm_host",
    "launcher_environment",
    "single_process",
]

LAUNCHED_BY_VAR = "STEPSTONE_LAUNCHED_BY"
_INTERACTIVE_SLURM_JOBS = ("bash", "interactive")
_LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class ClusterEnvironment:
    """The place of this process in the run (all ranks count from 0).

    Attributes:
        global_rank: rank among all processes.
        local_rank: rank among the processes of this node (selects the GPU).
        node_rank: rank of this node.
        world_size: number of processes in the run.
        num_nodes: number of nodes.
        main_address: host of global rank 0 (where the rendezvous store listens).
        main_port: port of the rendezvous store.
        source: who started the processes: ``"torchrun"``, ``"slurm"``, ``"launcher"`` or ``"single"``.
    """

    global_rank: int
    local_rank: int
    node_rank: int
    world_size: int
    num_nodes: int
    main_address: str
    main_port: int
    source: str = "single"

    def __post_init__(self) -> None:
        _check_below("global_rank", self.global_rank, "world_size", self.world_size)
        _check_below("node_rank", self.node_rank, "num_nodes", self.num_nodes)
        if self.local_rank < 0:
            raise MisconfigurationException(f"local_rank={self.local_rank} is invalid; it must be >= 0.")
        if not 0 < self.main_port < 65536:
            raise MisconfigurationException(
                f"main_port={self.main_port} is invalid; pass a TCP port in 1..65535 (MASTER_PORT)."
            )

    @property
    def is_distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_global_zero(self) -> bool:
        """Whether this is global rank 0 (the process that writes checkpoints and logs)."""
        return self.global_rank == 0

    @property
    def init_method(self) -> str:
        """The ``tcp://host:port`` rendezvous URL of ``torch.distributed.init_process_group``."""
        host = f"[{self.main_address}]" if ":" in self.main_address else self.main_address
        return f"tcp://{host}:{self.main_port}"


def _check_below(name: str, value: int, limit_name: str, limit: int) -> None:
    if limit < 1:
        raise MisconfigurationException(f"{limit_name}={limit} is invalid; it must be >= 1.")
    if not 0 <= value < limit:
        raise MisconfigurationException(
            f"{name}={value} is invalid with {limit_name}={limit}: it must be in 0..{limit - 1}. Check the "
            "variables the launcher set (RANK/WORLD_SIZE, SLURM_PROCID/SLURM_NTASKS, GROUP_RANK/NODE_RANK)."
        )


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise MisconfigurationException(
                f"The environment variable {name} is not set, but the launcher's other variables are; set {name} "
                "(torchrun and srun set it for you)."
            )
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise MisconfigurationException(
            f"The environment variable {name}={raw!r} is not an integer; fix or unset it."
        ) from None


def _check_env_below(name: str, value: int, limit_name: str, limit: int) -> None:
    if not 0 <= value < limit:
        raise MisconfigurationException(
            f"{name}={value} is inconsistent with {limit_name}={limit}: it must be in 0..{limit - 1}. Fix the "
            f"environment variables (did a wrapper script overwrite {name}?)."
        )


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list, without ``scontrol``.

    Args:
        nodelist: e.g. ``"node[01-03],gpu7"`` (-> ``"node01"``), ``"a[1,4-5]-ib"`` (-> ``"a1-ib"``), ``"host"``.

    Returns:
        The first host name.

    Raises:
        MisconfigurationException: the list is empty or its brackets do not balance.
    """
    # The first top-level item: plain characters and whole bracket groups, up to a comma or the end.
    match = re.match(r"([^,\[\]]*(?:\[[^\[\]]*\][^,\[\]]*)*)(?:,|$)", nodelist.strip())
    if match is None or not match.group(1):
        raise MisconfigurationException(
            f"SLURM_JOB_NODELIST={nodelist!r} cannot be parsed (expected e.g. 'node[01-03],gpu7'); set "
            "MASTER_ADDR to the first node's host name instead."
        )

    # Each bracket holds comma-separated entries, each a number or a range: the first host takes the first.
    def first_entry(group: re.Match[str]) -> str:
        return group.group(1).split(",")[0].split("-")[0].strip()

    host = re.sub(r"\[([^\]]*)\]", first_entry, match.group(1)).strip()
    if not host:
        raise MisconfigurationException(
            f"SLURM_JOB_NODELIST={nodelist!r} cannot be parsed (its first host is empty); set MASTER_ADDR."
        )
    return host


def _from_torchrun(env: Mapping[str, str]) -> ClusterEnvironment:
    world_size = _int(env, "WORLD_SIZE")
    if world_size < 1:
        raise MisconfigurationException(f"WORLD_SIZE={world_size} is invalid; it must be >= 1.")
    rank = _int(env, "RANK")
    _check_env_below("RANK", rank, "WORLD_SIZE", world_size)
    local_world_size = _int(env, "LOCAL_WORLD_SIZE", world_size)
    if local_world_size < 1 or world_size % local_world_size:
        raise MisconfigurationException(
            f"LOCAL_WORLD_SIZE={local_world_size} does not divide WORLD_SIZE={world_size}; every node must run "
            "the same number of processes (torchrun --nproc-per-node)."
        )
    local_rank = _int(env, "LOCAL_RANK", rank % local_world_size)
    _check_env_below("LOCAL_RANK", local_rank, "LOCAL_WORLD_SIZE", local_world_size)
    num_nodes = world_size // local_world_size
    node_rank = _int(env, "GROUP_RANK", _int(env, "NODE_RANK", rank // local_world_size))
    _check_env_below("GROUP_RANK", node_rank, "the number of nodes (WORLD_SIZE/LOCAL_WORLD_SIZE)", num_nodes)
    address = env.get("MASTER_ADDR", "").strip()
    if not address:
        raise MisconfigurationException(
            f"RANK={rank} is set but MASTER_ADDR is not; set MASTER_ADDR to the host of rank 0 (torchrun does)."
        )
    return ClusterEnvironment(
        global_rank=rank,
        local_rank=local_rank,
        node_rank=node_rank,
        world_size=world_size,
        num_nodes=num_nodes,
        main_address=address,
        main_port=_int(env, "MASTER_PORT"),
        source="launcher" if env.get(LAUNCHED_BY_VAR) else "torchrun",
    )


def _slurm_port(env: Mapping[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return _int(env, "MASTER_PORT")
    job_id = env.get("SLURM_JOB_ID", "").strip()
    digits = re.sub(r"\D", "", job_id)
    if not digits:
        raise MisconfigurationException(
            f"SLURM_JOB_ID={job_id!r} gives no port to agree on; set MASTER_PORT (e.g. export MASTER_PORT=29500)."
        )
    # Lightning's rule: every task derives the same port from the job id, different jobs rarely collide.
    return 15000 + int(digits[-4:])


def _from_slurm(env: Mapping[str, str]) -> ClusterEnvironment:
    world_size = _int(env, "SLURM_NTASKS")
    rank = _int(env, "SLURM_PROCID")
    _check_env_below("SLURM_PROCID", rank, "SLURM_NTASKS", world_size)
    num_nodes = _int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES", 1))
    node_rank = _int(env, "SLURM_NODEID", 0)
    _check_env_below("SLURM_NODEID", node_rank, "SLURM_JOB_NUM_NODES", num_nodes)
    address = env.get("MASTER_ADDR", "").strip()
    if not address:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise MisconfigurationException(
                "SLURM_PROCID is set but neither MASTER_ADDR nor SLURM_JOB_NODELIST is; set MASTER_ADDR to the "
                "host of the first node."
            )
        address = first_slurm_host(nodelist)
    return ClusterEnvironment(
        global_rank=rank,
        local_rank=_int(env, "SLURM_LOCALID", 0),
        node_rank=node_rank,
        world_size=world_size,
        num_nodes=num_nodes,
        main_address=address,
        main_port=_slurm_port(env),
        source="slurm",
    )


def detect_environment(env: Mapping[str, str] | None = None) -> ClusterEnvironment | None:
    """Read the environment a launcher set (precedence in the module docstring).

    Args:
        env: the variables to read (default ``os.environ``).

    Returns:
        The environment, or None when no launcher started this process.

    Raises:
        MisconfigurationException: a variable is missing, not an integer, or inconsistent (e.g. RANK >= WORLD_SIZE).
    """
    env = os.environ if env is None else env
    if env.get("RANK", "").strip():
        return _from_torchrun(env)
    slurm = "SLURM_NTASKS" in env and "SLURM_PROCID" in env
    if slurm and env.get("SLURM_JOB_NAME", "") not in _INTERACTIVE_SLURM_JOBS:
        return _from_slurm(env)
    return None


def single_process() -> ClusterEnvironment:
    """The environment of a run on one process (every collective is a no-op)."""
    return ClusterEnvironment(0, 0, 0, 1, 1, _LOCALHOST, 1, "single")


def launcher_environment(
    num_processes: int, num_nodes: int = 1, env: Mapping[str, str] | None = None, port: int | None = None
) -> ClusterEnvironment:
    """The environment of the original process (local rank 0) of a run the trainer launches itself.

    Args:
        num_processes: processes per node (``Trainer(devices=N)``).
        num_nodes: nodes (``Trainer(num_nodes=...)``); each node runs the script with its ``NODE_RANK``.
        env: variables to read (``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); default ``os.environ``.
        port: the port to use when ``MASTER_PORT`` is unset (single node only; default: a free port).

    Returns:
        The environment of local rank 0 of this node.

    Raises:
        MisconfigurationException: invalid counts, or several nodes without MASTER_ADDR/MASTER_PORT.
    """
    env = os.environ if env is None else env
    if num_processes < 1 or num_nodes < 1:
        raise MisconfigurationException(
            f"devices={num_processes}, num_nodes={num_nodes} is invalid; both must be >= 1."
        )
    if num_nodes > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise MisconfigurationException(
            f"num_nodes={num_nodes} needs MASTER_ADDR and MASTER_PORT (the host and a free port of node 0) and "
            "NODE_RANK on every node; or start the nodes with torchrun or srun."
        )
    node_rank = _int(env, "NODE_RANK", 0)
    _check_env_below("NODE_RANK", node_rank, "num_nodes", num_nodes)
    if env.get("MASTER_PORT"):
        main_port = _int(env, "MASTER_PORT")
    else:
        from stepstone.strategies.launcher import find_free_port

        main_port = port if port is not None else find_free_port()
    return ClusterEnvironment(
        global_rank=node_rank * num_processes,
        local_rank=0,
        node_rank=node_rank,
        world_size=num_processes * num_nodes,
        num_nodes=num_nodes,
        main_address=env.get("MASTER_ADDR", "").strip() or _LOCALHOST,
        main_port=main_port,
        source="single" if num_processes * num_nodes == 1 else "launcher",
    )


def check_matches(environment: ClusterEnvironment, devices: int, num_nodes: int) -> None:
    """Check that the processes a launcher started match ``Trainer(devices=..., num_nodes=...)``.

    Args:
        environment: the detected environment.
        devices: processes per node the Trainer was asked for.
        num_nodes: nodes the Trainer was asked for.

    Raises:
        MisconfigurationException: the counts differ (naming both, and how to fix the launch command).
    """
    expected = devices * num_nodes
    if environment.world_size != expected or environment.num_nodes != num_nodes:
        raise MisconfigurationException(
            f"Trainer(devices={devices}, num_nodes={num_nodes}) expects {expected} processes on {num_nodes} "
            f"node(s), but {environment.source} started world_size={environment.world_size} on "
            f"{environment.num_nodes} node(s). Make them agree (e.g. torchrun --nproc-per-node={devices} "
            f"--nnodes={num_nodes}, or srun --ntasks-per-node={devices})."
        )
