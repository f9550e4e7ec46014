"""CSVLogger: metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml`` under ``save_dir/name/version_N``.

The folder-layout and hyperparameter helpers at the top of this module are shared with the TensorBoard logger,
which writes the same ``version_N`` folders and the same ``hparams.yaml``.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import IO, Any

from typing_extensions import override

from stepstone.core.hparams_yaml import save_hparams_to_yaml
from stepstone.errors import MisconfigurationException
from stepstone.loggers.log_files import (
    append_text,
    is_file,
    local_path,
    make_dirs,
    read_text,
    subfolders,
    write_whole,
)
from stepstone.loggers.logger import Logger

__all__ = ["CSVLogger", "ExperimentWriter"]

HPARAMS_FILE = "hparams.yaml"


# --- helpers shared by the file-based loggers ----------------------------------------------------------
def _check_layout(save_dir: str | os.PathLike[str], name: str | None, version: int | str | None) -> str:
    """Validate the ``save_dir``/``name``/``version`` trio of a file-based logger; return ``save_dir`` as str.

    ``save_dir`` may be a local folder or an fsspec URL.
    """
    path = os.fspath(save_dir)
    if not isinstance(path, str) or not path:
        raise MisconfigurationException(
            f"save_dir={save_dir!r} is not a folder path; pass e.g. save_dir='logs'."
        )
    if name is not None and not isinstance(name, str):
        raise MisconfigurationException(f"name={name!r} must be a str, '' or None (no name folder).")
    if isinstance(version, bool) or not isinstance(version, (int, str, type(None))):
        raise MisconfigurationException(
            f"version={version!r} must be None (next free version_N), an int N or a folder name str."
        )
    if isinstance(version, int) and version < 0:
        raise MisconfigurationException(
            f"version={version} is negative; pass N >= 0 or None for the next free one."
        )
    if isinstance(version, str) and (not version or os.sep in version):
        raise MisconfigurationException(
            f"version={version!r} must be a non-empty folder name without {os.sep!r}; pass e.g. version='run_a'."
        )
    return path


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise MisconfigurationException(f"prefix={prefix!r} must be a str; pass '' for no prefix.")
    return prefix


def _next_version(root_dir: str) -> int:
    """Return one more than the highest ``version_N`` folder in ``root_dir``, or 0 when there is none."""
    found = [
        int(name[len("version_") :])
        for name in subfolders(root_dir)
        if name.startswith("version_") and name[len("version_") :].isdigit()
    ]
    return max(found) + 1 if found else 0


def _version_dir(root_dir: str, version: int | str) -> str:
    return os.path.join(root_dir, version if isinstance(version, str) else f"version_{version}")


def _add_prefix(metrics: Mapping[str, Any], prefix: str, join_char: str) -> dict[str, Any]:
    if not prefix:
        return dict(metrics)
    return {f"{prefix}{join_char}{key}": value for key, value in metrics.items()}


def _convert_params(params: Mapping[str, Any] | Namespace | None) -> dict[str, Any]:
    """Turn ``hparams`` given as a dict, an AttributeDict or a Namespace into a plain dict.

    Raises:
        TypeError: for any other container.
    """
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(f"params={params!r} must be a dict, an AttributeDict or an argparse.Namespace.")


# --- the CSV logger ------------------------------------------------------------------------------------
class ExperimentWriter:
    """Buffers metric rows and writes them to ``metrics.csv``; writes ``hparams.yaml`` (``CSVLogger.experiment``).

    Columns are the sorted union of all metric names seen plus ``step``. When a row brings a new name, the
    whole file is rewritten with the wider header (atomically); otherwise rows are appended.

    Args:
        log_dir: the version folder; created on the first save or write, not here.
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = HPARAMS_FILE

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.metrics: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self._file_written = False
        if is_file(self.metrics_file_path):
            warnings.warn(
                f"Experiment logs directory {log_dir} already has a {self.NAME_METRICS_FILE}; it will be replaced"
                " when new metrics are saved. Pass a new `version` to keep it.",
                UserWarning,
                stacklevel=2,
            )

    def log_metrics(self, metrics_dict: Mapping[str, Any], step: int) -> None:
        """Buffer one row; tensors are converted with ``.item()``.

        Args:
            metrics_dict: metric name to value.
            step: stored in the ``step`` column.
        """
        row = {
            key: value.item() if callable(getattr(value, "item", None)) else value
            for key, value in metrics_dict.items()
        }
        row["step"] = step
        self.metrics.append(row)

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        """Merge ``params`` into the recorded hyperparameters and rewrite ``hparams.yaml`` now.

        Args:
            params: hyperparameter name to value.
        """
        self.hparams.update(params)
        make_dirs(self.log_dir)
        save_hparams_to_yaml(local_path(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)), self.hparams)

    def save(self) -> None:
        """Create the log folder; write the buffered rows to ``metrics.csv`` and empty the buffer."""
        make_dirs(self.log_dir)
        if not self.metrics:
            return
        if self._file_written and not is_file(self.metrics_file_path):
            # Deleted under us: start a fresh file rather than append rows without a header.
            self._file_written = False
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        if new_keys or not self._file_written:
            self._rewrite(sorted(set(self.metrics_keys) | new_keys))
        else:
            rows, keys = self.metrics, self.metrics_keys
            append_text(
                self.metrics_file_path, lambda handle: csv.DictWriter(handle, fieldnames=keys).writerows(rows)
            )
        self.metrics = []

    def _rewrite(self, fieldnames: list[str]) -> None:
        old_rows: list[dict[str, str]] = []
        if self._file_written:
            old_rows = list(csv.DictReader(io.StringIO(read_text(self.metrics_file_path))))

        def write(handle: IO[str]) -> None:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(old_rows)
            writer.writerows(self.metrics)

        write_whole(self.metrics_file_path, write)
        self.metrics_keys = fieldnames
        self._file_written = True


