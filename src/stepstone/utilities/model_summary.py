"""Lightning's ``lightning.pytorch.utilities.model_summary``: per-layer summaries of a LightningModule.

``summarize(model)`` returns a :class:`ModelSummary`; ``str()`` of it is the table the ``ModelSummary``
callback prints at the start of fit (name, type, parameters, train/eval mode and FLOPs per layer, plus input
and output sizes when the module has an ``example_input_array``).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from stepstone.errors import MisconfigurationException
from stepstone.utilities.summary_table import (
    format_summary_table,
    get_formatted_model_size,
    get_human_readable_count,
)

if TYPE_CHECKING:
    from stepstone.core.module import LightningModule

__all__ = [
    "LayerSummary",
    "ModelSummary",
    "get_formatted_model_size",
    "get_human_readable_count",
    "parse_batch_shape",
    "summarize",
]

UNKNOWN_SIZE = "?"
LEFTOVER_PARAMS_NAME = "other params"
NOT_APPLICABLE = "n/a"

# Bits per parameter for the size estimate; other precisions (the mixed ones) are estimated at 32 bits.
_PRECISION_BITS = {
    "64": 64,
    "32": 32,
    "16": 16,
    "bf16": 16,
    "16-true": 16,
    "bf16-true": 16,
    "32-true": 32,
    "64-true": 64,
}


def parse_batch_shape(batch: Any) -> str | list[Any]:
    """The shape of ``batch`` as a list, nested for lists/tuples of tensors, ``"?"`` for anything else.

    Args:
        batch: a tensor (anything with ``shape``), or a list/tuple of them.

    Returns:
        ``[10, 256]``-style lists, or ``"?"``.
    """
    if hasattr(batch, "shape"):
        return list(batch.shape)
    if isinstance(batch, (list, tuple)):
        return [parse_batch_shape(item) for item in batch]
    return UNKNOWN_SIZE


def _counted(param: torch.Tensor) -> int:
    """Elements of ``param``; 0 (with a warning) for a lazy parameter whose shape is not known yet."""
    if isinstance(param, UninitializedParameter):
        warnings.warn(
            "The total number of parameters detected may be inaccurate because the model contains an "
            "UninitializedParameter (a lazy module). Set `self.example_input_array` in your LightningModule "
            "so the summary can run a forward pass first.",
            UserWarning,
            stacklevel=3,
        )
        return 0
    return param.numel()


class LayerSummary:
    """Summary of one layer: its type, parameter count, mode, and the sizes seen by its first forward pass.

    Args:
        module: the layer.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = module
        self._in_size: str | list[Any] | None = None
        self._out_size: str | list[Any] | None = None
        self._hook_handle: RemovableHandle | None = None
        if not isinstance(module, torch.jit.ScriptModule):  # script modules take no forward hooks
            self._hook_handle = module.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, _: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        inputs = (*args, *kwargs.values()) if kwargs else tuple(args)
        self._in_size = parse_batch_shape(inputs[0] if len(inputs) == 1 else inputs)
        self._out_size = parse_batch_shape(out)
        self.detach_hook()  # a layer called several times reports its first call

    def __del__(self) -> None:
        self.detach_hook()

    def detach_hook(self) -> None:
        """Remove the forward hook (if the forward pass has not removed it already)."""
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None

    @property
    def in_size(self) -> str | list[Any]:
        """The input shape of the first forward call, ``"?"`` if none was seen."""
        return self._in_size or UNKNOWN_SIZE

    @property
    def out_size(self) -> str | list[Any]:
        """The output shape of the first forward call, ``"?"`` if none was seen."""
        return self._out_size or UNKNOWN_SIZE

    @property
    def layer_type(self) -> str:
        """The layer's class name."""
        return type(self._module).__name__

    @property
    def num_parameters(self) -> int:
        """Parameters of the layer and its sublayers."""
        return sum(_counted(p) for p in self._module.parameters())

    @property
    def training(self) -> bool:
        """Whether the layer is in train mode."""
        return self._module.training


