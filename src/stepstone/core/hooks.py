"""The hooks a LightningModule may override; each does nothing by default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.optim import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ModelHooks"]


class ModelHooks:
    """Lightning's model hooks (the Trainer calls them; override the ones you need)."""

    if TYPE_CHECKING:
        # Provided by nn.Module in LightningModule (this mixin's host), with these same signatures.
        def train(self, mode: bool = True) -> Self: ...

        def eval(self) -> Self: ...

        def zero_grad(self, set_to_none: bool = True) -> None: ...

    def on_fit_start(self) -> None:
        """Called when fit begins."""

    def on_fit_end(self) -> None:
        """Called when fit ends."""

    def on_train_start(self) -> None:
        """Called when the training loop begins (after the sanity check)."""

    def on_train_end(self) -> None:
        """Called when the training loop ends."""

    def on_validation_start(self) -> None:
        """Called when a validation loop begins."""

    def on_validation_end(self) -> None:
        """Called when a validation loop ends."""

    def on_test_start(self) -> None:
        """Called when the test loop begins."""

    def on_test_end(self) -> None:
        """Called when the test loop ends."""

    def on_predict_start(self) -> None:
        """Called when the predict loop begins."""

    def on_predict_end(self) -> None:
        """Called when the predict loop ends."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Called before ``training_step``; return -1 to skip the rest of the epoch."""
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Called after the training step (and the optimizer step, when one was taken)."""

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called before ``validation_step``."""

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Called after ``validation_step``."""

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called before ``test_step``."""

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called after ``test_step``."""

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called before ``predict_step``."""

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Called after ``predict_step``."""

    def on_train_epoch_start(self) -> None:
        """Called when a training epoch begins."""

    def on_train_epoch_end(self) -> None:
        """Called when a training epoch ends (after the epoch's validation)."""

    def on_validation_epoch_start(self) -> None:
        """Called when a validation epoch begins."""

    def on_validation_epoch_end(self) -> None:
        """Called when a validation epoch ends; epoch-level metrics may be logged here."""

    def on_test_epoch_start(self) -> None:
        """Called when a test epoch begins."""

    def on_test_epoch_end(self) -> None:
        """Called when a test epoch ends."""

    def on_predict_epoch_start(self) -> None:
        """Called when a predict epoch begins."""

    def on_predict_epoch_end(self) -> None:
        """Called when a predict epoch ends."""

    def on_validation_model_eval(self) -> None:
        """Put the model in eval mode for validation."""
        self.eval()

    def on_validation_model_zero_grad(self) -> None:
        """Release the gradients before a validation run inside fit (not while accumulating)."""
        self.zero_grad(set_to_none=True)

    def on_validation_model_train(self) -> None:
        """Put the model back in train mode after validation."""
        self.train()

    def on_test_model_eval(self) -> None:
        """Put the model in eval mode for testing."""
        self.eval()

    def on_test_model_train(self) -> None:
        """Put the model back in train mode after testing."""
        self.train()

    def on_predict_model_eval(self) -> None:
        """Put the model in eval mode for prediction."""
        self.eval()

    def on_before_backward(self, loss: Any) -> None:
        """Called before ``loss.backward()``."""

    def on_after_backward(self) -> None:
        """Called after ``loss.backward()``, before the optimizer step."""

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Called before ``optimizer.step()``, before gradient clipping."""

    def on_before_zero_grad(self, optimizer: Optimizer) -> None:
        """Called before ``optimizer.zero_grad()``."""

    def prepare_data(self) -> None:
        """Download or prepare data (called once before setup)."""

    def setup(self, stage: str) -> None:
        """Called at the start of fit/validate/test/predict; ``stage`` names which."""

    def teardown(self, stage: str) -> None:
        """Called at the end of fit/validate/test/predict."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add entries to a checkpoint dict being built (they must stay weights_only-safe)."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read entries from a checkpoint dict being restored (before the weights are loaded)."""

    def train_dataloader(self) -> Any:
        """Return the training data (used when fit gets no dataloaders and no datamodule)."""
        raise NotImplementedError

    def val_dataloader(self) -> Any:
        """Return the validation data (optional)."""
        raise NotImplementedError

    def test_dataloader(self) -> Any:
        """Return the test data (optional)."""
        raise NotImplementedError

    def predict_dataloader(self) -> Any:
        """Return the prediction data (optional)."""
        raise NotImplementedError
