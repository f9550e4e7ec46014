"""Progress bars: the ``ProgressBar`` base callback and the default ``TQDMProgressBar``."""

from __future__ import annotations

import math
import sys
import warnings
from typing import IO, TYPE_CHECKING, Any

from tqdm import tqdm
from typing_extensions import override

import stepstone
from stepstone.callbacks.callback import Callback
from stepstone.errors import MisconfigurationException

if TYPE_CHECKING:
    from stepstone.loggers.logger import Logger

    _TqdmBase = tqdm[Any]
else:
    _TqdmBase = tqdm

__all__ = ["ProgressBar", "TQDMProgressBar"]

_PAD_SIZE = 5


def _logger_version(trainer: Any) -> int | str | None:
    loggers: list[Logger] = list(getattr(trainer, "loggers", None) or [])
    if len(loggers) == 1:
        return loggers[0].version
    # Several loggers: their distinct versions joined, as Lightning shows them.
    return "_".join(dict.fromkeys(str(logger.version) for logger in loggers)) or None


def _total(counts: Any, index: int | None = None) -> int | None:
    """A tqdm ``total``: ``counts`` (or its element ``index``), None when unknown or infinite."""
    try:
        count = counts if index is None else counts[index]
    except (IndexError, TypeError):
        return None
    return None if count is None or math.isinf(count) else int(count)


class ProgressBar(Callback):
    """Base class for progress bars: draws on global rank 0 only and gathers what a bar displays.

    Subclasses draw; this class only provides :meth:`get_metrics`, the batch totals and on/off state.
    """

    def __init__(self) -> None:
        self._enabled = True
        self._trainer: stepstone.Trainer | None = None

    @property
    def trainer(self) -> stepstone.Trainer:
        """The Trainer this bar is attached to.

        Raises:
            RuntimeError: before the Trainer called any hook of this callback.
        """
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer yet.")
        return self._trainer

    @property
    def is_enabled(self) -> bool:
        """Whether the bar may draw (it still draws only on global rank 0)."""
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        """The opposite of :attr:`is_enabled`."""
        return not self.is_enabled

    def disable(self) -> None:
        """Stop drawing (the Trainer calls this on every rank except global rank 0)."""
        self._enabled = False

    def enable(self) -> None:
        """Resume drawing."""
        self._enabled = True

    def _shows(self, trainer: stepstone.Trainer) -> bool:
        self._trainer = trainer
        return self.is_enabled and bool(trainer.is_global_zero)

    @override
    def setup(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, stage: str) -> None:
        """Attach to ``trainer``; disable on every rank except global rank 0."""
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()

    @property
    def total_train_batches(self) -> int | float:
        """Batches in one training epoch (``inf`` for an iterable without length)."""
        return self.trainer.num_training_batches

    @property
    def total_val_batches(self) -> int | float:
        """Batches in one validation run over all validation dataloaders (sanity-check counts while checking)."""
        trainer = self.trainer
        return sum(trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches)

    def get_metrics(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule | None
    ) -> dict[str, int | float | str]:
        """Return what the bar shows next to the counter.

        Args:
            trainer: the running Trainer.
            pl_module: the module being run (unused here; subclasses may add from it).

        Returns:
            ``v_num`` (the logger version, last 4 characters of a str version) when a logger has one, then
            ``trainer.progress_bar_metrics`` (the values logged with ``prog_bar=True``).
        """
        items: dict[str, int | float | str] = {}
        version = _logger_version(trainer)
        if version is not None and version != "":
            items["v_num"] = version[-4:] if isinstance(version, str) else version
        metrics = dict(trainer.progress_bar_metrics)
        duplicates = sorted(items.keys() & metrics.keys())
        if duplicates:
            warnings.warn(
                f"The progress bar already shows {duplicates}; `self.log({duplicates[0]!r}, ..., prog_bar=True)`"
                " overwrites it. Rename the metric or override `get_metrics()`.",
                UserWarning,
                stacklevel=2,
            )
        return {**items, **metrics}


