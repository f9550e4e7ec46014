"""HyperparametersMixin: the same classes under Lightning 2.6.6 and stepstone give the same hparams."""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as PL
import pytest
from lightning.pytorch.core.mixins import HyperparametersMixin as PLMixin

import stepstone as SS
from stepstone.core.mixins import HyperparametersMixin
from stepstone.core.mixins.hparams_mixin import HyperparametersMixin as MixinFromModule
from stepstone.errors import MisconfigurationException

MIXINS = {"lightning": PLMixin, "stepstone": HyperparametersMixin}


def _classes(mixin: type) -> dict[str, type]:
    """Plain classes (no nn.Module) using the mixin in each of Lightning's documented ways."""

    class All(mixin):  # type: ignore[misc, valid-type]
        def __init__(self, arg1: int, arg2: str, arg3: float = 3.14) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Named(mixin):  # type: ignore[misc, valid-type]
        def __init__(self, arg1: int, arg2: str, arg3: float = 3.14) -> None:
            super().__init__()
            self.save_hyperparameters("arg1", "arg3", logger=False)

    class Ignored(mixin):  # type: ignore[misc, valid-type]
        def __init__(self, arg1: int, arg2: str, arg3: float = 3.14) -> None:
            super().__init__()
            self.save_hyperparameters(ignore="arg2")

    class Single(mixin):  # type: ignore[misc, valid-type]
        def __init__(self, params: Namespace) -> None:
            super().__init__()
            self.save_hyperparameters(params)

    class Child(All):
        def __init__(self, arg1: int, arg2: str, extra: int = 7, **kwargs: Any) -> None:
            super().__init__(arg1, arg2)
            self.save_hyperparameters(ignore=["arg2"])

    return {"All": All, "Named": Named, "Ignored": Ignored, "Single": Single, "Child": Child}


_ARGS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "All": ((1, "abc"), {}),
    "Named": ((1, "abc"), {"arg3": 2.5}),
    "Ignored": ((1, "abc"), {}),
    "Single": ((Namespace(p1=1, p2="abc", p3=3.14),), {}),
    "Child": ((1, "abc"), {"color": "red"}),
}


@pytest.mark.parametrize("kind", sorted(_ARGS))
def test_a_plain_class_gets_the_hparams_lightning_gives_it(kind: str) -> None:
    seen = {}
    for name, mixin in MIXINS.items():
        args, kwargs = _ARGS[kind]
        obj = _classes(mixin)[kind](*args, **kwargs)
        seen[name] = (dict(obj.hparams), dict(obj.hparams_initial), obj._log_hyperparams)
    assert seen["stepstone"] == seen["lightning"]


def test_hparams_initial_is_a_deep_copy_as_in_lightning() -> None:
    for mixin in MIXINS.values():
        obj = _classes(mixin)["Single"](Namespace(sizes=[1, 2]))
        obj.hparams.sizes.append(3)
        obj.hparams.new = 1
        assert dict(obj.hparams_initial) == {"sizes": [1, 2]}
        obj.hparams_initial["sizes"].append(4)  # a copy each time: the saved one is unchanged
        assert dict(obj.hparams_initial) == {"sizes": [1, 2]}


def test_a_class_that_never_saves_has_empty_hparams_and_logs_none() -> None:
    for mixin in MIXINS.values():

        class Bare(mixin):  # type: ignore[misc, valid-type]
            pass

        obj = Bare()
        assert (dict(obj.hparams), dict(obj.hparams_initial), obj._log_hyperparams) == ({}, {}, False)


def test_a_dataclass_saving_in_post_init_gets_its_fields() -> None:
    seen = {}
    for name, mixin in MIXINS.items():

        @dataclass
        class Config(mixin):  # type: ignore[misc, valid-type]
            width: int
            depth: int = 2

            def __post_init__(self) -> None:
                super().__init__()
                self.save_hyperparameters()

        seen[name] = dict(Config(64).hparams)
    assert seen["stepstone"] == seen["lightning"] == {"width": 64, "depth": 2}


def test_remove_ignored_hparams_drops_saved_keys() -> None:
    for mixin in MIXINS.values():
        obj = _classes(mixin)["All"](1, "abc")
        obj.remove_ignored_hparams(["arg2", "unknown"])
        assert dict(obj.hparams) == {"arg1": 1, "arg3": 3.14}


def test_the_mixin_is_where_lightning_exports_it_and_the_core_classes_use_it() -> None:
    assert MixinFromModule is HyperparametersMixin
    for pl, mixin in ((PL, PLMixin), (SS, HyperparametersMixin)):
        assert issubclass(pl.LightningModule, mixin)
        assert issubclass(pl.LightningDataModule, mixin)
    assert not hasattr(PL, "HyperparametersMixin") and not hasattr(SS, "HyperparametersMixin")


def test_a_value_a_weights_only_checkpoint_refuses_is_refused_by_the_mixin_too() -> None:
    classes = _classes(HyperparametersMixin)
    with pytest.raises(MisconfigurationException, match=r"hparams\['arg2'\]"):
        classes["All"](1, object())
