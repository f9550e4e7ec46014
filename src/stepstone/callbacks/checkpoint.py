"""The ``Checkpoint`` base class: what the Trainer treats as a checkpointing callback (Lightning's class)."""

from __future__ import annotations

from stepstone.callbacks.callback import Callback

__all__ = ["Checkpoint"]


class Checkpoint(Callback):
    """Base class for callbacks that save checkpoints (``ModelCheckpoint``, ``OnExceptionCheckpoint``).

    As in Lightning, the Trainer runs these callbacks after all others, adds no default ``ModelCheckpoint`` when
    one is given, and refuses one together with ``enable_checkpointing=False``.
    """

    _monitors_metrics = True  # Lightning runs checkpoint callbacks after the module's on_train_epoch_end
