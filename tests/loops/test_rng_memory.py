"""The global generators' states read from memory equal what getstate()/get_state() report, after any change."""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from stepstone.loops import rng_memory
from stepstone.loops.rng_memory import numpy_state, python_state


@pytest.fixture(autouse=True)
def _keep_global_generators() -> Iterator[None]:
    python, bit_generator = random.getstate(), np.random.get_bit_generator()
    numpy = np.random.get_state(legacy=True)
    yield
    random.setstate(python)
    np.random.set_bit_generator(bit_generator)
    np.random.set_state(numpy)


def _python_reference() -> tuple[Any, ...]:
    version, internal, gauss_next = random.getstate()
    return version, array("I", internal).tobytes(), gauss_next


def _numpy_reference() -> tuple[Any, ...]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return str(kind), keys.tobytes(), int(pos), int(has_gauss), float(cached)


def _numpy_steps() -> list[tuple[str, Callable[[], object]]]:
    kind, keys, pos, _, _ = np.random.get_state(legacy=True)
    return [
        ("no draw", lambda: None),
        ("no draw again", lambda: None),
        ("normal: draws two, caches one", np.random.normal),
        ("normal: takes the cached one, MT19937 untouched", np.random.normal),
        ("normal again", np.random.normal),
        ("seed drops the cache", lambda: np.random.seed(3)),
        ("three normals", lambda: np.random.standard_normal(3)),
        ("past the 624-word regeneration", lambda: np.random.randint(0, 2**31, size=2000)),
        # The same MT19937 bytes as before, with a cached gaussian set: only the cache tells them apart.
        ("set_state, cache set", lambda: np.random.set_state((kind, keys, pos, 1, 0.25))),
        ("set_state, same key, cache dropped", lambda: np.random.set_state((kind, keys, pos, 0, 0.0))),
        ("set_state, same key, cache set again", lambda: np.random.set_state((kind, keys, pos, 1, -7.5))),
        ("uniform", np.random.random),
        ("a new global bit generator", lambda: np.random.set_bit_generator(np.random.MT19937(11))),
        ("normal from it", np.random.normal),
    ]


def test_numpy_state_equals_get_state_through_draws_seeding_and_set_state() -> None:
    for name, step in _numpy_steps():
        step()
        assert numpy_state(np) == _numpy_reference(), name
        cache = rng_memory._numpy_cache
        # Read from memory (not through the get_state fallback), from the current bit generator.
        assert cache is not None and cache[2] is not None and cache[1] is np.random.get_bit_generator(), name


def test_numpy_state_keeps_a_nan_cached_gaussian() -> None:
    kind, keys, pos, _, _ = np.random.get_state(legacy=True)
    np.random.set_state((kind, keys, pos, 1, float("nan")))
    read = numpy_state(np)
    assert read[:4] == _numpy_reference()[:4] and np.isnan(read[4])


def test_python_state_equals_getstate_through_draws_seeding_and_setstate() -> None:
    saved = random.getstate()
    steps: list[tuple[str, Callable[[], object]]] = [
        ("no draw", lambda: None),
        ("random", random.random),
        ("gauss keeps its second value in gauss_next", lambda: random.gauss(0, 1)),
        ("gauss takes it", lambda: random.gauss(0, 1)),
        ("seed", lambda: random.seed(5)),
        ("past the 624-word regeneration", lambda: random.getrandbits(30_000)),
        ("setstate", lambda: random.setstate(saved)),
        ("shuffle", lambda: random.shuffle(list(range(100)))),
    ]
    for name, step in steps:
        step()
        assert python_state() == _python_reference(), name
        cache = rng_memory._python_cache
        assert cache is not None and cache[1] is not None, name


def test_without_readable_memory_the_public_getters_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rng_memory, "_ON_CPYTHON", False)
    monkeypatch.setattr(rng_memory, "_python_cache", None)
    monkeypatch.setattr(rng_memory, "_numpy_cache", None)
    np.random.normal()
    random.gauss(0, 1)
    assert numpy_state(np) == _numpy_reference() and python_state() == _python_reference()
    assert rng_memory._numpy_cache is not None and rng_memory._numpy_cache[2] is None
    assert rng_memory._python_cache is not None and rng_memory._python_cache[1] is None


def test_a_layout_that_does_not_read_back_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gaussian cache not where the probe found it (another numpy layout): the global check rejects it."""
    monkeypatch.setattr(rng_memory, "_numpy_cache", None)
    found = rng_memory._find_aug_offset(np)
    assert found is not None
    monkeypatch.setattr(rng_memory, "_aug_searched", True)
    monkeypatch.setattr(rng_memory, "_aug_offset", found + 8)
    kind, keys, pos, _, _ = np.random.get_state(legacy=True)
    np.random.set_state((kind, keys, pos, 1, 0.5))
    assert numpy_state(np) == _numpy_reference()
    assert rng_memory._numpy_cache is not None and rng_memory._numpy_cache[2] is None
