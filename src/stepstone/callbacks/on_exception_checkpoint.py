"""OnExceptionCheckpoint: save a checkpoint when fit/validate/test/predict fails (Lightning's callback)."""

from __future__ import annotations

import os
import sys

from typing_extensions import override

import stepstone
from stepstone.callbacks.checkpoint import Checkpoint
from stepstone.callbacks.checkpoint_on_exception import preemption_checkpoint, report_failed_save
from stepstone.trainer.state import TrainerStatus

__all__ = ["OnExceptionCheckpoint"]


class OnExceptionCheckpoint(Checkpoint):
    """Save a checkpoint to ``dirpath/filename.ckpt`` when an exception interrupts the Trainer; the error is re-raised.

    The file is written by ``trainer.save_checkpoint``, so it is committed like every stepstone checkpoint (it
    is whole or absent) and ``fit(ckpt_path=callback.ckpt_path)`` resumes from it. A later run that ends
    without an exception removes it, as in Lightning. When the exception is stepstone's preemption exit, whose
    ``last-preempted.ckpt`` was just committed at the same step, no second copy of that step is written.

    Args:
        dirpath: the folder to save into (a path or fsspec URL), fixed now because an exception can come at
            any moment.
        filename: the file name without the ``.ckpt`` extension.

    Raises:
        ValueError: ``filename`` is empty (Lightning's type).
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike[str], filename: str = "on_exception") -> None:
        super().__init__()
        if not filename:
            raise ValueError(
                f"OnExceptionCheckpoint(filename={filename!r}) is invalid: The filename cannot be empty. Pass a "
                "name without extension, e.g. filename='on_exception'."
            )
        self.dirpath = dirpath
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        """The file written on an exception: ``dirpath/filename.ckpt``."""
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    @override
    def on_exception(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, exception: BaseException
    ) -> None:
        """Save the checkpoint (overwriting an older one); a failed save is reported, never raised instead."""
        preempted = preemption_checkpoint(exception)
        if preempted is not None:
            print(
                f"OnExceptionCheckpoint: not saving {self.ckpt_path}; the preemption checkpoint {preempted} "
                "holds the same step.",
                file=sys.stderr,
            )
            return
        try:
            trainer.save_checkpoint(self.ckpt_path)
        except Exception as failure:
            # The exception that stopped the run is the one to see: the failed save is told alongside it.
            report_failed_save(
                exception, f"OnExceptionCheckpoint could not save {self.ckpt_path}: {failure!r}"
            )

    @override
    def teardown(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, stage: str) -> None:
        """After a run that ended without an exception, remove the file an earlier failure left (rank 0)."""
        if trainer.state.status != TrainerStatus.FINISHED or not trainer.is_global_zero:
            return
        from stepstone.checkpoint import remove_file

        remove_file(self.ckpt_path)
