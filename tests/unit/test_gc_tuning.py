"""A worker's garbage collector settings (service/workers.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.workers import GC_YOUNG_THRESHOLD, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_a_worker_collects_young_objects_less_often_and_freezes_what_it_set_up() -> None:
    gc.unfreeze()
    _young, middle, old = gc.get_threshold()
    tune_garbage_collector()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, old)
    assert GC_YOUNG_THRESHOLD > 700
    # Everything tracked before the call (this module, pytest, the test's own objects) is frozen.
    assert gc.get_freeze_count() > 1000
