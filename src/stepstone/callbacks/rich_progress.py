"""RichProgressBar: Lightning's progress bar drawn with ``rich`` (optional extra: ``pip install stepstone[rich]``).

This module imports rich only when a bar is created, so importing it (and stepstone) works without rich.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from typing_extensions import override

import stepstone
from stepstone.callbacks.progress_bar import ProgressBar
from stepstone.callbacks.rich_theme import RichProgressBarTheme
from stepstone.errors import MisconfigurationException

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, Task, TaskID

    from stepstone.callbacks.rich_columns import MetricsTextColumn

__all__ = ["RichProgressBar", "RichProgressBarTheme"]

_MISSING_RICH = (
    "RichProgressBar needs the optional extra `rich`, which is not installed: run `pip install stepstone[rich]` "
    "(or `pip install rich`), or use the default TQDMProgressBar."
)


def _rich_total(count: int | float | None) -> float | None:
    """A rich task total: None (a pulsing bar, ``--``) for an unknown or infinite count."""
    return None if count is None or math.isinf(count) else float(count)


class RichProgressBar(ProgressBar):
    """A progress bar drawn with `rich <https://github.com/Textualize/rich>`_ (Lightning's ``RichProgressBar``).

    Shows description, bar, ``done/total`` batches, elapsed and remaining time, speed and, on the training bar,
    the :meth:`~stepstone.callbacks.ProgressBar.get_metrics` values. Draws on global rank 0 only.

    Args:
        refresh_rate: redraws per second at most; 0 disables the bar.
        leave: keep each finished epoch's bar on screen.
        theme: the styles; default :class:`RichProgressBarTheme`.
        console_kwargs: arguments of a ``rich.console.Console`` of its own (e.g. ``{"record": True}``); None
            draws on rich's global console.

    Raises:
        ModuleNotFoundError: rich is not installed (the message names the extra to install).
        MisconfigurationException: an invalid argument.
    """

    def __init__(
        self,
        refresh_rate: int = 100,
        leave: bool = False,
        theme: RichProgressBarTheme | None = None,
        console_kwargs: dict[str, Any] | None = None,
    ) -> None:
        try:
            import rich  # noqa: F401
        except ImportError as err:
            raise ModuleNotFoundError(_MISSING_RICH) from err
        super().__init__()
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise MisconfigurationException(
                f"RichProgressBar(refresh_rate={refresh_rate!r}) must be an int >= 0 (redraws per second; 0 hides it)."
            )
        if not isinstance(leave, bool):
            raise MisconfigurationException(f"RichProgressBar(leave={leave!r}) must be True or False.")
        if console_kwargs is not None and not isinstance(console_kwargs, dict):
            raise MisconfigurationException(
                f"RichProgressBar(console_kwargs={console_kwargs!r}) must be a dict of rich Console arguments or None."
            )
        self._refresh_rate = refresh_rate
        self._leave = leave
        self.theme = theme if theme is not None else RichProgressBarTheme()
        self._console_kwargs = dict(console_kwargs or {})
        self._console: Console | None = None
        self.progress: Progress | None = None
        self._metric_component: MetricsTextColumn | None = None
        self._progress_stopped = False
        self._last_refresh = 0.0
        self._eval_dataloader_idx: int | None = None
        self.train_progress_bar_id: TaskID | None = None
        self.val_sanity_progress_bar_id: TaskID | None = None
        self.val_progress_bar_id: TaskID | None = None
        self.test_progress_bar_id: TaskID | None = None
        self.predict_progress_bar_id: TaskID | None = None

    # --- what it shows ------------------------------------------------------------------------------
    @property
    def refresh_rate(self) -> int:
        """Redraws per second at most."""
        return self._refresh_rate

    @property
    @override
    def is_enabled(self) -> bool:
        """Whether the bar may draw: enabled and ``refresh_rate > 0``."""
        return self._enabled and self._refresh_rate > 0

    @property
    def console(self) -> Console | None:
        """The rich console drawn on (None before the first bar)."""
        return self._console

    @property
    def train_progress_bar(self) -> Task:
        """The rich task of the training bar."""
        return self._task(self.train_progress_bar_id)

    @property
    def val_sanity_check_bar(self) -> Task:
        """The rich task of the sanity-check bar."""
        return self._task(self.val_sanity_progress_bar_id)

    @property
    def val_progress_bar(self) -> Task:
        """The rich task of the validation bar."""
        return self._task(self.val_progress_bar_id)

    @property
    def test_progress_bar(self) -> Task:
        """The rich task of the test bar."""
        return self._task(self.test_progress_bar_id)

    def _task(self, task_id: TaskID | None) -> Task:
        if self.progress is None or task_id is None:
            raise RuntimeError("This bar has not been started; it exists while its loop runs.")
        return self.progress._tasks[task_id]

    def _shows_metrics(self, task_id: Any) -> bool:
        trainer = self._trainer
        return (
            trainer is not None
            and trainer.state.fn == "fit"
            and not trainer.sanity_checking
            and task_id == self.train_progress_bar_id
        )

    def _train_description(self, current_epoch: int) -> str:
        # Padded to "Validation"'s length so the bars do not jump when they alternate (Lightning's layout).
        description = f"Epoch {current_epoch}/{self.trainer.max_epochs - 1}"
        return f"{description:{len('Validation')}}"

    # --- drawing ------------------------------------------------------------------------------------
    def _init_progress(self, trainer: stepstone.Trainer) -> None:
        self._trainer = trainer
        if not self._shows(trainer) or (self.progress is not None and not self._progress_stopped):
            return
        from rich import get_console
        from rich.console import Console
        from rich.progress import Progress

        from stepstone.callbacks.rich_columns import MetricsTextColumn, columns

        self._reset_ids()
        if self._console is None or not self._console_kwargs:  # its own console lives as long as the bar
            self._console = Console(**self._console_kwargs) if self._console_kwargs else get_console()
        theme = self.theme
        self._metric_component = MetricsTextColumn(
            self._shows_metrics, theme.metrics, theme.metrics_text_delimiter, theme.metrics_format
        )
        # No auto refresh: rich would start a thread; the hooks redraw, at most refresh_rate times a second.
        self.progress = Progress(
            *columns(theme), self._metric_component, auto_refresh=False, console=self._console
        )
        self.progress.start()
        self._progress_stopped = False

    def refresh(self, hard: bool = False) -> None:
        """Redraw now if ``hard`` or if the last redraw is at least ``1 / refresh_rate`` seconds old."""
        now = time.monotonic()
        if self.progress is not None and (hard or now - self._last_refresh >= 1 / max(self._refresh_rate, 1)):
            self.progress.refresh()
            self._last_refresh = now

    def _add_task(self, total: int | float | None, description: str, visible: bool = True) -> TaskID:
        assert self.progress is not None
        style = self.theme.description
        return self.progress.add_task(
            f"[{style}]{description}" if style else description, total=_rich_total(total), visible=visible
        )

    def _update(self, task_id: TaskID | None, current: int, visible: bool = True) -> None:
        if self.progress is not None and self.is_enabled and task_id is not None:
            self.progress.update(task_id, completed=current, visible=visible)
            self.refresh()

    def _hide(self, task_id: TaskID | None) -> None:
        if self.progress is not None and task_id is not None:
            self.progress.update(task_id, advance=0, visible=False)

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.refresh()
            self.progress.stop()
            self._progress_stopped = True

    def _reset_ids(self) -> None:
        self.train_progress_bar_id = self.val_sanity_progress_bar_id = self.val_progress_bar_id = None
        self.test_progress_bar_id = self.predict_progress_bar_id = None

    def _update_metrics(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        if self.is_enabled and self._metric_component is not None:
            self._metric_component.update(self.get_metrics(trainer, pl_module))

    def _dataloader_changed(self, dataloader_idx: int) -> bool:
        changed = self._eval_dataloader_idx != dataloader_idx
        self._eval_dataloader_idx = dataloader_idx
        return changed

    def _eval_total(self, counts: list[int | float], dataloader_idx: int) -> int | float | None:
        return counts[dataloader_idx] if dataloader_idx < len(counts) else None

    def _next_eval_bar(
        self, task: TaskID | None, counts: Any, dataloader_idx: int, label: str, visible: bool = True
    ) -> TaskID | None:
        """The stage's bar: a fresh one (the old one hidden) when a new dataloader starts, else ``task``."""
        if self.is_disabled or self.progress is None or not self._dataloader_changed(dataloader_idx):
            return task
        self._hide(task)
        fresh = self._add_task(self._eval_total(counts, dataloader_idx), label, visible)
        self.refresh()
        return fresh

    # --- hooks --------------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start drawing."""
        self._init_progress(trainer)

    @override
    def on_predict_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start drawing."""
        self._init_progress(trainer)

    @override
    def on_test_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start drawing."""
        self._init_progress(trainer)

    @override
    def on_validation_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start drawing."""
        self._init_progress(trainer)

    @override
    def on_sanity_check_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start drawing."""
        self._init_progress(trainer)

    @override
    def on_sanity_check_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Hide the sanity-check bar."""
        self._hide(self.val_sanity_progress_bar_id)
        self._eval_dataloader_idx = None
        self.refresh()

    @override
    def on_train_epoch_start(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Start (or reset) the ``Epoch N/M`` bar; with ``leave=True`` the previous epoch's bar stays on screen."""
        if self.is_disabled:
            return
        if self.train_progress_bar_id is not None and self._leave:
            self._stop_progress()
            self._init_progress(trainer)
        description = self._train_description(trainer.current_epoch)
        if self.progress is not None:
            if self.train_progress_bar_id is None:
                self.train_progress_bar_id = self._add_task(self.total_train_batches, description)
            else:
                total = _rich_total(self.total_train_batches)
                self.progress.reset(
                    self.train_progress_bar_id, total=total, description=description, visible=True
                )
        self.refresh(hard=True)

    @override
    def on_train_batch_end(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Advance the training bar and take the new metrics."""
        if self.is_enabled and self.progress is not None and self.train_progress_bar_id is None:
            # Resumed in the middle of an epoch: on_train_epoch_start did not run.
            self.train_progress_bar_id = self._add_task(
                self.total_train_batches, self._train_description(trainer.current_epoch)
            )
        self._update_metrics(trainer, pl_module)
        self._update(self.train_progress_bar_id, batch_idx + 1)

    @override
    def on_train_epoch_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Show the end-of-epoch metrics."""
        self._update_metrics(trainer, pl_module)
        self.refresh(hard=True)

    @override
    def on_validation_batch_start(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Start a bar for each validation (or sanity-check) dataloader."""
        if trainer.sanity_checking:
            self.val_sanity_progress_bar_id = self._next_eval_bar(
                self.val_sanity_progress_bar_id,
                trainer.num_sanity_val_batches,
                dataloader_idx,
                "Sanity Checking",
                visible=False,
            )
        else:
            self.val_progress_bar_id = self._next_eval_bar(
                self.val_progress_bar_id, trainer.num_val_batches, dataloader_idx, "Validation", visible=False
            )

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
        """Advance the validation (or sanity-check) bar."""
        if not self.is_disabled:
            task = self.val_sanity_progress_bar_id if trainer.sanity_checking else self.val_progress_bar_id
            self._update(task, batch_idx + 1)

    @override
    def on_validation_epoch_end(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule
    ) -> None:
        """Hide the validation bar during fit."""
        if self.is_enabled and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._hide(self.val_progress_bar_id)
            self.refresh()

    @override
    def on_validation_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Take the new validation metrics (during fit)."""
        if trainer.state.fn == "fit":
            self._update_metrics(trainer, pl_module)
        self._eval_dataloader_idx = None

    @override
    def on_test_batch_start(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Start a ``Testing`` bar for each test dataloader."""
        self.test_progress_bar_id = self._next_eval_bar(
            self.test_progress_bar_id, trainer.num_test_batches, dataloader_idx, "Testing"
        )

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
        self._update(self.test_progress_bar_id, batch_idx + 1)

    @override
    def on_test_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Forget the test dataloader seen last."""
        self._eval_dataloader_idx = None

    @override
    def on_predict_batch_start(
        self,
        trainer: stepstone.Trainer,
        pl_module: stepstone.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Start a ``Predicting`` bar for each predict dataloader."""
        self.predict_progress_bar_id = self._next_eval_bar(
            self.predict_progress_bar_id, trainer.num_predict_batches, dataloader_idx, "Predicting"
        )

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
        self._update(self.predict_progress_bar_id, batch_idx + 1)

    @override
    def on_predict_end(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule) -> None:
        """Forget the predict dataloader seen last."""
        self._eval_dataloader_idx = None

    @override
    def teardown(self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, stage: str) -> None:
        """Stop drawing (the final state of the bars stays on screen)."""
        self._stop_progress()

    @override
    def on_exception(
        self, trainer: stepstone.Trainer, pl_module: stepstone.LightningModule, exception: BaseException
    ) -> None:
        """Stop drawing so the traceback is not drawn over."""
        self._stop_progress()

    def __getstate__(self) -> dict[str, Any]:
        # The console and the live display hold locks, which cannot be pickled (e.g. for ddp_spawn).
        return {**self.__dict__, "progress": None, "_console": None, "_metric_component": None}