class CSVLogger(Logger):
    """Log metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml`` in a local folder or an fsspec URL.

    Files go to ``save_dir/name/version_N``; that folder is created by the first save (the Trainer saves each
    logger when a run starts) or write.

    Args:
        save_dir: the base folder: a local path or an fsspec URL (``s3://bucket/logs``, ``memory://run``).
        name: the experiment folder under ``save_dir``; ``""`` or None puts versions directly in ``save_dir``.
        version: None picks the next free ``version_N``; an int N uses ``version_N``; a str is the folder name.
        prefix: prepended to every metric name, joined with ``"-"``.
        flush_logs_every_n_steps: buffered rows are written once the logged step has advanced this much.

    Raises:
        MisconfigurationException: for an invalid argument (the message names it and the fix).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        self._save_dir = _check_layout(save_dir, name, version)
        self._name = name or ""
        self._version = version
        self._prefix = _check_prefix(prefix)
        if isinstance(flush_logs_every_n_steps, bool) or not isinstance(flush_logs_every_n_steps, int):
            raise MisconfigurationException(
                f"flush_logs_every_n_steps={flush_logs_every_n_steps!r} must be an int >= 1, e.g. 100."
            )
        if flush_logs_every_n_steps < 1:
            raise MisconfigurationException(
                f"flush_logs_every_n_steps={flush_logs_every_n_steps} must be >= 1; pass 1 to write every step."
            )
        self._flush_every = flush_logs_every_n_steps
        self._last_flush_step = -1
        self._last_step = -1
        self._rows_logged = 0
        self._experiment: ExperimentWriter | None = None

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
    @override
    def log_dir(self) -> str:
        """``root_dir/version_N`` (or ``root_dir/<version>`` for a str version): where the files go."""
        return _version_dir(self.root_dir, self.version)

    @property
    def experiment(self) -> ExperimentWriter:
        """The :class:`ExperimentWriter` that owns the files (created on first use)."""
        if self._experiment is None:
            self._experiment = ExperimentWriter(self.log_dir)
        return self._experiment

    @override
    def log_hyperparams(
        self, params: Mapping[str, Any] | Namespace | None, *args: Any, **kwargs: Any
    ) -> None:
        """Record hyperparameters and write ``hparams.yaml`` right away.

        Args:
            params: a dict, an AttributeDict or a Namespace; tensors become floats or lists in the file.

        Raises:
            TypeError: when ``params`` is another kind of object.
        """
        self.experiment.log_hparams(_convert_params(params))

    @override
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer one row of metrics; written on flush, :meth:`save` or :meth:`finalize`.

        Args:
            metrics: metric name to value (floats or one-element tensors).
            step: the ``step`` column; None uses the number of rows logged so far.
        """
        if step is None:
            step = self._rows_logged
        self._rows_logged += 1
        self._last_step = step
        self.experiment.log_metrics(_add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR), step)
        # abs(): a new fit/test may restart the step count below the last flushed one.
        if abs(step - self._last_flush_step) >= self._flush_every:
            self.save()

    @override
    def save(self) -> None:
        """Create the version folder if needed and write buffered metric rows to ``metrics.csv``.

        The Trainer saves every logger when a run starts, so (as in Lightning) the version folder exists from
        then on, even before any metric: the next logger in the same ``save_dir`` takes the next version.
        """
        self.experiment.save()
        self._last_flush_step = self._last_step

    @override
    def finalize(self, status: str) -> None:
        """Write everything still buffered.

        Args:
            status: ``"success"``, ``"failed"`` or ``"finished"``; the files are written whatever it is.
        """
        if self._experiment is not None:  # a logger never used (e.g. a spawning parent) creates nothing
            self.save()

    def __getstate__(self) -> dict[str, Any]:
        # The writer holds buffered rows tied to this process; a pickled copy (spawned worker) starts its own.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state
