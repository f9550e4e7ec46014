"""is_picklable: the same answers as Lightning 2.6.6's, at Lightning's import paths."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from lightning.pytorch.utilities import is_picklable as pl_is_picklable

from stepstone.utilities import AttributeDict, is_picklable
from stepstone.utilities.parsing import is_picklable as from_parsing


class _Local:
    pass


@pytest.mark.parametrize(
    "obj",
    [
        1,
        "x",
        [1, {"a": 2}],
        AttributeDict(a=1),
        _Local(),
        lambda x: x,
        threading.Lock(),
        type("Dyn", (), {})(),
    ],
    ids=["int", "str", "nested", "attrdict", "module_class", "lambda", "lock", "dynamic_class"],
)
def test_is_picklable_answers_as_lightning(obj: Any) -> None:
    assert is_picklable(obj) == pl_is_picklable(obj)


def test_is_picklable_is_where_lightning_exports_it() -> None:
    assert from_parsing is is_picklable
    assert not is_picklable(lambda: None) and is_picklable({"lr": 0.1})
