"""What ``self.log`` records: per-step values and their epoch reductions, with Lightning's key names.

Lightning's rules kept here: a metric logged with both ``on_step`` and ``on_epoch`` appears as
``name_step`` and ``name_epoch`` for loggers and the progress bar, and as ``name`` (the latest of the two)
plus both forked names in ``callback_metrics``. Epoch means are weighted by batch size.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from stepstone.errors import MisconfigurationException

__all__ = ["MetricMeta", "Results", "extract_batch_size", "to_metric_tensor"]

_REDUCTIONS = ("mean", "sum", "max", "min")


def _reduction_name(reduce_fx: str | Callable[..., Any]) -> str:
    if isinstance(reduce_fx, str):
        name = reduce_fx.lower()
    else:
        name = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}.get(reduce_fx, "")
    if name not in _REDUCTIONS:
        raise MisconfigurationException(
            f"self.log(reduce_fx={reduce_fx!r}) is not supported; use one of 'mean', 'sum', 'max', 'min' "
            "(or torch.mean / torch.sum / torch.max / torch.min)."
        )
    return name


def to_metric_tensor(name: str, value: Any) -> torch.Tensor:
    """Convert a logged value to a detached 0-d float tensor (Lightning stores logged numbers as float).

    Raises:
        MisconfigurationException: the value is not a number or a one-element tensor.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise MisconfigurationException(
                f"self.log({name!r}, value): value must be a number or a tensor with one element, got a "
                f"tensor of shape {tuple(value.shape)}. Reduce it first, e.g. value.mean()."
            )
        scalar = value.detach().reshape(())
        return scalar if scalar.is_floating_point() else scalar.to(torch.get_default_dtype())
    if isinstance(value, numbers.Real):  # int, float, bool and numpy's real scalars
        return torch.tensor(float(value), dtype=torch.get_default_dtype())
    raise MisconfigurationException(
        f"self.log({name!r}, value): value must be a number or a one-element tensor, got "
        f"{type(value).__name__}. Log each entry of a collection separately (self.log_dict)."
    )