def _format_num(n: int | float | str) -> str:
    """Like Lightning: 3 significant digits, floats padded to 5 characters (0.5 -> "0.500", 1e-05 -> "1e-5")."""
    if isinstance(n, str):
        return n
    if isinstance(n, float) and not math.isfinite(n):
        return str(n)
    compact = f"{n:.3g}".replace("e+0", "e+").replace("e-0", "e-")
    text = compact if len(compact) < len(str(n)) else str(n)
    if isinstance(n, float) and "e" not in text:
        if "." not in text:
            text += "."
        text += "0" * (_PAD_SIZE - len(text))
    return text


def _postfix(metrics: dict[str, Any]) -> dict[str, str]:
    # One-element tensors are shown as numbers rather than as "tensor(0.5)".
    return {k: _format_num(v.item() if callable(getattr(v, "item", None)) else v) for k, v in metrics.items()}


def _eval_desc(desc: str, counts: Any, dataloader_idx: int) -> str:
    many = isinstance(counts, (list, tuple)) and len(counts) > 1
    return f"{desc} DataLoader {dataloader_idx}" if many else desc


class _Bar(_TqdmBase):
    # A monitor interval of 0 keeps tqdm from starting its TMonitor thread; the bars are refreshed explicitly.
    monitor_interval = 0


