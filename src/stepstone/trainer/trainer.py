"""The Trainer: Lightning's arguments and attributes; it wires the loops, callbacks, loggers and checkpoints."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import torch
from torch.optim import Optimizer

from stepstone.callbacks.callback import Callback
from stepstone.callbacks.early_stopping import EarlyStopping
from stepstone.callbacks.model_checkpoint import ModelCheckpoint
from stepstone.callbacks.progress_bar import ProgressBar
from stepstone.checkpoint import SaveHandle
from stepstone.core.datamodule import LightningDataModule
from stepstone.core.module import LightningModule
from stepstone.core.optimizers import LightningOptimizer, SchedulerConfig
from stepstone.errors import MisconfigurationException
from stepstone.loggers.csv_logs import CSVLogger
from stepstone.loggers.logger import Logger
from stepstone.loggers.tensorboard import TensorBoardLogger
from stepstone.loops.fit import FitLoop
from stepstone.profilers import Profiler
from stepstone.strategies import collectives
from stepstone.strategies.ddp import DDPStrategy
from stepstone.strategies.launcher import ScriptLauncher
from stepstone.trainer import arguments as args
from stepstone.trainer.checkpoint_port import CheckpointPort
from stepstone.trainer.defaults import resolve_callbacks, resolve_loggers
from stepstone.trainer.device import Placement, resolve_placement
from stepstone.trainer.distributed import resolve_distributed, wants_ddp
from stepstone.trainer.hooks import HookRunner, is_overridden
from stepstone.trainer.max_time import add_max_time_timer
from stepstone.trainer.metrics import MetricsHub
from stepstone.trainer.run import Runner
from stepstone.trainer.signals import DEFAULT_PREEMPTION_SIGNALS, PreemptionHandler, resolve_signals
from stepstone.trainer.spawning import run_spawned
from stepstone.trainer.state import RunningStage, TrainerFn, TrainerState

__all__ = ["Trainer"]


class Trainer:
    """Runs training, validation, testing and prediction of a :class:`LightningModule` (Lightning's Trainer).

    Every argument keeps Lightning 2.x's name, default and meaning; invalid values raise
    :class:`MisconfigurationException` here, at construction, naming the argument, the value and the fix.

    Args:
        accelerator: ``"auto"``, ``"cpu"``, ``"gpu"``/``"cuda"`` or ``"mps"``.
        strategy: ``"auto"`` (single device, or DDP when ``devices``/``num_nodes`` ask for several processes),
            ``"ddp"``, or a :class:`~stepstone.strategies.DDPStrategy` (e.g. ``DDPStrategy(timeout=timedelta(
            minutes=5))`` bounds every collective). The processes come from ``torchrun``/``srun``, or, from a plain
            ``python train.py``, the first run re-runs the script for the other local ranks. ``"ddp_spawn"``
            runs each call on ``devices`` new processes and brings rank 0's results back to this one.
        devices: ``"auto"``, ``1`` or ``[gpu_index]``; with DDP, processes per node.
        num_nodes: nodes (DDP).
        precision: ``"32-true"`` (default), ``"bf16-mixed"`` or ``"16-mixed"`` (CUDA).
        logger: True/None (a CSVLogger under ``default_root_dir/lightning_logs``), False, a logger (any object
            with Lightning's Logger methods) or an iterable of them.
        callbacks: callbacks to run; checkpoint callbacks (ModelCheckpoint, OnExceptionCheckpoint) run last.
        fast_dev_run: run 1 (or N) batch(es) of each loop, without loggers or checkpoints, to find bugs fast.
        max_epochs: stop after this many epochs; default 1000 when ``max_steps`` is unset, -1 for no limit.
        min_epochs: train at least this many epochs even if ``should_stop`` is set.
        max_steps: stop after this many optimizer steps (-1: no limit).
        min_steps: train at least this many optimizer steps.
        max_time: stop after this much training time (``timedelta``, dict, or ``"DD:HH:MM:SS"``); adds a
            ``Timer`` callback (Lightning's), whose elapsed time a resumed run counts on from.
        limit_train_batches: batches per training epoch (int) or fraction of them (float).
        limit_val_batches: same for validation (0 disables validation).
        limit_test_batches: same for test.
        limit_predict_batches: same for predict.
        val_check_interval: validate every N training batches (int) or fraction of an epoch (float).
        check_val_every_n_epoch: validate every N epochs (None: count ``val_check_interval`` across epochs).
        num_sanity_val_steps: validation batches run before training to catch bugs (-1: all; default 2).
        log_every_n_steps: how often per-step values are sent to loggers (default 50).
        enable_checkpointing: add a default ModelCheckpoint when no checkpoint callback is given (default True).
        enable_progress_bar: show a progress bar (default True).
        enable_model_summary: add a :class:`~stepstone.callbacks.ModelSummary` (the layer table printed at fit
            start) when the callbacks hold none (default True).
        accumulate_grad_batches: optimizer step every N batches, loss divided by N.
        gradient_clip_val: clip gradients at this value before each optimizer step.
        gradient_clip_algorithm: ``"norm"`` (default) or ``"value"``.
        deterministic: ``torch.use_deterministic_algorithms`` (True, False or ``"warn"``).
        benchmark: ``torch.backends.cudnn.benchmark``.
        inference_mode: evaluate under ``torch.inference_mode`` (else ``no_grad``).
        overfit_batches: train (and validate) on only this many batches (int) or fraction (float) of each epoch,
            the same ones every epoch: shuffling is turned off, with a warning (0: off).
        reload_dataloaders_every_n_epochs: request the train/val dataloaders again every N epochs (0: never).
        use_distributed_sampler: under DDP, rebuild the dataloaders with a ``DistributedSampler`` (default True).
        detect_anomaly: run training under ``torch.autograd.set_detect_anomaly`` (slow; for debugging).
        barebones: switch off everything that costs speed (checkpointing, loggers, ``self.log``, progress bar,
            model summary, sanity check); asking for one of them as well is an error.
        sync_batchnorm: under DDP, turn BatchNorm layers into ``torch.nn.SyncBatchNorm`` before training.
        profiler: None, ``"simple"`` or a :class:`~stepstone.profilers.Profiler`: times every hook and step
            and reports the table when fit/validate/test/predict ends.
        enable_autolog_hparams: send the module's/datamodule's hyper-parameters to the loggers at start.
        default_root_dir: where logs and checkpoints go by default (default: the working directory).
        plugins: ``AsyncCheckpointIO()`` (or a list holding it) makes ModelCheckpoint saves asynchronous (see
            ``stepstone.plugins``); no other plugin is supported.
        preemption_signals: (stepstone) signals that mean "preempted" while ``fit`` runs (default SIGTERM and
            SIGUSR1): the current optimizer step is finished, ``last-preempted.ckpt`` is written into the
            ModelCheckpoint's dirpath, and ``fit`` raises :class:`~stepstone.trainer.signals.Preempted`
            (``SystemExit`` with code 75). ``None`` or ``()`` leaves signals alone.

    Raises:
        MisconfigurationException: any invalid argument.
        RuntimeError: two stateful callbacks share a ``state_key`` (Lightning's type and check).
    """

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: str | DDPStrategy = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        logger: Logger | Iterable[Logger] | bool | None = None,
        callbacks: list[Callback] | Callback | None = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: str | timedelta | dict[str, int] | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        overfit_batches: int | float = 0.0,
        reload_dataloaders_every_n_epochs: int = 0,
        use_distributed_sampler: bool = True,
        detect_anomaly: bool = False,
        barebones: bool = False,
        sync_batchnorm: bool = False,
        profiler: Profiler | str | None = None,
        enable_autolog_hparams: bool = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        plugins: Any = None,
        preemption_signals: Iterable[int | str] | None = DEFAULT_PREEMPTION_SIGNALS,
    ) -> None:
        args.check_int("num_nodes", num_nodes, 1)
        self.barebones = args.check_bool("barebones", barebones)
        if barebones:  # Lightning's: every feature that costs speed is off, and asking for one is an error
            args.check_barebones(
                enable_checkpointing=enable_checkpointing, logger=logger, enable_progress_bar=enable_progress_bar,
                log_every_n_steps=log_every_n_steps, enable_model_summary=enable_model_summary,
                num_sanity_val_steps=num_sanity_val_steps, fast_dev_run=fast_dev_run,
                detect_anomaly=detect_anomaly, profiler=profiler,
            )  # fmt: skip
            enable_checkpointing = logger = enable_progress_bar = enable_model_summary = fast_dev_run = False
            log_every_n_steps = num_sanity_val_steps = 0
        self.overfit_batches = args.resolve_overfit_batches(overfit_batches)
        self.reload_dataloaders_every_n_epochs = int(
            args.check_int("reload_dataloaders_every_n_epochs", reload_dataloaders_every_n_epochs, 0) or 0
        )
        self._use_distributed_sampler = args.check_bool("use_distributed_sampler", use_distributed_sampler)
        self._sync_batchnorm = args.check_bool("sync_batchnorm", sync_batchnorm)
        self._detect_anomaly = args.check_bool("detect_anomaly", detect_anomaly)
        self.profiler = args.resolve_profiler(profiler)
        self.enable_autolog_hparams = args.check_bool("enable_autolog_hparams", enable_autolog_hparams)
        # DDP (torchrun/SLURM-started processes, or strategy="ddp" on one) or a single device; see distributed.py.
        self._strategy: DDPStrategy | None = None
        self._launcher: ScriptLauncher | None = None  # set when this process starts the other ranks
        self._spawn: int | None = None  # ddp_spawn: processes each entry point runs on (trainer/spawning.py)
        self._placement: Placement
        if wants_ddp(strategy, devices, num_nodes):
            self._strategy, self._placement, self._launcher, self._spawn = resolve_distributed(
                strategy, accelerator, devices, num_nodes, precision
            )
        else:
            self._placement = resolve_placement(accelerator, devices, strategy, precision)
        self._async_checkpointing = args.resolve_plugins(plugins)
        self.fast_dev_run = args.resolve_fast_dev_run(fast_dev_run)
        max_steps_ = args.check_int("max_steps", max_steps, -1)
        assert max_steps_ is not None
        self._max_time = args.resolve_max_time(max_time)
        max_epochs_ = args.resolve_max_epochs(max_epochs, max_steps_, self._max_time)
        min_steps_ = args.check_int("min_steps", min_steps, 0, allow_none=True) or 0
        # Lightning: with min_steps and no min_epochs, at least one epoch (so should_stop in on_fit_start is re-checked).
        min_epochs_ = args.check_int("min_epochs", min_epochs, 0, allow_none=True)
        min_epochs_ = (1 if min_steps is not None else 0) if min_epochs_ is None else min_epochs_
        self.limit_train_batches = args.check_limit("limit_train_batches", limit_train_batches)
        self.limit_val_batches = args.check_limit("limit_val_batches", limit_val_batches)
        self.limit_test_batches = args.check_limit("limit_test_batches", limit_test_batches)
        self.limit_predict_batches = args.check_limit("limit_predict_batches", limit_predict_batches)
        if self.overfit_batches > 0:  # Lightning: the same limit for training and validation, theirs ignored
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches
        self.val_check_interval = args.check_val_check_interval(val_check_interval)
        self.check_val_every_n_epoch = args.check_int(
            "check_val_every_n_epoch", check_val_every_n_epoch, 1, allow_none=True
        )
        if (
            check_val_every_n_epoch is None
            and isinstance(self.val_check_interval, float)
            and val_check_interval is not None
        ):
            raise MisconfigurationException(
                f"Trainer(val_check_interval={val_check_interval!r}, check_val_every_n_epoch=None) is invalid: "
                "without epochs to count in, val_check_interval must be an int number of training batches."
            )
        sanity = args.check_int(
            "num_sanity_val_steps", 2 if num_sanity_val_steps is None else num_sanity_val_steps, -1
        )
        self.num_sanity_val_steps: int | float = math.inf if sanity == -1 else int(sanity or 0)
        every = args.check_int("log_every_n_steps", 50 if log_every_n_steps is None else log_every_n_steps, 0)
        self.log_every_n_steps: int = int(every or 0)
        self.accumulate_grad_batches = int(
            args.check_int("accumulate_grad_batches", accumulate_grad_batches, 1) or 1
        )
        self.gradient_clip_val, self.gradient_clip_algorithm = args.check_clipping(
            gradient_clip_val, gradient_clip_algorithm
        )
        self.inference_mode = bool(inference_mode)
        if self.fast_dev_run:
            n = self.fast_dev_run
            if not self.overfit_batches:
                self.limit_train_batches = self.limit_val_batches = n
            self.limit_test_batches = self.limit_predict_batches = n
            max_steps_, max_epochs_, self.num_sanity_val_steps = n, 1, 0
            self.val_check_interval, self.check_val_every_n_epoch = 1.0, 1
        self._configure_determinism(deterministic, benchmark)
        self._default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        self.enable_model_summary = True if enable_model_summary is None else bool(enable_model_summary)
        self.loggers = resolve_loggers(logger, self._default_root_dir, bool(self.fast_dev_run))
        self.callbacks = resolve_callbacks(
            callbacks, enable_checkpointing, enable_progress_bar, self.enable_model_summary
        )
        self.callbacks = add_max_time_timer(self.callbacks, self._max_time)  # Lightning's max_time is a Timer
        self.fit_loop = FitLoop(self, max_epochs_, min_epochs_, max_steps_, min_steps_)
        self.state = TrainerState()
        self.should_stop = False
        self.optimizers: list[Optimizer] = []
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.datamodule: LightningDataModule | None = None
        self.ckpt_path: str | None = None
        self.num_training_batches: int | float = math.inf
        self.num_val_batches: list[int | float] = []
        self.num_sanity_val_batches: list[int | float] = []
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        self.val_check_batch: int | float = math.inf
        self._model: LightningModule | None = None
        self._hooks = HookRunner(self)
        self._preemption = PreemptionHandler(resolve_signals(preemption_signals))
        # sync_dist=True values are reduced across ranks (a no-op on one process).
        self._metrics = MetricsHub(self, collectives.reduce if self._strategy is not None else None)
        self._runner = Runner(self)
        self.checkpoint_port = CheckpointPort(self)  # every checkpoint save and removal goes through it
        self._evaluating = False
        self._validation_has_run = False
        self._resume_requested = False
        self._train_loader: Iterable[Any] | None = None
        self._val_loaders: list[Iterable[Any]] | None = None
        self._val_limit_error: MisconfigurationException | None = None  # raised when validation first runs
        self._lightning_optimizer_cache: list[LightningOptimizer] = []

    def _configure_determinism(self, deterministic: bool | str | None, benchmark: bool | None) -> None:
        if deterministic not in (None, True, False, "warn"):
            raise MisconfigurationException(
                f"Trainer(deterministic={deterministic!r}) is invalid; pass True, False or 'warn'."
            )
        if deterministic is not None:
            torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
            if deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if benchmark is not None:
            torch.backends.cudnn.benchmark = bool(benchmark)
        self.deterministic = deterministic

    # --- entry points -------------------------------------------------------------------------------
    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train ``model`` (optionally resuming from ``ckpt_path``).

        Args:
            model: the LightningModule.
            train_dataloaders: a dataloader (or a LightningDataModule); default: the datamodule's or model's.
            val_dataloaders: a dataloader or a list of them.
            datamodule: a LightningDataModule providing the dataloaders.
            ckpt_path: a checkpoint file to resume from, or ``"last"`` / ``"best"``.

        Raises:
            MisconfigurationException: missing training data or methods, or inconsistent arguments.
            CheckpointNotFoundError: ``ckpt_path`` does not exist.
        """
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise MisconfigurationException(
                "fit() received both dataloaders and a datamodule; pass either train_dataloaders/val_dataloaders or "
                "datamodule, not both."
            )
        if self._spawn is not None:
            run_spawned(self, "fit", (model, train_dataloaders, val_dataloaders, datamodule, ckpt_path), {})
            return
        self._runner.run(TrainerFn.FITTING, model, datamodule, ckpt_path, train_dataloaders, val_dataloaders)

    def validate(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
    ) -> list[dict[str, float]]:
        """Run one validation epoch and return the logged metrics of each dataloader.

        Args:
            model: the module (default: the one from the previous call).
            dataloaders: a dataloader, a list of them, or a LightningDataModule.
            ckpt_path: weights to evaluate: a path, ``"best"`` or ``"last"``.
            verbose: print the results.
            datamodule: a LightningDataModule providing ``val_dataloader``.

        Returns:
            One dict of metric name to value per dataloader.
        """
        if self._spawn is not None:
            results: list[dict[str, float]] = run_spawned(
                self, "validate", (model, dataloaders, ckpt_path, verbose, datamodule), {}
            )
            return results
        return self._runner.evaluate(TrainerFn.VALIDATING, model, dataloaders, ckpt_path, verbose, datamodule)

    def test(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
    ) -> list[dict[str, float]]:
        """Run one test epoch and return the logged metrics of each dataloader (see :meth:`validate`)."""
        if self._spawn is not None:
            results: list[dict[str, float]] = run_spawned(
                self, "test", (model, dataloaders, ckpt_path, verbose, datamodule), {}
            )
            return results
        return self._runner.evaluate(TrainerFn.TESTING, model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> list[Any] | None:
        """Run ``predict_step`` over the data and return the predictions.

        Returns:
            A list of per-batch outputs (a list of such lists for several dataloaders), or None when
            ``return_predictions=False``.
        """
        if self._spawn is not None:
            predictions: list[Any] | None = run_spawned(
                self, "predict", (model, dataloaders, datamodule, return_predictions, ckpt_path), {}
            )
            return predictions
        return self._runner.predict(model, dataloaders, datamodule, return_predictions, ckpt_path)

    def save_checkpoint(
        self,
        filepath: str | os.PathLike[str],
        weights_only: bool = False,
        storage_options: Any = None,
        asynchronous: bool = False,
    ) -> SaveHandle:
        """Write a checkpoint of the current state to ``filepath`` (committed atomically and durably).

        Call it on every process; only global rank 0 writes (see :class:`CheckpointPort`).

        Args:
            filepath: the file (local path or fsspec URL).
            weights_only: leave out optimizer, scheduler and callback state.
            storage_options: options for the fsspec filesystem of ``filepath``.
            asynchronous: (stepstone extension) return once the state is copied; the file is written in the
                background and the handle reports its commit (``handle.result()``).

        Returns:
            The save's handle (Lightning returns None); done at return for a synchronous save.

        Raises:
            MisconfigurationException: no model is attached (call fit/validate/test/predict first).
        """
        return self.checkpoint_port.save(os.fspath(filepath), weights_only, storage_options, asynchronous)

    # --- attributes ---------------------------------------------------------------------------------
    @property
    def lightning_module(self) -> LightningModule:
        """The attached LightningModule.

        Raises:
            MisconfigurationException: none is attached yet.
        """
        if self._model is None:
            raise MisconfigurationException(
                "No LightningModule is attached; call fit/validate/test/predict first."
            )
        return self._model

    @property
    def model(self) -> LightningModule | None:
        """The attached module (None before the first run)."""
        return self._model

    @property
    def current_epoch(self) -> int:
        """The current epoch (starts at 0)."""
        return self.fit_loop.current_epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far."""
        return self.fit_loop.global_step if self._model is not None else 0

    @property
    def max_epochs(self) -> int:
        """The epoch limit (-1: none)."""
        return self.fit_loop.max_epochs

    @property
    def min_epochs(self) -> int:
        """The minimum number of epochs."""
        return self.fit_loop.min_epochs

    @property
    def max_steps(self) -> int:
        """The optimizer-step limit (-1: none)."""
        return self.fit_loop.max_steps

    @property
    def min_steps(self) -> int:
        """The minimum number of optimizer steps."""
        return self.fit_loop.min_steps

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Every logged value (latest step or epoch value), as callbacks such as ModelCheckpoint see them."""
        return self._metrics.callback_metrics

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        """The values sent to the loggers."""
        return self._metrics.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The values shown in the progress bar."""
        return self._metrics.progress_bar_scalars()

    @property
    def logger(self) -> Logger | None:
        """The first logger (None without loggers)."""
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger: Logger | None) -> None:
        self.loggers = [logger] if logger is not None else []

    @property
    def default_root_dir(self) -> str:
        """Where logs and checkpoints go when no other path is given."""
        return self._default_root_dir

    @property
    def log_dir(self) -> str:
        """The first logger's folder (``default_root_dir/lightning_logs/version_N``), else ``default_root_dir``."""
        if not self.loggers:
            return self._default_root_dir
        first = self.loggers[0]
        # Lightning's rule: its own file loggers give their version folder, any other logger its save_dir.
        own = isinstance(first, (CSVLogger, TensorBoardLogger))
        return (first.log_dir if own else first.save_dir) or self._default_root_dir

    @property
    def checkpoint_callbacks(self) -> list[ModelCheckpoint]:
        """All ModelCheckpoint callbacks."""
        return [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> ModelCheckpoint | None:
        """The first ModelCheckpoint callback (None if there is none)."""
        found = self.checkpoint_callbacks
        return found[0] if found else None

    @property
    def early_stopping_callbacks(self) -> list[EarlyStopping]:
        """All EarlyStopping callbacks (Lightning's property)."""
        return [cb for cb in self.callbacks if isinstance(cb, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> EarlyStopping | None:
        """The first EarlyStopping callback (None if there is none)."""
        return next(iter(self.early_stopping_callbacks), None)

    @property
    def progress_bar_callback(self) -> ProgressBar | None:
        """The progress bar callback, if any."""
        return next((cb for cb in self.callbacks if isinstance(cb, ProgressBar)), None)

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is global rank 0 (always True on a single process)."""
        return self.global_rank == 0

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes."""
        return self._strategy.global_rank if self._strategy is not None else 0

    @property
    def local_rank(self) -> int:
        """This process's rank on its machine."""
        return self._strategy.local_rank if self._strategy is not None else 0

    @property
    def node_rank(self) -> int:
        """This machine's rank."""
        return self._strategy.node_rank if self._strategy is not None else 0

    @property
    def world_size(self) -> int:
        """Number of processes."""
        return self._strategy.world_size if self._strategy is not None else 1

    @property
    def num_devices(self) -> int:
        """Number of devices per node used by this run (processes per node under DDP)."""
        strategy = self._strategy
        return strategy.world_size // strategy.environment.num_nodes if strategy is not None else 1

    @property
    def device(self) -> torch.device:
        """The device training runs on."""
        return self._placement.device

    @property
    def precision(self) -> str:
        """The resolved precision, e.g. ``"32-true"``."""
        return self._placement.precision

    @property
    def train_dataloader(self) -> Iterable[Any] | None:
        """The training dataloader of the current fit."""
        return self._train_loader

    @property
    def val_dataloaders(self) -> Any:
        """The validation dataloader(s): one object or a list."""
        loaders = self._val_loaders
        if not loaders:
            return None
        return loaders[0] if len(loaders) == 1 else loaders

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps this fit will take (Lightning's estimate; ``inf`` when unbounded).

        Available from ``configure_optimizers`` on (the training data is set up before it).
        """
        if self.max_epochs == -1:
            return math.inf if self.max_steps == -1 else self.max_steps
        if math.isinf(self.num_training_batches):
            return math.inf if self.max_steps == -1 else self.max_steps
        per_epoch = math.ceil(self.num_training_batches / self.accumulate_grad_batches)
        estimate = per_epoch * max(self.max_epochs, 1)
        return estimate if self.max_steps == -1 else min(estimate, self.max_steps)

    @property
    def sanity_checking(self) -> bool:
        """Whether the sanity-check validation is running."""
        return self.state.stage == RunningStage.SANITY_CHECKING

    @property
    def training(self) -> bool:
        """Whether the training loop is running."""
        return self.state.stage == RunningStage.TRAINING

    @property
    def validating(self) -> bool:
        """Whether a validation loop is running."""
        return self.state.stage == RunningStage.VALIDATING

    @property
    def testing(self) -> bool:
        """Whether the test loop is running."""
        return self.state.stage == RunningStage.TESTING

    @property
    def predicting(self) -> bool:
        """Whether the predict loop is running."""
        return self.state.stage == RunningStage.PREDICTING

    @property
    def interrupted(self) -> bool:
        """Whether the last run was interrupted by an exception."""
        return self.state.status.value == "interrupted"

    # --- internals used by loops and the module -------------------------------------------------------
    def _val_enabled(self) -> bool:
        if self._val_limit_error is not None:
            return bool(self._val_loaders)
        return bool(self._val_loaders) and any(n > 0 for n in self.num_val_batches)

    def _raise_val_limit_error(self) -> None:
        """Raise the deferred ``limit_val_batches`` error when validation needs its data (Lightning's timing)."""
        if self._val_limit_error is not None:
            raise self._val_limit_error

    def _run_fit_validation(self) -> None:
        self._runner.fit_validation()

    def _set_sampler_epoch(self, epoch: int) -> None:
        sampler = getattr(self._train_loader, "sampler", None)
        for candidate in (
            sampler,
            getattr(sampler, "sampler", None),
            getattr(self._train_loader, "batch_sampler", None),
        ):
            if candidate is not None and hasattr(candidate, "set_epoch"):
                candidate.set_epoch(epoch)

    def _batch_hook_owner(self, name: str) -> Any:
        # Lightning's _DataHookSelector: the datamodule's batch-transfer hook wins when it overrides it.
        datamodule = self.datamodule
        if datamodule is not None and is_overridden(name, datamodule, LightningDataModule):
            return datamodule
        return None

    def _transfer_batch(self, batch: Any, dataloader_idx: int) -> Any:
        hooks = self._hooks
        device = self._placement.device
        for name, extra in (
            ("on_before_batch_transfer", ()),
            ("transfer_batch_to_device", (device,)),
            ("on_after_batch_transfer", ()),
        ):
            owner = self._batch_hook_owner(name)
            if owner is None:
                batch = hooks.module(name, batch, *extra, dataloader_idx)
            else:
                batch = getattr(owner, name)(batch, *extra, dataloader_idx)
        return batch

    def _backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward through the precision plugin, with the ``on_before_backward``/``on_after_backward`` hooks."""
        hooks = self._hooks
        hooks.callbacks("on_before_backward", loss)
        hooks.module("on_before_backward", loss)
        scaler = self._placement.scaler
        hooks.module("backward", scaler.scale(loss) if scaler is not None else loss, *args, **kwargs)
        hooks.callbacks("on_after_backward")
        hooks.module("on_after_backward")

    def _precision_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any] | None,
        after_closure: Callable[[], None],
        kwargs: Any,
    ) -> Any:
        """``optimizer.step`` as Lightning's precision plugins do it.

        ``closure`` (training step + backward) runs first, then ``after_closure`` (``on_before_optimizer_step``,
        clipping) sees the final (unscaled) gradients, then the optimizer steps.
        """
        scaler = self._placement.scaler
        if scaler is None:

            def wrapped() -> Any:
                result = closure() if closure is not None else None
                after_closure()
                return result

            return optimizer.step(wrapped, **kwargs)
        result = closure() if closure is not None else None
        skip = result is None and self.lightning_module.automatic_optimization
        if not skip:
            scaler.unscale_(optimizer)
        after_closure()
        if skip:
            return result
        output = scaler.step(optimizer, **kwargs)
        scaler.update()
        return output

    def _lightning_step(self, optimizer: Optimizer, closure: Any, kwargs: dict[str, Any]) -> Any:
        """``LightningOptimizer.step``: hooks, clipping and gradient scaling around ``optimizer.step``.

        In automatic optimization ``closure`` is the loop's training step + backward (passed through
        ``LightningModule.optimizer_step``); in manual optimization the step is also counted (``global_step``).
        """
        hooks = self._hooks
        module = self.lightning_module
        automatic = module.automatic_optimization

        def after_closure() -> None:
            hooks.callbacks("on_before_optimizer_step", optimizer)
            hooks.module("on_before_optimizer_step", optimizer)
            if automatic:
                hooks.module(
                    "configure_gradient_clipping",
                    optimizer,
                    gradient_clip_val=self.gradient_clip_val,
                    gradient_clip_algorithm=self.gradient_clip_algorithm,
                )

        if automatic:
            return self._precision_step(optimizer, closure, after_closure, kwargs)
        progress = self.fit_loop.manual_progress
        progress.increment("ready")
        result = self._precision_step(optimizer, closure, after_closure, kwargs)
        progress.increment("completed")
        return result

    def _lightning_optimizers(self) -> list[LightningOptimizer]:
        cached = self._lightning_optimizer_cache
        if [id(w.optimizer) for w in cached] != [id(o) for o in self.optimizers]:
            cached = [LightningOptimizer(opt, step_fn=self._lightning_step) for opt in self.optimizers]
            self._lightning_optimizer_cache = cached
        return cached
