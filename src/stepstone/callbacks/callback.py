"""The Callback base class: Lightning's hook set, with stateful callbacks keyed by ``state_key``."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

# The package itself, not its classes: hooks annotate ``stepstone.Trainer`` so that the names resolve at runtime
# (typing.get_type_hints, jsonargparse) once the package is loaded, without an import cycle.
import stepstone

__all__ = ["Callback", "check_state_keys"]


class Callback:
    """Base class for callbacks: override the hooks you need; every hook does nothing by default.

    A callback that keeps state across a resume returns it from :meth:`state_dict` and gets it back in
    :meth:`load_state_dict`. The state is stored in the checkpoint under :attr:`state_key`.
    """

    @property
    def state_key(self) -> str:
        """The key under which this callback's state is stored in ``checkpoint["callbacks"]``.

        Returns:
            The class name by default; callbacks that can appear several times in one Trainer override it
            (see :meth:`_generate_state_key`) so that each instance gets its own state back.
        """
        return self.__class__.__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        """Build a state key from the class name and the arguments that identify this instance."""
        return f"{self.__class__.__qualname__}{kwargs!r}"

    # --- setup and teardown -------------------------------------------------------------------------
    def setup(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, stage: str) -> None:
        """Called when fit, validate, test or predict begins; ``stage`` is one of those four names."""

    def teardown(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, stage: str) -> None:
        """Called when fit, validate, test or predict ends."""

    # --- whole runs ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when fit begins."""

    def on_fit_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when fit ends."""

    def on_sanity_check_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called before the sanity-check validation steps."""

    def on_sanity_check_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called after the sanity-check validation steps."""

    def on_train_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when the training loop begins."""

    def on_train_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when the training loop ends."""

    def on_validation_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when a validation loop begins."""

    def on_validation_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when a validation loop ends (after its metrics are in ``trainer.callback_metrics``)."""

    def on_test_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when the test loop begins."""

    def on_test_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when the test loop ends."""

    def on_predict_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when the predict loop begins."""

    def on_predict_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when the predict loop ends."""

    def on_exception(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, exception: BaseException
    ) -> None:
        """Called when fit, validate, test or predict is interrupted by an exception."""

    # --- epochs -------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when a training epoch begins."""

    def on_train_epoch_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when a training epoch ends (after end-of-epoch validation, as in Lightning)."""

    def on_validation_epoch_start(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule
    ) -> None:
        """Called when a validation epoch begins."""

    def on_validation_epoch_end(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule
    ) -> None:
        """Called when a validation epoch ends."""

    def on_test_epoch_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when a test epoch begins."""

    def on_test_epoch_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when a test epoch ends."""

    def on_predict_epoch_start(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule
    ) -> None:
        """Called when a predict epoch begins."""

    def on_predict_epoch_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called when a predict epoch ends."""

    # --- batches ------------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Called before ``training_step``."""

    def on_train_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Called after ``training_step`` and, when one was taken, the optimizer step."""

    def on_validation_batch_start(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called before ``validation_step``."""

    def on_validation_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called after ``validation_step``."""

    def on_test_batch_start(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called before ``test_step``."""

    def on_test_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called after ``test_step``."""

    def on_predict_batch_start(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called before ``predict_step``."""

    def on_predict_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Called after ``predict_step``."""

    # --- optimization -------------------------------------------------------------------------------
    def on_before_backward(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, loss: Any
    ) -> None:
        """Called before ``loss.backward()``."""

    def on_after_backward(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Called after ``loss.backward()`` and before the optimizer step."""

    def on_before_optimizer_step(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, optimizer: Optimizer
    ) -> None:
        """Called before ``optimizer.step()`` (after gradient accumulation, before clipping)."""

    def on_before_zero_grad(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, optimizer: Optimizer
    ) -> None:
        """Called before ``optimizer.zero_grad()``."""

    # --- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Return the state to store in checkpoints.

        Returns:
            A weights_only-safe dict (tensors, numbers, strings, lists, dicts); empty means "nothing to store".
        """
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned earlier by :meth:`state_dict`.

        Args:
            state_dict: the dict stored under :attr:`state_key` in the checkpoint.
        """

    def on_save_checkpoint(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Called when a checkpoint dict is built; may add entries to ``checkpoint``."""

    def on_load_checkpoint(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Called when a checkpoint is restored, before :meth:`load_state_dict`."""


def check_state_keys(callbacks: list[Callback]) -> None:
    """Refuse two stateful callbacks with the same ``state_key`` (Lightning's check, at ``Trainer(...)``).

    Their states would share one entry of ``checkpoint["callbacks"]``: one would overwrite the other in every
    checkpoint, and a resume would give both the same state.

    Args:
        callbacks: the Trainer's callbacks, in the order the user passed them.

    Raises:
        RuntimeError: two callbacks that override ``state_dict`` share a ``state_key`` (Lightning's type).
    """
    seen: dict[str, int] = {}
    for index, callback in enumerate(callbacks):
        if type(callback).state_dict is Callback.state_dict:
            continue  # stateless: nothing is stored under its key
        key = callback.state_key
        if key not in seen:
            seen[key] = index
            continue
        kind = type(callback).__name__
        raise RuntimeError(
            f"Found more than one stateful callback of type `{kind}`: callbacks[{seen[key]}] and "
            f"callbacks[{index}] both have state_key {key!r}, so their states would overwrite each other in the "
            f"checkpoint. Give them settings that differ in the state_key (for ModelCheckpoint: monitor, mode, "
            "every_n_train_steps, every_n_epochs or train_time_interval), or drop one of them. "
            "HINT: The `callback.state_key` must be unique among all callbacks in the Trainer."
        )
