"""``save_hyperparameters``: which arguments, in which form, and only weights_only-safe values."""

from __future__ import annotations

import copy
import dataclasses
import enum
import io
import pickle
from argparse import Namespace
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import stepstone as L
from stepstone.core.hparams import AttributeDict, check_hparams_safe
from stepstone.errors import MisconfigurationException


class AllArgs(L.LightningModule):
    def __init__(self, lr: float = 0.1, layers: int = 2, name: str = "m", **kwargs: Any) -> None:
        super().__init__()
        self.save_hyperparameters()


def _roundtrip(value: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_all_arguments_including_kwargs() -> None:
    model = AllArgs(0.5, extra=[1, 2])
    assert model.hparams == {"lr": 0.5, "layers": 2, "name": "m", "extra": [1, 2]}
    assert model.hparams.lr == 0.5  # attribute access
    assert model._hparams_name == "kwargs"


def test_star_args_are_left_out_and_keyword_only_kept() -> None:
    class Model(L.LightningModule):
        def __init__(self, a: int, *args: Any, b: int = 2, **kwargs: Any) -> None:
            super().__init__()
            self.save_hyperparameters()

    assert Model(1, 5, 6, b=3, c=4).hparams == {"a": 1, "b": 3, "c": 4}


def test_named_arguments() -> None:
    class Model(L.LightningModule):
        def __init__(self, lr: float = 0.1, layers: int = 2, debug: bool = False) -> None:
            super().__init__()
            self.save_hyperparameters("lr", "debug")

    assert Model(debug=True).hparams == {"lr": 0.1, "debug": True}


def test_unknown_argument_name_raises() -> None:
    class Model(L.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters("lr", "momentum")

    with pytest.raises(MisconfigurationException, match=r"'momentum'.*not an argument.*\['lr'\]"):
        Model()


@pytest.mark.parametrize("ignore", ["net", ["net"], ("net", "unused")])
def test_ignore(ignore: Any) -> None:
    class Model(L.LightningModule):
        def __init__(self, net: nn.Module, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters(ignore=ignore)
            self.net = net

    assert Model(nn.Linear(1, 1)).hparams == {"lr": 0.1}


def test_modules_are_left_out_with_a_warning() -> None:
    class Model(L.LightningModule):
        def __init__(self, net: nn.Module, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()

    with pytest.warns(UserWarning, match=r"'net' is an nn.Module.*ignore=\['net'\]"):
        model = Model(nn.Linear(1, 1))
    assert model.hparams == {"lr": 0.1}


def test_single_dict_namespace_or_dataclass() -> None:
    @dataclasses.dataclass
    class Config:
        lr: float = 0.1
        sizes: tuple[int, ...] = (1, 2)

    class Model(L.LightningModule):
        def __init__(self, config: Any) -> None:
            super().__init__()
            self.save_hyperparameters(config)

    assert Model({"lr": 0.2}).hparams == {"lr": 0.2}
    assert Model({"lr": 0.2})._hparams_name == "config"
    assert Model(Namespace(lr=0.3, nested=Namespace(a=1))).hparams == {"lr": 0.3, "nested": {"a": 1}}
    model = Model(Config())
    assert model.hparams == {"lr": 0.1, "sizes": (1, 2)}
    assert type(model.hparams["sizes"]) is tuple
    with pytest.raises(MisconfigurationException, match="single positional argument"):
        Model(5)


def test_dict_outside_init() -> None:
    model = AllArgs()
    model.save_hyperparameters({"extra": 1})
    assert model.hparams == {"lr": 0.1, "layers": 2, "name": "m", "extra": 1}  # merged, as in Lightning
    with pytest.raises(MisconfigurationException, match="inside __init__"):
        model.save_hyperparameters("lr")


def test_repeated_calls_merge() -> None:
    class Model(L.LightningModule):
        def __init__(self, a: int = 1, b: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters("a")
            self.save_hyperparameters("b")

    assert Model().hparams == {"a": 1, "b": 2}


def test_arguments_of_base_classes_are_collected() -> None:
    class Base(L.LightningModule):
        def __init__(self, lr: float, width: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Child(Base):
        def __init__(self, depth: int = 3) -> None:
            super().__init__(lr=0.5, width=8)

    assert Child(depth=5).hparams == {"lr": 0.5, "width": 8, "depth": 5}


def test_subclass_argument_wins() -> None:
    class Base(L.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Child(Base):
        def __init__(self, lr: float = 0.9) -> None:
            super().__init__(lr=lr * 2)

    assert Child().hparams == {"lr": 0.9}


def test_hparams_initial_is_unaffected_by_later_edits() -> None:
    model = AllArgs(extra={"inner": [1]})
    model.hparams.lr = 99.0
    model.hparams["extra"]["inner"].append(2)
    assert model.hparams_initial["lr"] == 0.1
    assert model.hparams_initial["extra"] == {"inner": [1]}
    model.hparams_initial["lr"] = 5  # a copy: cannot corrupt the stored one
    assert model.hparams_initial["lr"] == 0.1


class Color(enum.Enum):
    RED = "red"


Point = namedtuple("Point", "x y")


class Custom:
    pass


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (Path("/data"), "hparams['value']"),
        (Custom(), "hparams['value']"),
        (Color.RED, "hparams['value']"),
        (Point(1, 2), "hparams['value']"),
        ({"deep": [1, {"p": Path("x")}]}, "hparams['value']['deep'][1]['p']"),
        ({(1, 2): "tuple key"}, "hparams['value']"),
        (np.zeros(3), "hparams['value']"),
        ({1, 2}, "hparams['value']"),
    ],
)
def test_unsafe_values_raise_at_save_time(value: Any, where: str) -> None:
    class Model(L.LightningModule):
        def __init__(self, value: Any) -> None:
            super().__init__()
            self.save_hyperparameters()

    with pytest.raises(MisconfigurationException) as info:
        Model(value)
    assert where in str(info.value)
    assert "weights_only" in str(info.value) or "key" in str(info.value)


def test_safe_values_survive_a_weights_only_load() -> None:
    class Model(L.LightningModule):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__()
            self.save_hyperparameters()

    values = {
        "s": "x",
        "i": 1,
        "f": 0.5,
        "b": True,
        "n": None,
        "c": 1 + 2j,
        "by": b"raw",
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        "size": torch.Size([2, 3]),
        "t": torch.ones(2),
        "l": [1, [2, 3]],
        "tu": (1, "a"),
        "d": {"k": {"z": 1}, 3: "int key"},
        "od": OrderedDict(a=1),
        "np_float": np.float64(0.25),
        "np_int": np.int32(3),
        "np_bool": np.bool_(True),
    }
    model = Model(**values)
    loaded = _roundtrip(dict(model.hparams))
    assert loaded["np_float"] == 0.25 and type(loaded["np_float"]) is float
    assert loaded["np_int"] == 3 and type(loaded["np_int"]) is int
    assert loaded["np_bool"] is True
    assert loaded["od"] == {"a": 1}
    assert torch.equal(loaded["t"], torch.ones(2))
    assert {k: v for k, v in loaded.items() if k != "t"} == {
        k: v for k, v in model.hparams.items() if k != "t"
    }


def test_check_hparams_safe_directly() -> None:
    check_hparams_safe({"a": [1, (2.0, None)]}, "hparams")
    with pytest.raises(MisconfigurationException, match=r"hparams\['a'\]\[1\] is a .*Custom"):
        check_hparams_safe({"a": [1, Custom()]}, "hparams")


def test_save_hyperparameters_outside_a_module_init_raises() -> None:
    class Model(L.LightningModule):
        def setup_hparams(self) -> None:
            self.save_hyperparameters()

    with pytest.raises(MisconfigurationException, match="inside __init__"):
        Model().setup_hparams()


def test_datamodule_hyperparameters() -> None:
    class DM(L.LightningDataModule):
        def __init__(self, batch_size: int = 8, root: str = "/data") -> None:
            super().__init__()
            self.save_hyperparameters(ignore="root")

    dm = DM(batch_size=4)
    assert dm.hparams == {"batch_size": 4}
    dm.hparams.batch_size = 2
    assert dm.hparams_initial == {"batch_size": 4}
    with pytest.raises(MisconfigurationException, match="Path"):

        class Bad(L.LightningDataModule):
            def __init__(self, root: Path) -> None:
                super().__init__()
                self.save_hyperparameters()

        Bad(Path("x"))


class TestAttributeDict:
    def test_attribute_access(self) -> None:
        d = AttributeDict(a=1)
        d.b = 2
        assert d == {"a": 1, "b": 2} and d.a == 1
        del d.a
        assert d == {"b": 2}
        with pytest.raises(AttributeError, match="'zz' does not exist"):
            _ = d.zz
        with pytest.raises(AttributeError):
            del d.zz

    def test_copy_and_pickle(self) -> None:
        d = AttributeDict(a=[1])
        deep = copy.deepcopy(d)
        deep.a.append(2)
        assert d.a == [1] and isinstance(deep, AttributeDict)
        assert pickle.loads(pickle.dumps(d)) == d


# --- the same programs under Lightning 2.6.6 and stepstone ---------------------------------------------


def _framework(name: str) -> Any:
    import lightning

    return lightning if name == "lightning" else L


@pytest.mark.parametrize("framework", ["lightning", "stepstone"])
def test_subclasses_collect_and_ignore_like_lightning(framework: str) -> None:
    fw = _framework(framework)

    class Parent(fw.LightningModule):
        def __init__(self, a: int = 1, b: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Child(Parent):  # its own arguments, the parent saves
        def __init__(self, c: int = 3, d: int = 4) -> None:
            super().__init__(a=5)

    class Saving(Parent):  # saves again, ignoring one of its own: dropped from what the parent saved too
        def __init__(self, c: int = 3, d: int = 4) -> None:
            super().__init__(a=5)
            self.save_hyperparameters(ignore=["d"])

    class IgnoringParent(fw.LightningModule):
        def __init__(self, a: int = 1, b: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters(ignore="b")

    class IgnoringChild(IgnoringParent):  # the subclass keeps what the parent ignored, drops its own
        def __init__(self, c: int = 3, b: int = 7) -> None:
            super().__init__(b=b)
            self.save_hyperparameters(ignore=["c"])

    class DataParent(fw.LightningDataModule):
        def __init__(self, size: int = 1, batch_size: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()

    class DataChild(DataParent):
        def __init__(self, workers: int = 3) -> None:
            super().__init__(batch_size=8)

    assert Child(c=8).hparams == {"a": 5, "b": 2, "c": 8, "d": 4}
    assert Saving(c=8).hparams == {"a": 5, "b": 2, "c": 8}
    assert Saving(c=8).hparams_initial == {"a": 5, "b": 2, "c": 8}
    assert IgnoringChild().hparams == {"a": 1, "b": 7}
    assert DataChild().hparams == {"size": 1, "batch_size": 8, "workers": 3}


@pytest.mark.parametrize("framework", ["lightning", "stepstone"])
def test_first_parameter_not_named_self_and_saving_before_super_init(framework: str) -> None:
    fw = _framework(framework)

    class Obj(fw.LightningModule):
        def __init__(obj, a: int = 1, b: str = "x") -> None:
            super().__init__()
            obj.save_hyperparameters()

    class ObjChild(Obj):
        def __init__(this, c: int = 3) -> None:
            super().__init__(a=9)

    class Early(fw.LightningModule):
        def __init__(self, a: int = 1) -> None:
            self.save_hyperparameters()  # before super().__init__(): kept
            super().__init__()

    assert Obj(a=2).hparams == {"a": 2, "b": "x"}
    assert ObjChild().hparams == {"a": 9, "b": "x", "c": 3}
    early = Early(a=4)
    assert early.hparams == {"a": 4} and early.hparams_initial == {"a": 4}


def test_explicit_parent_init_calls_collect_arguments() -> None:
    # Deliberate difference: with Base.__init__(self, ...) instead of super().__init__(...), Lightning 2.6.6
    # finds no arguments at all (hparams == {}).
    class Base(L.LightningModule):
        def __init__(self, lr: float = 0.1, width: int = 4) -> None:
            L.LightningModule.__init__(self)
            self.save_hyperparameters()

    class Child(Base):
        def __init__(self, depth: int = 3) -> None:
            Base.__init__(self, lr=0.5)

    assert Child(depth=5).hparams == {"lr": 0.5, "width": 4, "depth": 5}


def test_a_module_built_inside_another_keeps_only_its_own_arguments() -> None:
    # Deliberate difference: Lightning also collects the enclosing module's __init__ arguments (x below).
    class Inner(L.LightningModule):
        def __init__(self, y: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Outer(L.LightningModule):
        def __init__(self, x: int = 1) -> None:
            super().__init__()
            self.inner = Inner(y=5)
            self.save_hyperparameters()

    outer = Outer()
    assert outer.hparams == {"x": 1} and outer.inner.hparams == {"y": 5}


def test_an_argument_both_named_and_ignored_is_an_error() -> None:
    class Model(L.LightningModule):
        def __init__(self, a: int = 1, c: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters("a", "c", ignore="c")

    # Lightning fails with a bare KeyError: 'c'.
    with pytest.raises(MisconfigurationException, match="'c' is both saved and ignored"):
        Model()


def test_logger_flag_given_before_super_init_is_kept() -> None:
    class Model(L.LightningModule):
        def __init__(self, a: int = 1) -> None:
            self.save_hyperparameters()
            super().__init__()

    # Deliberate difference: Lightning's mixin __init__ resets the flag to False, silently dropping the request
    # to log these hyperparameters; stepstone keeps what save_hyperparameters() asked for.
    assert Model()._log_hyperparams is True


def test_a_module_that_never_saves_hyperparameters_logs_none() -> None:
    class Model(L.LightningModule):
        pass

    assert Model()._log_hyperparams is False  # Lightning's default: no hparams.yaml for such a run


@pytest.mark.parametrize("framework", ["lightning", "stepstone"])
def test_module_and_datamodule_hparams_that_conflict_stop_the_run(framework: str, tmp_path: Path) -> None:
    fw = _framework(framework)

    class Model(fw.LightningModule):
        def __init__(self, lr: float = 0.1, batch_size: Any = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(fw.LightningDataModule):
        def __init__(self, batch_size: Any = 4, seed: int = 0, log: bool = True) -> None:
            super().__init__()
            self.save_hyperparameters(ignore="log", logger=log)

        def train_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 2)), batch_size=2)

    def fit(model: Any, data: Any, **kwargs: Any) -> Any:
        trainer = fw.Trainer(
            default_root_dir=tmp_path,
            max_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **kwargs,
        )
        trainer.fit(model, datamodule=data)
        return trainer

    for data in (Data(batch_size=8), Data(batch_size=4.0)):  # a different value, or type
        with pytest.raises(RuntimeError, match=r"the keys \['batch_size'\] are present in both"):
            fit(Model(), data)
    assert fit(Model(), Data(batch_size=8), logger=False).global_step == 1  # nothing logged, nothing checked
    assert fit(Model(), Data(batch_size=8, log=False)).global_step == 1  # the datamodule's are not logged
    log_dir = Path(fit(Model(), Data(batch_size=4)).logger.log_dir)  # equal values: merged, logged once
    assert yaml.safe_load((log_dir / "hparams.yaml").read_text()) == {"lr": 0.1, "batch_size": 4, "seed": 0}


def _hparams_module_classes(fw: Any) -> dict[str, type]:
    """Modules saving their hyperparameters each way Lightning names differently in ``hparams_name``."""
    base = _hparams_base_class(fw)
    return {**_classes_saving_init_arguments(base), **_classes_saving_given_objects(base)}


def _hparams_base_class(fw: Any) -> type:
    """A linear module of ``fw`` (either framework) that trains; it saves no hyperparameters."""

    class Base(fw.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Base


def _classes_saving_init_arguments(base: Any) -> dict[str, type]:
    """``save_hyperparameters()`` or ``save_hyperparameters("lr")``: the hyperparameters are ``__init__``'s."""

    class Plain(base):
        def __init__(self, lr: float = 0.1, depth: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Named(base):
        def __init__(self, lr: float = 0.1, depth: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters("lr")

    class Kwargs(base):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__()
            self.save_hyperparameters()

    class NoArguments(base):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters()

    return {"plain": Plain, "named": Named, "kwargs": Kwargs, "no_arguments": NoArguments}


def _classes_saving_given_objects(base: Any) -> dict[str, type]:
    """``save_hyperparameters(obj)`` with a dict or Namespace, passed in or built in ``__init__``."""

    class DictArgument(base):
        def __init__(self, config: Any = None) -> None:
            super().__init__()
            self.save_hyperparameters(config)

    class DictLiteral(base):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters({"lr": lr, "built": True})

    class NamespaceArgument(base):
        def __init__(self, args: Any = None) -> None:
            super().__init__()
            self.save_hyperparameters(args)

    class NamespaceBuilt(base):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters(Namespace(lr=lr))

    return {
        "dict_argument": DictArgument,
        "dict_literal": DictLiteral,
        "namespace_argument": NamespaceArgument,
        "namespace_built": NamespaceBuilt,
    }


_HPARAMS_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "named": {},
    "kwargs": {"lr": 0.5, "depth": 3},
    "no_arguments": {},
    "dict_argument": {"config": {"lr": 0.2}},
    "dict_literal": {},
    "namespace_argument": {"args": Namespace(lr=0.3)},
    "namespace_built": {},
}


def _saved_hparams(framework: str, case: str, path: Path) -> tuple[Any, Any, Any]:
    """Fit one step, save; return the file's ``hparams_name`` (or "absent"), its hyperparameters, and
    the hyperparameters of the model loaded back from the file."""
    fw = _framework(framework)
    cls = _hparams_module_classes(fw)[case]
    trainer = fw.Trainer(
        default_root_dir=path.parent,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 2)), batch_size=2)
    trainer.fit(cls(**_HPARAMS_CASES[case]), data)
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    loaded = cls.load_from_checkpoint(path)
    return saved.get("hparams_name", "absent"), saved.get("hyper_parameters"), dict(loaded.hparams)


@pytest.mark.parametrize("case", sorted(_HPARAMS_CASES))
def test_checkpoint_hparams_name_matches_lightning(case: str, tmp_path: Path) -> None:
    ours = _saved_hparams("stepstone", case, tmp_path / "stepstone.ckpt")
    assert ours == _saved_hparams("lightning", case, tmp_path / "lightning.ckpt")
