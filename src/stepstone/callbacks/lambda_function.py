"""LambdaCallback: a callback made on the spot from functions, one keyword per hook (Lightning's callback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stepstone.callbacks.callback import Callback

__all__ = ["LambdaCallback"]

_HOOKS = (
    "setup",
    "teardown",
    "on_fit_start",
    "on_fit_end",
    "on_sanity_check_start",
    "on_sanity_check_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_test_epoch_start",
    "on_test_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_train_start",
    "on_train_end",
    "on_validation_start",
    "on_validation_end",
    "on_test_start",
    "on_test_end",
    "on_exception",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_predict_start",
    "on_predict_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_predict_epoch_start",
    "on_predict_epoch_end",
)


class LambdaCallback(Callback):
    """Create a simple callback on the fly from functions, one keyword per hook.

    Each function is called as the hook would be, with the same arguments: ``setup=lambda trainer, module,
    stage: ...``, ``on_train_batch_end=lambda trainer, module, outputs, batch, batch_idx: ...``. Hooks not given
    keep the base class's (they do nothing, and the Trainer does not call them).

    Args:
        setup: ...and every other keyword: the function to run for the hook of that name (see
            :class:`~stepstone.callbacks.Callback` for each hook's arguments); None leaves the hook out.

    Raises:
        TypeError: a value that is neither None nor callable (naming the hook).

    Example::

        trainer = L.Trainer(callbacks=[LambdaCallback(on_train_epoch_end=lambda t, m: print(t.current_epoch))])
    """

    def __init__(
        self,
        setup: Callable[..., Any] | None = None,
        teardown: Callable[..., Any] | None = None,
        on_fit_start: Callable[..., Any] | None = None,
        on_fit_end: Callable[..., Any] | None = None,
        on_sanity_check_start: Callable[..., Any] | None = None,
        on_sanity_check_end: Callable[..., Any] | None = None,
        on_train_batch_start: Callable[..., Any] | None = None,
        on_train_batch_end: Callable[..., Any] | None = None,
        on_train_epoch_start: Callable[..., Any] | None = None,
        on_train_epoch_end: Callable[..., Any] | None = None,
        on_validation_epoch_start: Callable[..., Any] | None = None,
        on_validation_epoch_end: Callable[..., Any] | None = None,
        on_test_epoch_start: Callable[..., Any] | None = None,
        on_test_epoch_end: Callable[..., Any] | None = None,
        on_validation_batch_start: Callable[..., Any] | None = None,
        on_validation_batch_end: Callable[..., Any] | None = None,
        on_test_batch_start: Callable[..., Any] | None = None,
        on_test_batch_end: Callable[..., Any] | None = None,
        on_train_start: Callable[..., Any] | None = None,
        on_train_end: Callable[..., Any] | None = None,
        on_validation_start: Callable[..., Any] | None = None,
        on_validation_end: Callable[..., Any] | None = None,
        on_test_start: Callable[..., Any] | None = None,
        on_test_end: Callable[..., Any] | None = None,
        on_exception: Callable[..., Any] | None = None,
        on_save_checkpoint: Callable[..., Any] | None = None,
        on_load_checkpoint: Callable[..., Any] | None = None,
        on_before_backward: Callable[..., Any] | None = None,
        on_after_backward: Callable[..., Any] | None = None,
        on_before_optimizer_step: Callable[..., Any] | None = None,
        on_before_zero_grad: Callable[..., Any] | None = None,
        on_predict_start: Callable[..., Any] | None = None,
        on_predict_end: Callable[..., Any] | None = None,
        on_predict_batch_start: Callable[..., Any] | None = None,
        on_predict_batch_end: Callable[..., Any] | None = None,
        on_predict_epoch_start: Callable[..., Any] | None = None,
        on_predict_epoch_end: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        given = dict(locals())
        for name in _HOOKS:
            function = given[name]
            if function is None:
                continue
            if not callable(function):
                raise TypeError(
                    f"LambdaCallback({name}={function!r}) is invalid: pass a function taking the hook's arguments "
                    f"(e.g. {name}=lambda trainer, pl_module, *args: ...), or None to leave the hook out."
                )
            # An instance attribute: called as callback.<hook>(trainer, pl_module, ...), without self.
            setattr(self, name, function)
