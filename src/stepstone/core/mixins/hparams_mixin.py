"""``HyperparametersMixin``: ``save_hyperparameters()``, ``hparams`` and ``hparams_initial`` for any class.

The LightningModule and the LightningDataModule get their hyperparameters from it; a plain class (a model
component, a config holder) can use it too, as in Lightning. How the arguments are collected and checked is
in :mod:`stepstone.core.hparams`.
"""

from __future__ import annotations

import copy
import inspect
import types
from collections.abc import Sequence
from typing import Any

from stepstone.core.hparams import AttributeDict, init_hparams_state, save_hyperparameters

__all__ = ["HyperparametersMixin"]


class HyperparametersMixin:
    """Store a class's ``__init__`` arguments as its hyperparameters (Lightning's ``HyperparametersMixin``).

    Example::

        class Encoder(HyperparametersMixin):
            def __init__(self, width: int, depth: int = 2) -> None:
                super().__init__()
                self.save_hyperparameters()

        Encoder(64).hparams  # {"width": 64, "depth": 2}
    """

    __jit_unused_properties__: list[str] = ["hparams", "hparams_initial"]
    # Set by init_hparams_state() / save_hyperparameters(); declared here for the type checker.
    _hparams: AttributeDict | None
    _hparams_initial: AttributeDict | None
    _hparams_name: str | None
    _log_hyperparams: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        init_hparams_state(self)

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Store the ``__init__`` arguments in ``self.hparams`` (and, for modules, in every checkpoint).

        It reads the arguments of every ``__init__`` (the subclass's and its bases') constructing ``self``; it
        may be called before ``super().__init__()``. Repeated calls merge.

        Args:
            *args: nothing (all arguments), argument names, or one dict/Namespace/dataclass to use as hparams.
            ignore: an argument name or names to leave out (also dropped if a base class saved them).
            frame: the frame to read the arguments from (default: the caller's).
            logger: whether the Trainer sends the hyperparameters to its loggers.

        Raises:
            MisconfigurationException: an argument name is unknown or also ignored, or a value cannot be stored
                in a checkpoint that loads with ``torch.load(weights_only=True)``.
        """
        self._log_hyperparams = logger
        save_hyperparameters(self, args, ignore, frame or inspect.currentframe())

    def remove_ignored_hparams(self, ignore_list: list[str]) -> None:
        """Drop hyperparameters a previous ``save_hyperparameters()`` call (a base class's) stored.

        Args:
            ignore_list: names of the hyperparameters to remove; unknown names are skipped.
        """
        for key in ignore_list:
            self.hparams.pop(key, None)

    @property
    def hparams(self) -> AttributeDict:
        """The saved hyperparameters, an attribute-accessible dict that you may change."""
        hparams = getattr(self, "_hparams", None)
        if hparams is None:
            hparams = AttributeDict()
            self._hparams = hparams
        return hparams

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of the hyperparameters as saved, unaffected by later changes of :attr:`hparams`."""
        initial = getattr(self, "_hparams_initial", None)
        return copy.deepcopy(initial) if initial is not None else AttributeDict()
