"""LightningModule: a ``torch.nn.Module`` that also says how to train, evaluate and log itself."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer
from typing_extensions import Self, override

from stepstone.core.hooks import ModelHooks
from stepstone.core.mixins.hparams_mixin import HyperparametersMixin
from stepstone.core.optimizers import LightningOptimizer, resolve_clipping
from stepstone.core.saving import load_module_from_checkpoint
from stepstone.core.transfer import move_to_device
from stepstone.errors import MisconfigurationException

if TYPE_CHECKING:
    from pathlib import Path

    from stepstone.loggers.logger import Logger
    from stepstone.trainer.trainer import Trainer

__all__ = ["LightningModule"]


class LightningModule(HyperparametersMixin, ModelHooks, nn.Module):
    """Base class for models trained by :class:`stepstone.Trainer` (Lightning's ``LightningModule``).

    Override ``training_step`` and ``configure_optimizers`` (and ``validation_step``, ``test_step``,
    ``predict_step`` and the hooks as needed). Log with :meth:`log`; store constructor arguments in
    checkpoints with :meth:`save_hyperparameters`.
    """

    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._current_fx_name: str | None = None
        self.automatic_optimization: bool = True
        self._strict_loading: bool | None = None  # None: not set by the user (strict)
        self.prepare_data_per_node: bool = True
        self._example_input_array: Any = None
        self._param_requires_grad_state: dict[nn.Parameter, bool] = {}

    # --- wiring -------------------------------------------------------------------------------------
    @property
    def strict_loading(self) -> bool:
        """Whether checkpoints load with ``load_state_dict(strict=True)``; unset (or None) means True, as in Lightning."""
        return self._strict_loading in (None, True)

    @strict_loading.setter
    def strict_loading(self, strict_loading: bool | None) -> None:
        self._strict_loading = strict_loading

    @property
    def trainer(self) -> Trainer:
        """The Trainer this module is attached to.

        Raises:
            RuntimeError: the module is not attached to a Trainer (not inside fit/validate/test/predict).
        """
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a `Trainer`.")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        self._trainer = trainer

    @override
    def __getstate__(self) -> dict[str, Any]:
        # A copy or pickle of the module is not attached to any Trainer (as in Lightning): copying the module
        # must not copy the Trainer, its loaders and its loggers along.
        state = dict(self.__dict__)
        state["_trainer"] = None
        return state

    @property
    def device(self) -> torch.device:
        """The device of the module's first parameter or buffer (CPU if it has none)."""
        for param in self.parameters():
            return param.device
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")

    @property
    def current_epoch(self) -> int:
        """The Trainer's current epoch (0 when not attached)."""
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (0 when not attached)."""
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes."""
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        """This process's rank on its machine."""
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def logger(self) -> Logger | None:
        """The Trainer's first logger."""
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Logger]:
        """The Trainer's loggers."""
        return self._trainer.loggers if self._trainer is not None else []

    @property
    def example_input_array(self) -> Any:
        """An example input used by loggers that draw the graph."""
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, value: Any) -> None:
        self._example_input_array = value

    # --- logging ------------------------------------------------------------------------------------
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Log a scalar: it can be monitored (ModelCheckpoint), shown (``prog_bar``) and sent to loggers.

        Defaults follow Lightning: in ``training_step`` and training-batch hooks ``on_step=True,
        on_epoch=False``; in evaluation steps and in epoch hooks ``on_step=False, on_epoch=True`` (mean over
        the epoch, weighted by ``batch_size``, inferred from the batch when not given). With both on, loggers
        get ``name_step`` and ``name_epoch``.

        Raises:
            MisconfigurationException: an invalid value, flag combination, or a hook where logging is not allowed.
        """
        if self._trainer is None:
            warnings.warn(
                f"self.log({name!r}, ...) was called but this module is not attached to a Trainer; nothing was "
                "logged. Log from inside fit/validate/test.",
                UserWarning,
                stacklevel=2,
            )
            return
        if getattr(self._trainer, "barebones", False):
            warnings.warn(
                f"self.log({name!r}, ...) was called but Trainer(barebones=True) is configured: logging can impact "
                "raw speed so it is disabled; nothing was logged. Pass barebones=False to log.",
                UserWarning,
                stacklevel=2,
            )
            return
        self._trainer._metrics.log(
            self._current_fx_name,
            name,
            value,
            prog_bar=prog_bar,
            logger=logger,
            on_step=on_step,
            on_epoch=on_epoch,
            reduce_fx=reduce_fx,
            sync_dist=sync_dist,
            add_dataloader_idx=add_dataloader_idx,
            batch_size=batch_size,
            rank_zero_only=rank_zero_only,
        )

    def log_dict(self, dictionary: Mapping[str, Any], **kwargs: Any) -> None:
        """Log every entry of ``dictionary`` with the same flags (see :meth:`log`)."""
        for name, value in dictionary.items():
            self.log(name, value, **kwargs)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only."""
        if self.global_rank == 0:
            print(*args, **kwargs)

    # --- steps (override) ---------------------------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Compute and return the training loss (a tensor, or a dict with a ``"loss"`` key, or None to skip)."""
        raise MisconfigurationException("`training_step` must be implemented to train with the Trainer.")

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one validation batch; log metrics with :meth:`log`."""

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """Evaluate one test batch; log metrics with :meth:`log`."""

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Return the prediction for one batch (default: ``self(batch)``)."""
        return self(batch)

    def configure_optimizers(self) -> Any:
        """Return the optimizer(s) and optional learning-rate scheduler(s), in any of Lightning's forms."""
        raise MisconfigurationException(
            "`configure_optimizers` must be implemented to train with the Trainer."
        )

    def configure_model(self) -> None:
        """Create layers lazily, right before training (called once per fit/validate/test/predict)."""

    # --- optimization -------------------------------------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer(s) from ``configure_optimizers``: one object when there is one, else a list."""
        opts: list[Any] = list(self.trainer.optimizers)
        if use_pl_optimizer:
            opts = self.trainer._lightning_optimizers()
        return opts[0] if len(opts) == 1 else opts

    def lr_schedulers(self) -> Any:
        """The scheduler(s) from ``configure_optimizers``: None, one object, or a list."""
        schedulers = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        if not schedulers:
            return None
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward pass for manual optimization (use instead of ``loss.backward()``).

        Runs the ``on_before_backward`` / ``on_after_backward`` hooks and gradient scaling, as Lightning does.

        Raises:
            MisconfigurationException: automatic optimization is on.
        """
        if self.automatic_optimization:
            raise MisconfigurationException(
                "manual_backward() is for manual optimization: set `self.automatic_optimization = False` in "
                "__init__, or return the loss from training_step and let the Trainer call backward."
            )
        self.trainer._backward(loss, *args, **kwargs)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Run the backward pass; override to customize."""
        loss.backward(*args, **kwargs)

    def toggle_optimizer(self, optimizer: Optimizer | LightningOptimizer) -> None:
        """Freeze the parameters of the *other* optimizers until :meth:`untoggle_optimizer` (Lightning's semantics).

        Parameters that belong to no optimizer are left as they are; those of ``optimizer`` keep their own
        ``requires_grad``.
        """
        state: dict[nn.Parameter, bool] = {}
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                for param in group["params"]:
                    if param not in state:
                        state[param] = param.requires_grad
                        param.requires_grad = False
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.requires_grad = state.get(param, param.requires_grad)
        self._param_requires_grad_state = state

    def untoggle_optimizer(self, optimizer: Optimizer | LightningOptimizer) -> None:
        """Give the parameters frozen by :meth:`toggle_optimizer` their ``requires_grad`` back."""
        state = self._param_requires_grad_state
        for param, requires_grad in state.items():
            param.requires_grad = requires_grad
        self._param_requires_grad_state = {}

    @contextmanager
    def toggled_optimizer(self, optimizer: Optimizer | LightningOptimizer) -> Iterator[None]:
        """``with self.toggled_optimizer(opt):`` — :meth:`toggle_optimizer` on entry, :meth:`untoggle_optimizer` on exit."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradients of the parameters of ``optimizer`` by norm (default) or by value.

        Unset arguments fall back to the Trainer's ``gradient_clip_val`` / ``gradient_clip_algorithm``.

        Raises:
            MisconfigurationException: an argument conflicts with the Trainer's setting, or the algorithm is unknown.
        """
        trainer = self._trainer
        gradient_clip_val, gradient_clip_algorithm = resolve_clipping(
            gradient_clip_val,
            gradient_clip_algorithm,
            trainer.gradient_clip_val if trainer is not None else None,
            trainer.gradient_clip_algorithm if trainer is not None else None,
        )
        if not gradient_clip_val:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Called before each optimizer step with the Trainer's clipping settings; override to customize."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        """Take the optimizer step (override for learning-rate warm-up and similar)."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Optimizer) -> None:
        """Clear the gradients (override to customize)."""
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step one scheduler (``metric`` is the monitored value for ReduceLROnPlateau, else None)."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # --- data ---------------------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move every tensor in ``batch`` to ``device`` (nested lists, tuples, dicts, dataclasses)."""
        return move_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch before it is moved to the device."""
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change a batch after it is moved to the device."""
        return batch

    # --- checkpoints --------------------------------------------------------------------------------

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Build the module from a checkpoint: ``cls(**saved_hparams, **kwargs)`` then load its weights.

        Args:
            checkpoint_path: the file (local path or fsspec URL).
            map_location: where to put the tensors (as in ``torch.load``).
            hparams_file: a YAML file whose hyperparameters replace the saved ones.
            strict: whether state_dict keys must match exactly (default: the module's ``strict_loading``).
            weights_only: ``False`` allows pickled objects — only for files you trust.
            **kwargs: constructor arguments that override the saved hyperparameters.

        Returns:
            A new instance with the saved weights, on the device of the saved tensors (or ``map_location``).

        Raises:
            CheckpointNotFoundError: no file at ``checkpoint_path``.
            CheckpointCorruptError: the file fails its integrity check.
        """
        return load_module_from_checkpoint(
            cls, checkpoint_path, map_location, hparams_file, strict, weights_only, kwargs
        )