class TQDMProgressBar(ProgressBar):
    """The default progress bar, drawn with tqdm on global rank 0 only.

    Training shows one bar ("Epoch N", batches done of ``trainer.num_training_batches``, then
    :meth:`get_metrics`); validation, the sanity check, test and predict each show their own bar, closed when
    their loop ends.

    Args:
        refresh_rate: redraw every this many batches; 0 disables the bar.
        process_position: offset of the bars' lines, for several trainers sharing one terminal.
        leave: keep one finished bar per epoch on screen instead of reusing a single line.
        file: the stream to draw on; None means ``sys.stderr`` at the time a bar starts.

    Raises:
        MisconfigurationException: for an invalid argument (the message names it and the fix).
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
        *,
        file: IO[str] | None = None,
    ) -> None:
        super().__init__()
        for arg, value in (("refresh_rate", refresh_rate), ("process_position", process_position)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MisconfigurationException(
                    f"{arg}={value!r} must be an int >= 0; pass e.g. {arg}=1 (refresh_rate=0 hides the bar)."
                )
        if not isinstance(leave, bool):
            raise MisconfigurationException(f"leave={leave!r} must be True or False.")
        self._refresh_rate = refresh_rate
        self._process_position = process_position
        self._leave = leave
        self._file = file
        self._train_bar: _Bar | None = None
        self._eval_bar: _Bar | None = None
        self._eval_dataloader_idx: int | None = None

    @property
    def refresh_rate(self) -> int:
        """Redraw every this many batches."""
        return self._refresh_rate

    @property
    @override
    def is_enabled(self) -> bool:
        """Whether the bar may draw: enabled and ``refresh_rate > 0``."""
        return self._enabled and self._refresh_rate > 0

    @property
    def train_progress_bar(self) -> tqdm[Any] | None:
        """The running training bar, if any."""
        return self._train_bar

    def _new_bar(self, desc: str, total: int | None, position: int, leave: bool) -> _Bar:
        return _Bar(
            desc=desc,
            total=total,
            position=2 * self._process_position + position,
            leave=leave,
            file=self._file if self._file is not None else sys.stderr,
            dynamic_ncols=True,
            smoothing=0,
        )

    def _draw(self, bar: _Bar | None, n: int, postfix: dict[str, Any] | None = None) -> None:
        if bar is None or not (n % self._refresh_rate == 0 or n == bar.total):
            return
        bar.n = n
        if postfix is not None:
            bar.set_postfix(_postfix(postfix), refresh=False)
        bar.refresh()

    def _close_eval(self) -> None:
        if self._eval_bar is not None:
            self._eval_bar.close()
        self._eval_bar = None
        self._eval_dataloader_idx = None

    def _close_all(self) -> None:
        self._close_eval()
        if self._train_bar is not None:
            self._train_bar.close()
        self._train_bar = None

    def _start_eval(self, trainer: stepstone.Trainer, desc: str, counts: Any) -> None:
        if not self._shows(trainer):
            return
        self._close_eval()
        position = 0 if self._train_bar is None else 1
        # Only a stand-alone validate/test/predict bar stays on screen; under or before training it is transient.
        leave = position == 0 and desc != "Sanity Checking"
        self._eval_bar = self._new_bar(_eval_desc(desc, counts, 0), _total(counts, 0), position, leave)
        self._eval_dataloader_idx = 0

    def _eval_batch(self, desc: str, counts: Any, batch_idx: int | None, dataloader_idx: int) -> None:
        """Switch the eval bar to ``dataloader_idx`` when it changes; then draw ``batch_idx + 1`` if given."""
        bar = self._eval_bar
        if bar is None:
            return
        if dataloader_idx != self._eval_dataloader_idx:
            self._eval_dataloader_idx = dataloader_idx
            bar.set_description(_eval_desc(desc, counts, dataloader_idx), refresh=False)
            bar.reset(total=_total(counts, dataloader_idx))
        if batch_idx is not None:
            self._draw(bar, batch_idx + 1)

    def _val_kind(self, trainer: stepstone.Trainer) -> tuple[str, Any]:
        if trainer.sanity_checking:
            return "Sanity Checking", trainer.num_sanity_val_batches
        return "Validation", trainer.num_val_batches

    @override
    def on_train_epoch_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start (or, with ``leave=False``, reset) the training bar as ``Epoch {current_epoch}``."""
        if not self._shows(trainer):
            return
        desc, total = f"Epoch {trainer.current_epoch}", _total(trainer.num_training_batches)
        if self._train_bar is None or self._leave:
            self._train_bar = self._new_bar(desc, total, position=0, leave=True)
        else:
            self._train_bar.set_description(desc, refresh=False)
            self._train_bar.reset(total=total)

    @override
    def on_train_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Advance the training bar and refresh its metrics every ``refresh_rate`` batches."""
        if self._train_bar is not None:
            self._draw(self._train_bar, batch_idx + 1, self.get_metrics(trainer, pl_module))

    @override
    def on_train_epoch_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Show the end-of-epoch metrics; with ``leave=True`` close this epoch's bar."""
        bar = self._train_bar
        if bar is None:
            return
        bar.set_postfix(_postfix(self.get_metrics(trainer, pl_module)))
        if self._leave:
            bar.close()
            self._train_bar = None

    @override
    def on_train_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Close every bar."""
        self._close_all()

    @override
    def on_sanity_check_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the ``Sanity Checking`` bar."""
        self._start_eval(trainer, "Sanity Checking", trainer.num_sanity_val_batches)

    @override
    def on_sanity_check_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Close the ``Sanity Checking`` bar."""
        self._close_eval()

    @override
    def on_validation_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the ``Validation`` bar (the sanity check reuses the one it started)."""
        if not (trainer.sanity_checking and self._eval_bar is not None):
            self._start_eval(trainer, *self._val_kind(trainer))

    @override
    def on_validation_batch_start(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Size the bar for ``dataloader_idx`` when a new validation dataloader starts."""
        self._eval_batch(*self._val_kind(trainer), None, dataloader_idx)

    @override
    def on_validation_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Advance the validation bar."""
        self._eval_batch(*self._val_kind(trainer), batch_idx, dataloader_idx)

    @override
    def on_validation_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Close the validation bar and show the new validation metrics on the training bar."""
        self._close_eval()
        if self._train_bar is not None:
            self._train_bar.set_postfix(_postfix(self.get_metrics(trainer, pl_module)))

    @override
    def on_test_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the ``Testing`` bar."""
        self._start_eval(trainer, "Testing", trainer.num_test_batches)

    @override
    def on_test_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Advance the ``Testing`` bar."""
        self._eval_batch("Testing", trainer.num_test_batches, batch_idx, dataloader_idx)

    @override
    def on_test_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Close the ``Testing`` bar."""
        self._close_eval()

    @override
    def on_predict_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start the ``Predicting`` bar."""
        self._start_eval(trainer, "Predicting", trainer.num_predict_batches)

    @override
    def on_predict_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Advance the ``Predicting`` bar."""
        self._eval_batch("Predicting", trainer.num_predict_batches, batch_idx, dataloader_idx)

    @override
    def on_predict_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Close the ``Predicting`` bar."""
        self._close_eval()

    @override
    def on_exception(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, exception: BaseException
    ) -> None:
        """Close every bar so the traceback is not drawn over."""
        self._close_all()

    @override
    def teardown(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, stage: str) -> None:
        """Close any bar a loop left open."""
        self._close_all()