def extract_batch_size(batch: Any) -> int | None:
    """Size of the first dimension of the first tensor found in ``batch`` (None if there is none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim > 0 else 1
    if isinstance(batch, Mapping):
        items: Any = batch.values()
    elif isinstance(batch, (list, tuple)):
        items = batch
    else:
        return None
    for item in items:
        size = extract_batch_size(item)
        if size is not None:
            return size
    return None


@dataclass
class MetricMeta:
    """How one logged name behaves.

    ``dataloader_idx`` is set when an evaluation has several dataloaders; ``suffix`` is then
    ``"/dataloader_idx_N"`` (empty with ``add_dataloader_idx=False``), appended after the ``_step``/``_epoch`` fork.
    """

    name: str
    on_step: bool
    on_epoch: bool
    prog_bar: bool
    logger: bool
    reduction: str
    sync_dist: bool
    fx: str = ""
    dataloader_idx: int | None = None
    suffix: str = ""

    @property
    def forked(self) -> bool:
        """Whether the metric is published under ``name_step`` and ``name_epoch``."""
        return self.on_step and self.on_epoch

    @property
    def key(self) -> str:
        """The name as published (with the dataloader suffix)."""
        return f"{self.name}{self.suffix}"

    def forked_key(self, kind: str) -> str:
        """The name published for ``kind`` (``"step"`` or ``"epoch"``): ``name_step``/``name_epoch`` when forked."""
        return f"{self.name}_{kind}{self.suffix}" if self.forked else self.key


class _Metric:
    __slots__ = ("count", "meta", "step_value", "total", "weight")

    def __init__(self, meta: MetricMeta) -> None:
        self.meta = meta
        self.step_value: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.weight = 0
        self.count = 0

    def update(self, value: torch.Tensor, batch_size: int, step_value: torch.Tensor) -> None:
        """Accumulate this process's ``value``; ``step_value`` is what the step publishes (synced if asked)."""
        self.step_value = step_value
        if not self.meta.on_epoch:
            return
        reduction = self.meta.reduction
        if self.total is None:
            self.total = value * batch_size if reduction == "mean" else value.clone()
        elif reduction == "mean":
            self.total = self.total + value * batch_size
        elif reduction == "sum":
            self.total = self.total + value
        elif reduction == "max":
            self.total = torch.maximum(self.total, value)
        else:
            self.total = torch.minimum(self.total, value)
        self.weight += batch_size
        self.count += 1

    def epoch_value(
        self, sync: Callable[[torch.Tensor, str], torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """The epoch reduction; with ``sync``, reduced across processes once (a weighted mean stays weighted)."""
        if self.total is None:
            return None
        total = self.total
        if self.meta.reduction == "mean":
            weight = torch.tensor(float(self.weight), dtype=total.dtype, device=total.device)
            if sync is not None:
                total, weight = sync(total, "sum"), sync(weight, "sum")
            return total / torch.clamp(weight, min=1)
        return sync(total, self.meta.reduction) if sync is not None else total


class Results:
    """The metrics logged during one loop (training or one evaluation run).

    Args:
        sync: called as ``sync(tensor, reduction)`` for values logged with ``sync_dist=True``; reduces across
            processes (identity on a single process).
    """

    def __init__(self, sync: Callable[[torch.Tensor, str], torch.Tensor] | None = None) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._sync = sync

    def __contains__(self, key: str) -> bool:
        return any(metric.meta.key == key for metric in self._metrics.values())

    def log(self, meta: MetricMeta, value: torch.Tensor, batch_size: int) -> _Metric:
        """Record one value; returns the metric so the caller can publish its step value.

        As in Lightning, a name logged from two different hooks is two entries (both publish ``name``); logging it
        twice from the same hook with different flags is an error.
        """
        slot = f"{meta.fx}.{meta.key}"
        metric = self._metrics.get(slot)
        if metric is None:
            metric = self._metrics[slot] = _Metric(meta)
        elif metric.meta.dataloader_idx != meta.dataloader_idx:
            raise MisconfigurationException(
                f"self.log({meta.name!r}, add_dataloader_idx=False) was called in `{meta.fx}` for dataloader "
                f"{meta.dataloader_idx} after dataloader {metric.meta.dataloader_idx}; with several dataloaders "
                "use a different name per dataloader, or keep add_dataloader_idx=True."
            )
        elif (metric.meta.on_step, metric.meta.on_epoch, metric.meta.reduction) != (
            meta.on_step,
            meta.on_epoch,
            meta.reduction,
        ):
            raise MisconfigurationException(
                f"self.log({meta.name!r}) was called in `{meta.fx}` with on_step={meta.on_step}, "
                f"on_epoch={meta.on_epoch}, reduce_fx={meta.reduction!r} after being logged there with "
                f"on_step={metric.meta.on_step}, on_epoch={metric.meta.on_epoch}, "
                f"reduce_fx={metric.meta.reduction!r}; use the same arguments every time, or a different name."
            )
        step_value = value
        if meta.on_step and meta.sync_dist and self._sync is not None:
            step_value = self._sync(value, meta.reduction)
        metric.update(value, batch_size, step_value)
        return metric

    def epoch_value(self, metric: _Metric) -> torch.Tensor | None:
        """The epoch reduction of ``metric`` (synced across processes when logged with ``sync_dist=True``)."""
        return metric.epoch_value(self._sync if metric.meta.sync_dist else None)

    def epoch_values(self) -> list[tuple[MetricMeta, torch.Tensor]]:
        """The epoch reduction of every metric logged with ``on_epoch=True``, in logging order."""
        out = []
        for metric in self._metrics.values():
            value = self.epoch_value(metric)
            if value is not None:
                out.append((metric.meta, value))
        return out

    def reset(self) -> None:
        """Forget everything (start of an epoch or of an evaluation run)."""
        self._metrics.clear()

    def state_dict(self) -> list[dict[str, Any]]:
        """The partial accumulators, so that an epoch interrupted mid-way ends with the same reductions.

        Returns:
            One weights_only-safe dict per metric (its metadata, running total, weight and count), in logging
            order.
        """
        return [
            {
                "slot": slot,
                "meta": asdict(metric.meta),
                "step_value": metric.step_value,
                "total": metric.total,
                "weight": metric.weight,
                "count": metric.count,
            }
            for slot, metric in self._metrics.items()
        ]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        """Replace the accumulators by those of :meth:`state_dict`.

        Args:
            state: what :meth:`state_dict` returned.
        """
        self._metrics.clear()
        for entry in state:
            metric = _Metric(MetricMeta(**entry["meta"]))
            metric.step_value = entry["step_value"]
            metric.total = entry["total"]
            metric.weight = int(entry["weight"])
            metric.count = int(entry["count"])
            self._metrics[str(entry["slot"])] = metric


def resolve_meta(
    name: str,
    *,
    default_on_step: bool,
    default_on_epoch: bool,
    on_step: bool | None,
    on_epoch: bool | None,
    prog_bar: bool,
    logger: bool | None,
    reduce_fx: str | Callable[..., Any],
    sync_dist: bool,
    fx: str = "",
    dataloader_idx: int | None = None,
    add_dataloader_idx: bool = True,
) -> MetricMeta:
    """Fill in Lightning's per-hook defaults and validate the flags of one ``self.log`` call.

    Raises:
        MisconfigurationException: both ``on_step`` and ``on_epoch`` end up False, or ``reduce_fx`` is unknown.
    """
    step = default_on_step if on_step is None else bool(on_step)
    epoch = default_on_epoch if on_epoch is None else bool(on_epoch)
    if not step and not epoch:
        raise MisconfigurationException(
            f"self.log({name!r}, on_step=False, on_epoch=False) would record nothing; set one of them to True."
        )
    return MetricMeta(
        name=name,
        on_step=step,
        on_epoch=epoch,
        prog_bar=bool(prog_bar),
        logger=True if logger is None else bool(logger),
        reduction=_reduction_name(reduce_fx),
        sync_dist=bool(sync_dist),
        fx=fx,
        dataloader_idx=dataloader_idx,
        suffix=f"/dataloader_idx_{dataloader_idx}"
        if add_dataloader_idx and dataloader_idx is not None
        else "",
    )