class ModelSummary:
    """The layer table of a LightningModule (Lightning's ``ModelSummary`` utility).

    With an ``example_input_array`` on the module, one forward pass (eval mode, no grad, modes restored after)
    records each layer's input/output sizes and FLOPs.

    Args:
        model: the module to summarize.
        max_depth: nesting depth of the layers listed: 1 the direct children (default), -1 all, 0 none.

    Raises:
        MisconfigurationException: ``max_depth`` is not an int >= -1 (a ``ValueError``, as in Lightning).
    """

    def __init__(self, model: LightningModule, max_depth: int = 1) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise MisconfigurationException(
                f"max_depth={max_depth!r} is invalid; pass -1 (all layers), 0 (no layer table) or a depth > 0."
            )
        self._model = model
        self._max_depth = max_depth
        # +1: FlopCounterMode counts the root module as depth 0.
        self._flop_counter = FlopCounterMode(display=False, depth=max_depth + 1)
        self._layer_summary = self.summarize()
        trainer = getattr(model, "_trainer", None)
        precision = str(trainer.precision) if trainer is not None else "32-true"
        if precision not in _PRECISION_BITS:
            warnings.warn(
                f"Precision {precision} is not supported by the model summary. Estimated model size in MB will "
                "not be accurate. Using 32 bits instead.",
                UserWarning,
                stacklevel=2,
            )
        self._precision_megabytes = _PRECISION_BITS.get(precision, 32) / 8.0 * 1e-6

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        """The ``(name, module)`` pairs the table lists (before depth pruning)."""
        if self._max_depth == 0:
            return []
        if self._max_depth == 1:
            return list(self._model.named_children())
        return list(self._model.named_modules())[1:]  # without the root

    @property
    def layer_names(self) -> list[str]:
        """Dotted names of the listed layers."""
        return list(self._layer_summary)

    @property
    def layer_types(self) -> list[str]:
        """Class names of the listed layers."""
        return [layer.layer_type for layer in self._layer_summary.values()]

    @property
    def in_sizes(self) -> list[Any]:
        """Input shapes of the listed layers (``"?"`` where unknown)."""
        return [layer.in_size for layer in self._layer_summary.values()]

    @property
    def out_sizes(self) -> list[Any]:
        """Output shapes of the listed layers (``"?"`` where unknown)."""
        return [layer.out_size for layer in self._layer_summary.values()]

    @property
    def param_nums(self) -> list[int]:
        """Parameter counts of the listed layers."""
        return [layer.num_parameters for layer in self._layer_summary.values()]

    @property
    def training_modes(self) -> list[bool]:
        """Train mode of the listed layers."""
        return [layer.training for layer in self._layer_summary.values()]

    @property
    def total_training_modes(self) -> dict[str, int]:
        """Submodules (all depths, the root excluded) in train and in eval mode."""
        modes = [module.training for module in self._model.modules()][1:]
        return {"train": modes.count(True), "eval": modes.count(False)}

    @property
    def total_parameters(self) -> int:
        """All parameters of the model."""
        return sum(_counted(p) for p in self._model.parameters())

    @property
    def trainable_parameters(self) -> int:
        """Parameters with ``requires_grad``."""
        return sum(_counted(p) for p in self._model.parameters() if p.requires_grad)

    @property
    def total_layer_params(self) -> int:
        """Parameters inside the listed layers."""
        return sum(self.param_nums)

    @property
    def model_size(self) -> float:
        """Estimated size of the parameters in MB (at the Trainer's precision)."""
        return self.total_parameters * self._precision_megabytes

    @property
    def total_flops(self) -> int:
        """FLOPs of the example forward pass (0 without an ``example_input_array``)."""
        return int(self._flop_counter.get_total_flops())

    @property
    def flop_counts(self) -> dict[str, dict[Any, int]]:
        """FLOPs per operator for each listed layer."""
        counts = self._flop_counter.get_flop_counts()
        root = type(self._model).__name__
        return {name: dict(counts.get(f"{root}.{name}", {})) for name in self.layer_names}

    def summarize(self) -> dict[str, LayerSummary]:
        """Build the per-layer summaries, running the example input through the model if it has one.

        Returns:
            Layer name to :class:`LayerSummary`, deeper layers than ``max_depth`` left out.
        """
        summary = {name: LayerSummary(module) for name, module in self.named_modules}
        if self._model.example_input_array is not None:
            self._forward_example_input()
        for layer in summary.values():
            layer.detach_hook()
        if self._max_depth >= 1:
            summary = {name: layer for name, layer in summary.items() if name.count(".") < self._max_depth}
        return summary

    def _forward_example_input(self) -> None:
        model = self._model
        trainer = getattr(model, "_trainer", None)
        batch = model.example_input_array
        if trainer is not None:
            batch = trainer._transfer_batch(batch, 0)
            forward_context: Any = trainer._placement.forward_context()
        else:
            batch = model.on_before_batch_transfer(batch, 0)
            batch = model.transfer_batch_to_device(batch, model.device, 0)
            batch = model.on_after_batch_transfer(batch, 0)
            forward_context = contextlib.nullcontext()
        modes = {name: module.training for name, module in model.named_modules()}
        model.eval()
        try:
            with torch.no_grad(), forward_context, self._flop_counter:
                if isinstance(batch, (list, tuple)):
                    model(*batch)
                elif isinstance(batch, dict):
                    model(**batch)
                else:
                    model(batch)
        finally:
            for name, module in model.named_modules():
                module.training = modes.get(name, module.training)

    def _get_summary_data(self) -> list[tuple[str, list[str]]]:
        """The table's columns as ``(header, cells)``, with an ``other params`` row for parameters outside layers."""
        columns: list[tuple[str, list[str]]] = [
            (" ", [str(i) for i in range(len(self._layer_summary))]),
            ("Name", self.layer_names),
            ("Type", self.layer_types),
            ("Params", [get_human_readable_count(n) for n in self.param_nums]),
            ("Mode", ["train" if mode else "eval" for mode in self.training_modes]),
            ("FLOPs", [get_human_readable_count(sum(c.values())) for c in self.flop_counts.values()]),
        ]
        if self._model.example_input_array is not None:
            columns.append(("In sizes", [str(size) for size in self.in_sizes]))
            columns.append(("Out sizes", [str(size) for size in self.out_sizes]))
        leftover = self.total_parameters - self.total_layer_params
        if leftover > 0:
            extra = {" ": " ", "Name": LEFTOVER_PARAMS_NAME, "Params": get_human_readable_count(leftover)}
            for header, cells in columns:
                cells.append(extra.get(header, NOT_APPLICABLE))
        return columns

    @override
    def __str__(self) -> str:
        return format_summary_table(
            self.total_parameters,
            self.trainable_parameters,
            self.model_size,
            self.total_training_modes,
            self.total_flops,
            *self._get_summary_data(),
        )

    @override
    def __repr__(self) -> str:
        return str(self)


def summarize(lightning_module: LightningModule, max_depth: int = 1) -> ModelSummary:
    """Summarize ``lightning_module`` (Lightning's ``summarize``).

    Args:
        lightning_module: the module.
        max_depth: nesting depth of the layers listed: 1 the direct children, -1 all, 0 none.

    Returns:
        The :class:`ModelSummary`; ``str()`` of it is the table.
    """
    return ModelSummary(lightning_module, max_depth=max_depth)
