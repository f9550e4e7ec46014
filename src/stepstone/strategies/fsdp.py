"""``FSDPStrategy``: fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``).

Each parameter becomes a DTensor sharded over a 1-D device mesh of the default process group; the strategy
keeps DDPStrategy's interface (process group, samplers, collectives) and adds what checkpoints need:

- ``state_dict_type="full"``: :meth:`FSDPStrategy.model_state_dict` / :meth:`~FSDPStrategy.optimizer_state_dict`
  gather an ordinary state dict on rank 0 only (CPU, one full copy), the other ranks get ``{}``; rank 0 then
  writes one ordinary file.
- ``state_dict_type="sharded"``: they return each rank's shards (DTensors), for
  :func:`stepstone.checkpoint.sharded.save_sharded` on every rank.

The load methods accept either form. FSDP hooks only ``forward``; a LightningModule's ``training_step`` is
registered as a forward method on first :meth:`~FSDPStrategy.call`, so its parameters are gathered before it
runs and its gradients reduce-scattered afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from typing_extensions import override

from stepstone.errors import MisconfigurationException
from stepstone.strategies import collectives
from stepstone.strategies.ddp import DDPStrategy
from stepstone.strategies.environment import ClusterEnvironment

__all__ = ["FSDPStrategy"]

_STATE_DICT_TYPES = ("full", "sharded")


def _check_wrap_policy(auto_wrap_policy: object) -> frozenset[type[nn.Module]]:
    if auto_wrap_policy is None:
        return frozenset()
    classes = set(auto_wrap_policy) if isinstance(auto_wrap_policy, Iterable) else None
    if classes is None or not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
        raise MisconfigurationException(
            f"FSDPStrategy(auto_wrap_policy={auto_wrap_policy!r}) is invalid; pass a set of nn.Module classes "
            "to shard individually, e.g. {nn.TransformerEncoderLayer}, or None."
        )
    return frozenset(classes)


def _has_dtensor(state: Any) -> bool:
    if isinstance(state, DTensor):
        return True
    if isinstance(state, dict):
        return any(_has_dtensor(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return any(_has_dtensor(value) for value in state)
    return False


class FSDPStrategy(DDPStrategy):
    """Fully sharded data parallel training (FSDP2) on torch.distributed (gloo on CPU, nccl on CUDA).

    Args:
        environment: where this process sits (default: a single process); filled in by the Trainer.
        accelerator: ``"cpu"`` or ``"cuda"``.
        timeout: how long a collective waits for the other ranks before failing.
        state_dict_type: ``"full"`` (rank 0 gathers one ordinary state dict and writes one file) or
            ``"sharded"`` (every rank writes its shards into a checkpoint directory), as in Lightning.
        auto_wrap_policy: module classes whose instances are sharded as their own unit (their parameters are
            gathered only while they run, which bounds peak memory); None shards the model as one unit.
        reshard_after_forward: free gathered parameters after each unit's forward (FSDP2's default, less
            memory) or keep them until backward (less communication).

    Raises:
        MisconfigurationException: an invalid argument (named with its value and the accepted ones).
    """

    def __init__(
        self,
        environment: ClusterEnvironment | None = None,
        accelerator: str = "cpu",
        timeout: timedelta = collectives.DEFAULT_TIMEOUT,
        state_dict_type: str = "full",
        auto_wrap_policy: Iterable[type[nn.Module]] | None = None,
        reshard_after_forward: bool = True,
    ) -> None:
        super().__init__(environment, accelerator, timeout)
        if state_dict_type not in _STATE_DICT_TYPES:
            raise MisconfigurationException(
                f"FSDPStrategy(state_dict_type={state_dict_type!r}) is invalid; use 'full' (one file written "
                "by rank 0) or 'sharded' (a directory, every rank writes its shards)."
            )
        if not isinstance(reshard_after_forward, bool):
            raise MisconfigurationException(
                f"FSDPStrategy(reshard_after_forward={reshard_after_forward!r}) is invalid; pass True or False."
            )
        self.state_dict_type = state_dict_type
        self.auto_wrap_policy = _check_wrap_policy(auto_wrap_policy)
        self.reshard_after_forward = reshard_after_forward
        self.mesh: DeviceMesh | None = None
        self._module: nn.Module | None = None
        self._forward_methods: set[str] = set()

    @property
    def sharded(self) -> bool:
        """Whether parameters are really sharded (more than one rank); with one rank the module is plain."""
        return self.mesh is not None

    @override
    def setup(self, module: nn.Module, device: torch.device | None = None) -> nn.Module:
        """Move ``module`` to ``device`` and shard it in place (its class, state_dict keys and methods stay).

        Every rank must build the same model; rank 0's initial parameters and buffers are broadcast first, so
        all ranks start from the same weights (as with DDP).

        Args:
            module: the model (a LightningModule or any ``nn.Module``).
            device: where to put it (default :attr:`root_device`).

        Returns:
            ``module`` itself, now an ``FSDPModule`` whose parameters are DTensors (plain with one rank).

        Raises:
            MisconfigurationException: no process group (call :meth:`setup_environment` first).
        """
        if self.world_size > 1 and not collectives.is_distributed():
            raise MisconfigurationException(
                "FSDPStrategy.setup(module) needs the process group; call setup_environment() on every rank first."
            )
        device = device if device is not None else self.root_device
        module.to(device)
        self._module = self.model = module
        self._forward_methods = set()
        if self.world_size == 1:  # nothing to shard; the same code paths work on plain tensors
            return module
        self._broadcast_initial_state(module)
        self.mesh = init_device_mesh(device.type, (self.world_size,))
        # Children before their parents: fully_shard assigns a parameter to the innermost sharded unit.
        for child in reversed(list(module.modules())):
            if child is not module and type(child) in self.auto_wrap_policy:
                fully_shard(child, mesh=self.mesh, reshard_after_forward=self.reshard_after_forward)
        fully_shard(module, mesh=self.mesh, reshard_after_forward=self.reshard_after_forward)
        return module

    @staticmethod
    def _broadcast_initial_state(module: nn.Module) -> None:
        # Ranks seeded differently would otherwise start from different shards of different models.
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor, src=0)

    @override
    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``module.<method>(*args, **kwargs)`` with its parameters gathered (FSDP pre/post-forward hooks).

        Args:
            method: e.g. ``"training_step"`` or ``"forward"``.
            *args: the method's positional arguments.
            **kwargs: the method's keyword arguments.

        Returns:
            What the method returned.

        Raises:
            MisconfigurationException: :meth:`setup` was not called.
        """
        module = self.unwrap()
        if method != "forward" and method not in self._forward_methods:
            register_fsdp_forward_method(module, method)  # a no-op on an unsharded module
            self._forward_methods.add(method)
        return getattr(module, method)(*args, **kwargs)

    @override
    def unwrap(self) -> nn.Module:
        """The module given to :meth:`setup` (sharded in place: the same object).

        Raises:
            MisconfigurationException: :meth:`setup` was not called.
        """
        if self._module is None:
            raise MisconfigurationException("FSDPStrategy needs a model: call setup(module) first.")
        return self._module

    @override
    def teardown(self) -> None:
        """Drop the model and mesh and leave the process group this strategy created (safe to call twice)."""
        self._module = None
        self.mesh = None
        super().teardown()

    # --- checkpoint state ---------------------------------------------------------------------------
    @staticmethod
    def _options(full: bool, *, strict: bool = True, broadcast_from_rank0: bool = False) -> StateDictOptions:
        # cpu_offload with full_state_dict makes torch gather onto rank 0 only, one tensor at a time.
        return StateDictOptions(
            full_state_dict=full, cpu_offload=full, strict=strict, broadcast_from_rank0=broadcast_from_rank0
        )

    def model_state_dict(self) -> dict[str, Any]:
        """The model's state dict in this strategy's ``state_dict_type`` (call on every rank: it gathers).

        Returns:
            ``"full"``: the whole state dict on CPU on rank 0, ``{}`` on the other ranks. ``"sharded"``: this
            rank's DTensor shards, for ``save_sharded`` (and as the template of ``load_sharded``).

        Raises:
            MisconfigurationException: :meth:`setup` was not called.
        """
        return get_model_state_dict(self.unwrap(), options=self._options(self.state_dict_type == "full"))

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state dict, keyed by parameter names, in this strategy's ``state_dict_type``.

        Args:
            optimizer: an optimizer over the module's parameters (created after :meth:`setup`).

        Returns:
            As for :meth:`model_state_dict` (``{}`` on ranks other than 0 in ``"full"`` mode).

        Raises:
            MisconfigurationException: :meth:`setup` was not called.
        """
        options = self._options(self.state_dict_type == "full")
        return get_optimizer_state_dict(self.unwrap(), optimizer, options=options)

    def _full_source(self, state: dict[str, Any], what: str) -> bool:
        """Whether a full state must be broadcast from rank 0 (True) or every rank holds it (False)."""
        held = collectives.all_gather_object(bool(state), what=f"{what}: which ranks hold the state")
        if all(held):
            return False
        if held[0]:
            return True
        raise MisconfigurationException(
            f"FSDPStrategy.{what}(state) got an empty state on rank 0; pass the full state dict on rank 0 "
            "(or on every rank), or a sharded state on every rank."
        )

    def load_model_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Load a full state dict (on rank 0 only or on every rank) or this rank's shards; call on every rank.

        Args:
            state: a full state dict (tensors; ``{}`` on ranks other than 0 to broadcast rank 0's), or the
                sharded state dict filled by ``load_sharded``. Not modified.
            strict: fail on missing or unexpected keys.

        Raises:
            MisconfigurationException: rank 0 has no state while others do, or :meth:`setup` was not called.
            RuntimeError: keys or shapes do not match the model (with ``strict``).
        """
        module = self.unwrap()
        if _has_dtensor(state) or not self.sharded:
            set_model_state_dict(module, dict(state), options=StateDictOptions(strict=strict))
            return
        broadcast = self._full_source(state, "load_model_state_dict")
        # A shallow copy: torch replaces the values of the dict it broadcasts into.
        options = self._options(True, strict=strict, broadcast_from_rank0=broadcast)
        set_model_state_dict(module, dict(state), options=options)

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load an optimizer state saved by :meth:`optimizer_state_dict` (full or sharded); call on every rank.

        Args:
            optimizer: the optimizer to restore (over the sharded module's parameters).
            state: the full state (``{}`` on ranks other than 0 to broadcast rank 0's) or this rank's shards.

        Raises:
            MisconfigurationException: rank 0 has no state while others do, or :meth:`setup` was not called.
        """
        module = self.unwrap()
        if _has_dtensor(state) or not self.sharded:
            set_optimizer_state_dict(module, optimizer, dict(state))
            return
        held = collectives.all_gather_object(
            (bool(state), bool(state.get("state"))), what="load_optimizer_state_dict: which ranks hold state"
        )
        if all(whole for whole, _ in held) and not any(per_parameter for _, per_parameter in held):
            # No per-parameter state anywhere (SGD without momentum, or before the first step): only the
            # hyperparameters to restore. torch's loader cannot place such a state on a CPU mesh.
            for group, saved in zip(optimizer.param_groups, state.get("param_groups", []), strict=True):
                group.update({key: value for key, value in saved.items() if key != "params"})
            return
        broadcast = self._full_source(state, "load_optimizer_state_dict")
        options = self._options(True, broadcast_from_rank0=broadcast)
        set_optimizer_state_dict(module, optimizer, dict(state), options=options)

    def sharded_state_template(self, optimizers: Iterable[torch.optim.Optimizer] = ()) -> dict[str, Any]:
        """This rank's sharded ``state_dict`` and ``optimizer_states``: what ``load_sharded`` fills.

        Args:
            optimizers: the optimizers whose state the checkpoint holds (in the checkpoint's order).

        Returns:
            ``{"state_dict": ..., "optimizer_states": [...]}`` of DTensor shards (plain tensors with one rank).

        Raises:
            MisconfigurationException: :meth:`setup` was not called.
        """
        module = self.unwrap()
        options = self._options(False)
        return {
            "state_dict": get_model_state_dict(module, options=options),
            "optimizer_states": [
                get_optimizer_state_dict(module, opt, options=options) for opt in optimizers
            ],
        }
