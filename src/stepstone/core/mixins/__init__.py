"""Mixins of the core classes (Lightning's ``lightning.pytorch.core.mixins``)."""

from stepstone.core.mixins.hparams_mixin import HyperparametersMixin

__all__ = ["HyperparametersMixin"]
