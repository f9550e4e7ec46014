"""``DDPStrategy``: one model replica per process, gradients averaged by DistributedDataParallel.

The strategy owns the process group (created in :meth:`DDPStrategy.setup_environment`, destroyed in
:meth:`DDPStrategy.teardown`), wraps the module, shards the dataloaders and offers the collectives the trainer
and callbacks use. Its collectives are the functions of :mod:`stepstone.strategies.collectives`, so they are
no-ops when the world has one process.

DDP synchronises gradients only for computations that ran through the wrapper's ``forward``; a
LightningModule's ``training_step`` is not its ``forward``, so :meth:`DDPStrategy.call` routes any method of the
module through the wrapper (as Lightning's module wrapper does).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from stepstone.errors import MisconfigurationException
from stepstone.strategies import collectives
from stepstone.strategies.environment import ClusterEnvironment, single_process
from stepstone.strategies.sampler import distributed_loader, set_loader_epoch

__all__ = ["DDPStrategy"]

T = TypeVar("T")


class _MethodRouter(nn.Module):
    """Makes ``forward(name, *args)`` call ``module.name(*args)``, so that DDP sees every step as a forward."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    @override
    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, method)(*args, **kwargs)


class DDPStrategy:
    """Data-parallel training on torch.distributed (gloo on CPU, nccl on CUDA).

    Args:
        environment: where this process sits (ranks, world size, main address); default a single process.
            The Trainer fills it in from torchrun/SLURM, so ``Trainer(strategy=DDPStrategy(timeout=...))`` needs
            none.
        accelerator: ``"cpu"`` or ``"cuda"`` (each rank then uses GPU ``local_rank``).
        timeout: how long a collective waits for the other ranks before failing.
        **ddp_kwargs: passed to ``DistributedDataParallel`` (e.g. ``find_unused_parameters=True``).

    Raises:
        MisconfigurationException: an unknown accelerator, or CUDA requested without enough GPUs.
    """

    def __init__(
        self,
        environment: ClusterEnvironment | None = None,
        accelerator: str = "cpu",
        timeout: timedelta = collectives.DEFAULT_TIMEOUT,
        **ddp_kwargs: Any,
    ) -> None:
        if accelerator not in ("cpu", "cuda"):
            raise MisconfigurationException(
                f"DDPStrategy(accelerator={accelerator!r}) is invalid; use 'cpu' (gloo) or 'cuda' (nccl)."
            )
        environment = environment if environment is not None else single_process()
        if accelerator == "cuda" and environment.local_rank >= torch.cuda.device_count():
            raise MisconfigurationException(
                f"Local rank {environment.local_rank} needs GPU {environment.local_rank}, but "
                f"{torch.cuda.device_count()} GPU(s) are visible; start at most that many processes per node."
            )
        self.environment = environment
        self.accelerator = accelerator
        self.timeout = timeout
        self._ddp_kwargs = ddp_kwargs
        self._owns_group = False
        self.model: nn.Module | None = None

    # --- where this process is ----------------------------------------------------------------------
    @property
    def global_rank(self) -> int:
        """This process's rank among all processes."""
        return self.environment.global_rank

    @property
    def local_rank(self) -> int:
        """This process's rank on its node."""
        return self.environment.local_rank

    @property
    def node_rank(self) -> int:
        """This node's rank."""
        return self.environment.node_rank

    @property
    def world_size(self) -> int:
        """Number of processes."""
        return self.environment.world_size

    @property
    def is_global_zero(self) -> bool:
        """Whether this is global rank 0 (the rank that writes checkpoints and logs)."""
        return self.environment.global_rank == 0

    @property
    def root_device(self) -> torch.device:
        """The device of this rank: ``cuda:<local_rank>`` or ``cpu``."""
        if self.accelerator == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @property
    def backend(self) -> str:
        """``"nccl"`` on CUDA, ``"gloo"`` on CPU."""
        return collectives.backend_for(self.accelerator)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        """The DistributedSampler arguments of this rank: ``num_replicas`` and ``rank``."""
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # --- lifecycle ----------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        """Select this rank's GPU and join the process group (all ranks must call it).

        Raises:
            CollectiveError: the other ranks did not join within the timeout.
        """
        if self.accelerator == "cuda":
            torch.cuda.set_device(self.root_device)
        self._owns_group = collectives.init_process_group(self.environment, self.backend, self.timeout) or (
            self._owns_group
        )

    def setup(self, module: nn.Module, device: torch.device | None = None) -> nn.Module:
        """Move ``module`` to ``device`` and wrap it; rank 0's parameters and buffers are copied to every rank.

        Args:
            module: the model (a LightningModule or any ``nn.Module``); it stays usable unwrapped (its
                state_dict keys do not change).
            device: where to put it (default :attr:`root_device`).

        Returns:
            The ``DistributedDataParallel`` wrapper (also kept as :attr:`model`); with one rank, a plain router
            with the same ``forward(method, *args)`` interface.

        Raises:
            MisconfigurationException: no process group (call :meth:`setup_environment` first).
        """
        if self.world_size > 1 and not collectives.is_distributed():
            raise MisconfigurationException(
                "DDPStrategy.setup(module) needs the process group; call setup_environment() on every rank first."
            )
        device = device if device is not None else self.root_device
        module.to(device)
        device_ids = [device.index] if device.type == "cuda" else None
        router = _MethodRouter(module)
        # One rank has nothing to synchronise: no wrapper, no process group (the code path stays the same).
        self.model = (
            router
            if self.world_size == 1
            else DistributedDataParallel(router, device_ids=device_ids, **self._ddp_kwargs)
        )
        return self.model

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``module.<method>(*args, **kwargs)`` through DDP, so its backward averages gradients.

        Args:
            method: e.g. ``"training_step"`` or ``"forward"``.
            *args: the method's positional arguments.
            **kwargs: the method's keyword arguments.

        Returns:
            What the method returned.

        Raises:
            MisconfigurationException: :meth:`setup` was not called.
        """
        if self.model is None:
            raise MisconfigurationException("DDPStrategy.call() needs a model: call setup(module) first.")
        return self.model(method, *args, **kwargs)

    def unwrap(self) -> nn.Module:
        """The module given to :meth:`setup` (checkpoints are taken from it, not from the wrapper).

        Raises:
            MisconfigurationException: :meth:`setup` was not called.
        """
        if self.model is None:
            raise MisconfigurationException("DDPStrategy.unwrap() needs a model: call setup(module) first.")
        router = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        assert isinstance(router, _MethodRouter)
        return router.module

    def teardown(self) -> None:
        """Drop the wrapper and leave the process group this strategy created (safe to call twice)."""
        self.model = None
        if self._owns_group:
            self._owns_group = False
            collectives.destroy_process_group()

    # --- data ---------------------------------------------------------------------------------------
    def replace_sampler(self, dataloader: Any, shuffle: bool | None = None, seed: int | None = None) -> Any:
        """``dataloader`` rebuilt with a DistributedSampler for this rank (see :func:`distributed_loader`).

        Args:
            dataloader: the user's loader (other settings are kept).
            shuffle: shuffle each epoch (default: as the loader did).
            seed: shuffling seed shared by all ranks (default: the seed_everything seed, else 0).

        Returns:
            The sharded loader, or ``dataloader`` itself when it needs no sharding.
        """
        return distributed_loader(dataloader, self.world_size, self.global_rank, shuffle, seed)

    @staticmethod
    def set_epoch(dataloader: Any, epoch: int) -> None:
        """Set the epoch of the loader's DistributedSampler (call before each epoch, on every rank).

        Args:
            dataloader: the loader.
            epoch: the epoch about to start.
        """
        set_loader_epoch(dataloader, epoch)

    # --- collectives --------------------------------------------------------------------------------
    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Reduce across ranks (MetricsHub's ``sync``); see :func:`~stepstone.strategies.collectives.reduce`."""
        return collectives.reduce(tensor, reduction)

    def barrier(self, name: str = "barrier") -> None:
        """Wait for every rank; see :func:`~stepstone.strategies.collectives.barrier`."""
        collectives.barrier(name)

    def broadcast(self, obj: T, src: int = 0) -> T:
        """``src``'s object on every rank; see :func:`~stepstone.strategies.collectives.broadcast_object`."""
        return collectives.broadcast_object(obj, src)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """One decision for all ranks (Lightning's name): ``all=True`` needs every rank, False any rank."""
        return collectives.agree(decision, "all" if all else "any")

    def agree(self, flag: bool, require: str = "all") -> bool:
        """A decision shared by all ranks; see :func:`~stepstone.strategies.collectives.agree`."""
        return collectives.agree(flag, require)
