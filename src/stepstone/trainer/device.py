"""Choosing where training runs: accelerator, devices, strategy and precision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from stepstone.errors import MisconfigurationException

__all__ = ["Placement", "resolve_placement"]

_NO_CONTEXT = contextlib.nullcontext()

_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
_STRATEGIES = ("auto", "single_device")
_UNSUPPORTED_STRATEGIES = ("deepspeed", "xla")
_PRECISIONS = {
    None: "32-true",
    32: "32-true",
    "32": "32-true",
    "32-true": "32-true",
    "bf16-mixed": "bf16-mixed",
    "16-mixed": "16-mixed",
    16: "16-mixed",
    "16": "16-mixed",
    "bf16": "bf16-mixed",
}


@dataclass
class Placement:
    """The resolved accelerator, device and precision of a single-process run."""

    accelerator: str
    device: torch.device
    precision: str
    scaler: Any = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for the forward pass (a no-op in 32-bit precision)."""
        if self.precision == "32-true":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context for training/evaluation steps (one shared no-op object in 32-bit: it runs every batch)."""
        return _NO_CONTEXT if self.precision == "32-true" else self.autocast()


def _resolve_accelerator(accelerator: Any) -> str:
    if isinstance(accelerator, str):
        accelerator = accelerator.lower()
    if accelerator not in _ACCELERATORS:
        raise MisconfigurationException(
            f"Trainer(accelerator={accelerator!r}) is invalid; choose one of {list(_ACCELERATORS)}."
        )
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise MisconfigurationException(
                f"Trainer(accelerator={accelerator!r}) was requested but no CUDA GPU is available; use "
                "accelerator='cpu' (or 'auto')."
            )
        return "cuda"
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise MisconfigurationException("Trainer(accelerator='mps') was requested but MPS is not available.")
    return str(accelerator)


def _resolve_device_index(accelerator: str, devices: Any) -> int:
    if devices in ("auto", 1, "1", -1, "-1") or devices is None:
        return 0
    if isinstance(devices, (list, tuple)) and len(devices) == 1 and isinstance(devices[0], int):
        if accelerator == "cpu":
            raise MisconfigurationException(
                f"Trainer(devices={devices!r}) lists device indices, which only GPUs have; on CPU pass devices=1."
            )
        return int(devices[0])
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1:
        raise MisconfigurationException(
            f"Trainer(devices={devices}) needs several processes: use strategy='ddp' (or 'auto') and start them "
            "with torchrun; or pass devices=1."
        )
    raise MisconfigurationException(
        f"Trainer(devices={devices!r}) is invalid; pass 'auto', 1, or [index] for a GPU."
    )


def _resolve_strategy(strategy: Any) -> None:
    name = strategy.lower() if isinstance(strategy, str) else strategy
    if name in _STRATEGIES:
        return
    if name in _UNSUPPORTED_STRATEGIES:
        raise MisconfigurationException(
            f"Trainer(strategy={strategy!r}) is not supported; use 'fsdp' to shard a large model, or 'ddp'."
        )
    raise MisconfigurationException(
        f"Trainer(strategy={strategy!r}) is unknown; use 'auto', 'single_device', 'ddp', 'ddp_spawn' or 'fsdp'."
    )


def resolve_placement(accelerator: Any, devices: Any, strategy: Any, precision: Any) -> Placement:
    """Validate and resolve the hardware arguments of the Trainer.

    Args:
        accelerator: ``"auto"``, ``"cpu"``, ``"gpu"``/``"cuda"`` or ``"mps"``.
        devices: ``"auto"``, ``1`` or ``[index]``.
        strategy: ``"auto"`` or ``"single_device"``.
        precision: ``32``/``"32-true"``, ``"bf16-mixed"`` or ``"16-mixed"``.

    Returns:
        The resolved placement.

    Raises:
        MisconfigurationException: any value that is invalid or not available here, naming it.
    """
    _resolve_strategy(strategy)
    kind = _resolve_accelerator(accelerator)
    index = _resolve_device_index(kind, devices)
    if precision not in _PRECISIONS:
        raise MisconfigurationException(
            f"Trainer(precision={precision!r}) is invalid; choose '32-true', 'bf16-mixed' or '16-mixed'."
        )
    resolved = _PRECISIONS[precision]
    device = torch.device(kind, index) if kind == "cuda" else torch.device(kind)
    scaler = None
    if resolved == "16-mixed":
        if kind != "cuda":
            raise MisconfigurationException(
                f"Trainer(precision={precision!r}) needs a CUDA GPU (float16 autocast with gradient scaling); "
                "on CPU use precision='bf16-mixed'."
            )
        scaler = torch.amp.GradScaler("cuda")
    return Placement(accelerator=kind, device=device, precision=resolved, scaler=scaler)
