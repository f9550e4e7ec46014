"""Running fit / validate / test / predict: setup, checkpoint restore, the loops, teardown and failure handling."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from stepstone.core.datamodule import LightningDataModule
from stepstone.core.hparams import logged_hparams
from stepstone.core.module import LightningModule
from stepstone.core.optimizers import parse_optimizers
from stepstone.core.saving import read_checkpoint
from stepstone.errors import MisconfigurationException
from stepstone.loops.evaluation import run_evaluation
from stepstone.loops.prediction import run_prediction
from stepstone.profilers import PassThroughProfiler
from stepstone.strategies import is_fsdp
from stepstone.trainer.checkpoint_io import (
    read_for_strategy,
    resolve_checkpoint,
    restore_callbacks,
    restore_model_state,
    restore_training_state,
)
from stepstone.trainer.checks import (
    check_data_arguments,
    check_fit_methods,
    check_optimization,
    check_sync_batchnorm,
    print_results,
    warn_eval_modules,
)
from stepstone.trainer.data import check_hook_not_none, find_loaders, limited_batches, loader_length
from stepstone.trainer.fit_data import FitData, prepare_loaders
from stepstone.trainer.hooks import is_overridden
from stepstone.trainer.rng import capture_rng, restore_rng
from stepstone.trainer.state import RunningStage, TrainerFn, TrainerStatus

if TYPE_CHECKING:
    from stepstone.trainer.trainer import Trainer

__all__ = ["Runner"]

_T = TypeVar("_T")

_EVAL_NAMES = {
    TrainerFn.VALIDATING: ("validation", "val", "limit_val_batches"),
    TrainerFn.TESTING: ("test", "test", "limit_test_batches"),
}


class Runner:
    """Carries out the Trainer's entry points (one per Trainer)."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self._datamodule: LightningDataModule | None = None  # the data source of the current call
        self.fit_data = FitData(trainer)

    # --- shared plumbing ----------------------------------------------------------------------------
    def _attach(
        self, model: LightningModule | None, datamodule: LightningDataModule | None, fn: TrainerFn
    ) -> None:
        t = self.t
        if model is None:
            if t._model is None:
                raise MisconfigurationException(
                    f"trainer.{fn.value}() needs a model: pass trainer.{fn.value}(model, ...) (no earlier call "
                    "attached one)."
                )
            model = t._model
        if not isinstance(model, LightningModule):
            raise MisconfigurationException(
                f"trainer.{fn.value}(model=...) expects a stepstone LightningModule, got {type(model).__name__}."
            )
        if datamodule is not None and not isinstance(datamodule, LightningDataModule):
            raise MisconfigurationException(
                f"trainer.{fn.value}(datamodule=...) expects a LightningDataModule, got {type(datamodule).__name__}."
            )
        t._model = model
        model.trainer = t
        # As in Lightning, the datamodule passed to this call is its only data source; trainer.datamodule keeps
        # the last one given (its setup/teardown hooks keep running).
        self._datamodule = datamodule
        if datamodule is not None:
            t.datamodule = datamodule
            datamodule.trainer = t
        t._hooks.reset()

    def _guarded(self, fn: TrainerFn, body: Callable[[], _T]) -> _T:
        t = self.t
        t.state.fn = fn
        t.state.status = TrainerStatus.RUNNING
        try:
            strategy = t._strategy
            if t._launcher is not None:  # `python train.py` with devices=N: re-run the script for the others
                from stepstone.trainer.distributed import start_ranks

                start_ranks(t._launcher)
            if strategy is not None:
                strategy.setup_environment()  # joins the process group (every rank), bounded by its timeout
            self._setup_profiler(fn)
            self._setup(fn)
            result = body()
        except BaseException as exc:
            t.state.status = TrainerStatus.INTERRUPTED
            if isinstance(exc, KeyboardInterrupt):
                print("\nDetected KeyboardInterrupt, attempting graceful shutdown ...", file=sys.stderr)
            self._on_exception(exc)
            save_failure = self._teardown(fn, "failed")
            if save_failure is not None:  # not dropped: told alongside the error that stopped the run
                message = f"Also, a background checkpoint save failed: {save_failure!r}"
                warnings.warn(message, RuntimeWarning, stacklevel=3)
                getattr(exc, "add_note", lambda note: None)(message)  # Python >= 3.11
            raise
        t.state.status = TrainerStatus.FINISHED
        save_failure = self._teardown(fn, "success")
        if save_failure is not None:
            # fit never returns success with a failed save; the earlier checkpoints are intact.
            t.state.status = TrainerStatus.INTERRUPTED
            raise save_failure
        return result

    def _setup_profiler(self, fn: TrainerFn) -> None:
        t = self.t
        profiler = t.profiler
        profiler.setup(
            stage=fn.value, local_rank=t.local_rank if t.world_size > 1 else None, log_dir=t.log_dir
        )
        # Hooks are wrapped only for a profiler that records: the unprofiled path stays a plain call.
        t._hooks.profiler = None if isinstance(profiler, PassThroughProfiler) else profiler

    def _on_exception(self, exc: BaseException) -> None:
        t = self.t
        try:
            t._hooks.callbacks("on_exception", exc)
        finally:
            t.state.stage = None

    def _setup(self, fn: TrainerFn) -> None:
        t = self.t
        hooks = t._hooks
        hooks.datamodule("prepare_data")
        hooks.module("prepare_data")
        hooks.datamodule("setup", fn.value)
        hooks.callbacks("setup", fn.value)
        hooks.module("setup", fn.value)
        hooks.module("configure_model")
        # Each entry point starts with no published metrics (Lightning's); fit(ckpt_path) restores its own later.
        t._metrics.reset_all()

    def _teardown(self, fn: TrainerFn, status: str) -> BaseException | None:
        t = self.t
        t.state.stage = None
        # The run ends only once the last background save is committed (or has failed).
        save_failure = t.checkpoint_port.finish()
        if (
            status == "success"
        ):  # as in Lightning, a run that raised gets on_exception, not the teardown hooks
            hooks = t._hooks
            hooks.datamodule("teardown", fn.value)
            hooks.callbacks("teardown", fn.value)
            hooks.module("teardown", fn.value)
        status = "failed" if save_failure is not None else status
        if t._model is not None and t._placement.device.type == "cuda":
            t._model.cpu()
        if t.is_global_zero:  # only rank 0 logs (Lightning's loggers are rank-zero-only)
            for logger in t.loggers:
                logger.finalize(status)
        if t._strategy is not None:
            from stepstone.trainer.distributed import finish_strategy

            # Drops the DDP wrapper; a failure also leaves the process group, so that the other ranks hear of
            # it at once (their pending collectives fail instead of waiting for the timeout).
            finish_strategy(t._strategy, failed=status != "success")
        if status == "success":
            t.profiler.describe()  # the report of this entry point (Lightning's: only when it succeeded)
        else:
            t.profiler.teardown(stage=t.profiler._stage)
        t._hooks.profiler = None
        return save_failure

    def _log_hyperparams(self) -> None:
        t = self.t
        if not t.loggers or not t.enable_autolog_hparams:
            return
        # On every rank: conflicting module/datamodule hparams fail every rank alike (Lightning's check).
        params = logged_hparams(t.lightning_module, t.datamodule)
        if not t.is_global_zero:
            return
        for logger in t.loggers:
            if params is not None:
                logger.log_hyperparams(params)
            logger.log_graph(t.lightning_module)
            logger.save()

    def _find(self, kind: str, explicit: Any) -> list[Iterable[Any]] | None:
        t = self.t
        loaders = find_loaders(kind, explicit, self._datamodule, t.lightning_module)
        return None if loaders is None else prepare_loaders(t, kind, loaders, fitting=False)

    def _loaders(
        self, kind: str, explicit: Any, limit: int | float, name: str
    ) -> tuple[list[Iterable[Any]] | None, list[int | float]]:
        loaders = self._find(kind, explicit)
        if loaders is None:
            return None, []
        return loaders, [limited_batches(name, loader_length(loader), limit) for loader in loaders]

    # --- fit ----------------------------------------------------------------------------------------
    def run(
        self,
        fn: TrainerFn,
        model: LightningModule,
        datamodule: LightningDataModule | None,
        ckpt_path: str | os.PathLike[str] | None,
        train_loaders: Any,
        val_loaders: Any,
    ) -> None:
        """``trainer.fit``."""
        if not isinstance(model, LightningModule):
            raise MisconfigurationException(
                f"trainer.fit(model=...) expects a stepstone LightningModule, got {type(model).__name__}."
            )
        self._attach(model, datamodule, fn)
        self.t._resume_requested = ckpt_path is not None
        preemption = self.t._preemption
        preemption.install()  # preemption signals are handled while fit runs (see trainer/signals.py)
        try:
            self._guarded(fn, lambda: self._fit(ckpt_path, train_loaders, val_loaders))
        finally:
            preemption.uninstall()

    def _fit(self, ckpt_path: Any, train_loaders: Any, val_loaders: Any) -> None:
        t = self.t
        module = t.lightning_module
        check_fit_methods(module)
        path, preloaded = resolve_checkpoint(self.t, TrainerFn.FITTING, ckpt_path)
        t.ckpt_path = path
        t.fit_loop.restarting = False  # until a checkpoint's loop state says otherwise
        t.fit_loop.resumed_after_batch_end = False
        self.fit_data.load(train_loaders, val_loaders, self._datamodule)
        if t._strategy is not None and t._sync_batchnorm:
            # In place for the module's children (their parameters stay the same objects), before DDP wraps it.
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if is_fsdp(t._strategy):
            # FSDP shards the parameters first: the optimizers, then the checkpoint, are made for the shards.
            check_sync_batchnorm(t)
            t._strategy.setup(module, t._placement.device)
            self._configure_optimizers(module)
            if path:  # a damaged directory chosen by "last"/"auto" falls back to the next newest checkpoint
                auto = isinstance(ckpt_path, str) and ckpt_path in ("last", "auto")
                path, checkpoint = read_for_strategy(t, path, preloaded, fall_back=auto)
                t.ckpt_path = path
            else:
                checkpoint = None
            if checkpoint is not None:
                restore_model_state(t, checkpoint, path or "")
                restore_callbacks(t, checkpoint)
                restore_training_state(t, checkpoint, path or "")
                self.fit_data.restored()
                del checkpoint
        else:
            checkpoint = (
                preloaded if preloaded is not None or not path else read_checkpoint(path, map_location="cpu")
            )
            if checkpoint is not None:
                restore_model_state(t, checkpoint, path or "")
                restore_callbacks(t, checkpoint)
            module.to(t._placement.device)
            self._configure_optimizers(module)
            if checkpoint is not None:
                restore_training_state(t, checkpoint, path or "")
                self.fit_data.restored()
                del checkpoint
            if t._strategy is not None:
                check_sync_batchnorm(t)
                # After the optimizers exist (they hold the same parameters); DDP copies rank 0's weights.
                t._strategy.setup(module, t._placement.device)
        self._log_hyperparams()
        t._metrics.eval_steps_seen.clear()
        t._hooks.both("on_fit_start")
        if not t.fit_loop.restarting:  # Lightning's rule: a run resumed between epochs checks too
            self._sanity_check(keep_metrics=path is not None)
        t.state.stage = RunningStage.TRAINING
        warn_eval_modules(module)  # Lightning 2.2+ keeps the user's train/eval modes and warns instead
        with torch.autograd.set_detect_anomaly(t._detect_anomaly):
            t.fit_loop.run()
        t._hooks.both("on_fit_end")

    def _configure_optimizers(self, module: LightningModule) -> None:
        t = self.t
        t.optimizers, t.lr_scheduler_configs = parse_optimizers(t._hooks.module("configure_optimizers"))
        if not t.optimizers:
            warnings.warn(
                "configure_optimizers returned None: this fit runs training_step and backward but no optimizer "
                "step. Return an optimizer to train the weights.",
                UserWarning,
                stacklevel=7,
            )
        check_optimization(t, module)

    def _sanity_check(self, keep_metrics: bool) -> None:
        """A few validation batches before training; the generators are left as they were (Lightning's rule).

        Args:
            keep_metrics: keep the metrics a checkpoint restored (the check's own values are forgotten).
        """
        t = self.t
        if not t._val_enabled() or t.num_sanity_val_steps == 0 or t._val_loaders is None:
            return
        t._raise_val_limit_error()
        hub = t._metrics
        kept = [
            dict(d) if keep_metrics else {}
            for d in (hub.callback_metrics, hub.logged_metrics, hub.progress_bar)
        ]
        rng = capture_rng()
        t.num_sanity_val_batches = [min(t.num_sanity_val_steps, n) for n in t.num_val_batches]
        t.state.stage = RunningStage.SANITY_CHECKING
        t._hooks.callbacks("on_sanity_check_start")
        run_evaluation(
            t, "validation", t._val_loaders, t.num_sanity_val_batches, log_step=None, inference_mode=False
        )
        t._hooks.callbacks("on_sanity_check_end")
        hub.reset_all()
        for published, saved in zip(
            (hub.callback_metrics, hub.logged_metrics, hub.progress_bar), kept, strict=True
        ):
            published.update(saved)
        restore_rng(rng)
        t.state.stage = RunningStage.TRAINING

    def fit_validation(self) -> None:
        """A validation run inside fit (called by the fit loop)."""
        t = self.t
        self.fit_data.reload_val_if_due()
        assert t._val_loaders is not None
        t._raise_val_limit_error()
        t.state.stage = RunningStage.VALIDATING
        loop = t.fit_loop
        run_evaluation(
            t,
            "validation",
            t._val_loaders,
            t.num_val_batches,
            log_step=loop.batches_that_stepped,
            inference_mode=False,
            progress=loop.val_batch_progress,
        )
        t._validation_has_run = True
        t.state.stage = RunningStage.TRAINING

    # --- validate / test / predict ------------------------------------------------------------------
    def _restore_weights(self, fn: TrainerFn, model_given: bool, ckpt_path: Any) -> None:
        t = self.t
        if (
            ckpt_path is None
            and not model_given
            and t.checkpoint_callback
            and t.checkpoint_callback.best_model_path
        ):
            ckpt_path = "best"
        path, preloaded = resolve_checkpoint(self.t, fn, ckpt_path)
        t.ckpt_path = path
        if path is not None:
            # As in Lightning: the module, datamodule and callbacks are restored (optimizers and loops only by fit).
            checkpoint = preloaded if preloaded is not None else read_checkpoint(path, map_location="cpu")
            restore_model_state(t, checkpoint, path)
            restore_callbacks(t, checkpoint)

    def evaluate(
        self, fn: TrainerFn, model: Any, dataloaders: Any, ckpt_path: Any, verbose: bool, datamodule: Any
    ) -> list[dict[str, float]]:
        """``trainer.validate`` and ``trainer.test``."""
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        check_data_arguments(fn, dataloaders, datamodule)
        self._attach(model, datamodule, fn)
        name, kind, limit_name = _EVAL_NAMES[fn]
        if not is_overridden(f"{name}_step", self.t.lightning_module, LightningModule):
            raise MisconfigurationException(
                f"No `{name}_step()` method defined to run trainer.{fn.value}(); define {name}_step(self, batch, "
                "batch_idx) in the LightningModule."
            )

        def body() -> list[dict[str, float]]:
            t = self.t
            self._restore_weights(fn, model is not None, ckpt_path)
            loaders, counts = self._loaders(kind, dataloaders, getattr(t, limit_name), limit_name)
            if loaders is None:
                check_hook_not_none(kind, fn.value, "dataloaders", self._datamodule, t.lightning_module)
                raise MisconfigurationException(
                    f"trainer.{fn.value}() found no data: pass dataloaders=..., a datamodule, or define "
                    f"{kind}_dataloader() in the LightningModule."
                )
            setattr(t, f"num_{'val' if kind == 'val' else 'test'}_batches", counts)
            t.lightning_module.to(t._placement.device)
            self._log_hyperparams()
            t.state.stage = RunningStage.VALIDATING if fn == TrainerFn.VALIDATING else RunningStage.TESTING
            t._metrics.eval_steps_seen.clear()
            if not any(counts):
                return []  # Lightning skips an evaluation with no batches: no hooks, no results
            results = run_evaluation(
                t,
                name,
                loaders,
                counts,
                log_step=t.fit_loop.batches_that_stepped,
                inference_mode=t.inference_mode,
            )
            if verbose and t.is_global_zero:
                print_results(fn.value, results)
            return results

        return self._guarded(fn, body)

    def predict(
        self, model: Any, dataloaders: Any, datamodule: Any, return_predictions: Any, ckpt_path: Any
    ) -> list[Any] | None:
        """``trainer.predict``."""
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        check_data_arguments(TrainerFn.PREDICTING, dataloaders, datamodule)
        self._attach(model, datamodule, TrainerFn.PREDICTING)

        def body() -> list[Any] | None:
            t = self.t
            self._restore_weights(TrainerFn.PREDICTING, model is not None, ckpt_path)
            loaders, counts = self._loaders(
                "predict", dataloaders, t.limit_predict_batches, "limit_predict_batches"
            )
            if loaders is None:
                check_hook_not_none("predict", "predict", "dataloaders", self._datamodule, t.lightning_module)
                raise MisconfigurationException(
                    "trainer.predict() found no data: pass dataloaders=..., a datamodule, or define "
                    "predict_dataloader() in the LightningModule."
                )
            t.num_predict_batches = counts
            t.lightning_module.to(t._placement.device)
            self._log_hyperparams()  # Lightning logs them for every trainer function, predict included
            t.state.stage = RunningStage.PREDICTING
            if not any(counts):
                return None  # Lightning skips a prediction with no batches: no hooks, no predictions
            return run_prediction(t, loaders, counts, return_predictions is not False)

        return self._guarded(TrainerFn.PREDICTING, body)
