"""TensorBoardLogger: metrics, hyperparameters and the model graph as TensorBoard event files.

``tensorboard`` is an optional extra, so it is imported when a logger is constructed, never at package import.
"""

from __future__ import annotations

import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from stepstone.core.hparams_yaml import save_hparams_to_yaml
from stepstone.errors import MisconfigurationException
from stepstone.loggers.csv_logs import (
    HPARAMS_FILE,
    _add_prefix,
    _check_layout,
    _check_prefix,
    _convert_params,
    _next_version,
    _version_dir,
)
from stepstone.loggers.log_files import is_dir, local_path, make_dirs
from stepstone.loggers.logger import Logger

__all__ = ["TensorBoardLogger"]

_MISSING_EXTRA = "TensorBoardLogger needs the 'tensorboard' package: pip install \"stepstone[tensorboard]\""


def _import_summary_writer() -> Any:
    """Return ``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        ModuleNotFoundError: naming the ``stepstone[tensorboard]`` extra when tensorboard cannot be imported.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        # torch raises a plain ImportError (not ModuleNotFoundError) when tensorboard is absent or too old.
        raise ModuleNotFoundError(_MISSING_EXTRA, name="tensorboard") from err
    return SummaryWriter


def _flatten(params: Mapping[str, Any], parent: str = "", sep: str = "/") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        full_key = f"{parent}{sep}{key}" if parent else str(key)
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, full_key, sep))
        else:
            flat[full_key] = value
    return flat


def _sanitize_hparam(value: Any) -> bool | int | float | str:
    """TensorBoard's hparams plugin accepts only bool, number and str values; everything else becomes text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if callable(getattr(value, "numel", None)) and value.numel() == 1:
        item = value.item()
        if isinstance(item, (bool, int, float)):
            return item
    return str(value)


class TensorBoardLogger(Logger):
    """Log to TensorBoard event files under ``save_dir/name/version_N`` (plus ``hparams.yaml``).

    The event writer (and its background thread) is started on first use and stopped by :meth:`finalize`.

    Args:
        save_dir: the base folder: a local path or an fsspec URL (``s3://bucket/logs``, ``memory://run``).
        name: the experiment folder under ``save_dir``; ``""`` or None puts versions directly in ``save_dir``.
        version: None picks the next free ``version_N``; an int N uses ``version_N``; a str is the folder name.
        log_graph: whether :meth:`log_graph` records the model graph (needs ``example_input_array``).
        default_hp_metric: log a placeholder ``hp_metric`` of -1 with the hyperparameters, so that the
            TensorBoard HPARAMS tab shows the run even when no metrics are passed to :meth:`log_hyperparams`.
        prefix: prepended to every metric name, joined with ``"-"``.
        sub_dir: an extra folder under the version folder (``~`` and ``$VARS`` are expanded).
        **kwargs: passed to ``torch.utils.tensorboard.SummaryWriter`` (e.g. ``max_queue``, ``flush_secs``).

    Raises:
        ModuleNotFoundError: when the ``tensorboard`` package is not installed.
        MisconfigurationException: for an invalid argument (the message names it and the fix).
    """

    LOGGER_JOIN_CHAR = "-"
    NAME_HPARAMS_FILE = HPARAMS_FILE

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._writer_cls = _import_summary_writer()
        self._save_dir = _check_layout(save_dir, name, version)
        self._name = name or ""
        self._version = version
        self._prefix = _check_prefix(prefix)
        for arg, value in (("log_graph", log_graph), ("default_hp_metric", default_hp_metric)):
            if not isinstance(value, bool):
                raise MisconfigurationException(f"{arg}={value!r} must be True or False.")
        if "log_dir" in kwargs:
            raise MisconfigurationException(
                "log_dir is set by TensorBoardLogger from save_dir/name/version; pass those instead of log_dir=."
            )
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: Any = None
        self.hparams: dict[str, Any] = {}
        self._hparams_saved = False

    @property
    @override
    def name(self) -> str:
        """The experiment folder name (``""`` when versions live directly in ``save_dir``)."""
        return self._name

    @property
    @override
    def version(self) -> int | str:
        """The version, fixed on first access: the next free ``version_N`` number when none was given."""
        if self._version is None:
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    @override
    def save_dir(self) -> str:
        """The base folder given as ``save_dir``."""
        return self._save_dir

    @property
    @override
    def root_dir(self) -> str:
        """``save_dir/name``: the folder holding all versions."""
        return os.path.join(self._save_dir, self._name) if self._name else self._save_dir

    @property
    def sub_dir(self) -> str | None:
        """The extra folder under the version folder, if any."""
        return self._sub_dir

    @property
    @override
    def log_dir(self) -> str:
        """``root_dir/version_N[/sub_dir]``: where the event files and ``hparams.yaml`` go."""
        log_dir = _version_dir(self.root_dir, self.version)
        if self._sub_dir is not None:
            log_dir = os.path.join(log_dir, self._sub_dir)
        return os.path.expanduser(os.path.expandvars(log_dir))

    @property
    def experiment(self) -> Any:
        """The ``SummaryWriter``, started on first use (after :meth:`finalize`, a new one is started)."""
        if self._experiment is None:
            make_dirs(self.log_dir)
            self._experiment = self._writer_cls(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @override
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Write scalars; a dict value is written with ``add_scalars`` (one chart, several lines).

        Args:
            metrics: metric name to a float, a one-element tensor or a dict of those.
            step: the global step of the values.

        Raises:
            ValueError: when a value is not a scalar or a dict of scalars.
        """
        for key, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            try:
                if isinstance(value, Mapping):
                    self.experiment.add_scalars(key, dict(value), step)
                else:
                    self.experiment.add_scalar(key, value, step)
            except Exception as err:
                raise ValueError(
                    f"Cannot log metric {key!r}={value!r} to TensorBoard; log a number, a one-element tensor or a"
                    " dict of those."
                ) from err

    @override
    def log_hyperparams(
        self,
        params: Mapping[str, Any] | Namespace | None,
        metrics: Mapping[str, Any] | float | None = None,
        step: int | None = None,
    ) -> None:
        """Record hyperparameters for the HPARAMS tab and for ``hparams.yaml``.

        Args:
            params: a dict, an AttributeDict or a Namespace; nested dicts are flattened with ``/``.
            metrics: metrics to show next to them; a bare number is logged as ``hp_metric``. When None and
                ``default_hp_metric`` is on, ``hp_metric=-1`` is logged.
            step: the step of those metrics (0 when None).

        Raises:
            TypeError: when ``params`` is another kind of object.
        """
        converted = _convert_params(params)
        self.hparams.update(converted)
        self._hparams_saved = False
        if metrics is None:
            metrics = {"hp_metric": -1} if self._default_hp_metric else {}
        elif not isinstance(metrics, Mapping):
            metrics = {"hp_metric": metrics}
        if not metrics:
            return
        self.log_metrics(metrics, 0 if step is None else step)
        from torch.utils.tensorboard.summary import hparams

        sanitized = {key: _sanitize_hparam(value) for key, value in _flatten(converted).items()}
        writer = self.experiment._get_file_writer()
        for summary in hparams(sanitized, dict(metrics)):
            writer.add_summary(summary, step)

    @override
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Trace ``model`` and write its graph, when the logger was built with ``log_graph=True``.

        Args:
            model: the module to trace.
            input_array: its example input (a tensor or a tuple of positional args); defaults to
                ``model.example_input_array``. When neither exists, a warning is issued and nothing is written.
        """
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            warnings.warn(
                "TensorBoardLogger(log_graph=True) cannot log the graph: set `model.example_input_array` or pass"
                " `input_array`.",
                UserWarning,
                stacklevel=2,
            )
            return
        with warnings.catch_warnings():
            # add_graph traces with torch.jit, which newer torch marks deprecated; nothing the user can act on.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning)
            self.experiment.add_graph(model, input_array)

    @override
    def save(self) -> None:
        """Start the writer if needed, flush pending events, write ``hparams.yaml`` if the hyperparameters changed.

        The Trainer saves every logger when a run starts, so (as in Lightning) the version folder, an event file
        and ``hparams.yaml`` (``{}`` when no hyperparameters were logged) exist from then on.
        """
        self.experiment.flush()
        self._save_hparams()

    def _save_hparams(self) -> None:
        if not self._hparams_saved and is_dir(self.log_dir):
            save_hparams_to_yaml(local_path(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)), self.hparams)
            self._hparams_saved = True

    @override
    def finalize(self, status: str) -> None:
        """Flush, close the event file and stop the writer thread; write ``hparams.yaml``.

        Args:
            status: ``"success"``, ``"failed"`` or ``"finished"``; everything is written whatever it is.
        """
        try:
            if self._experiment is not None:  # a writer never started (or already closed) is not started here
                self._experiment.flush()
            self._save_hparams()
        finally:
            if self._experiment is not None:
                self._experiment.close()
                self._experiment = None

    def __getstate__(self) -> dict[str, Any]:
        # A SummaryWriter holds a thread and an open file; a pickled copy (spawned worker) starts its own.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state
