"""The embedded driver takes what its process holds out of the cyclic collector's reach.

A full collection walked the ~130,000 objects of a built runtime (65-90 ms of CPU with the
interpreter lock held) about once per 20 s of sending; on a loaded host it was the largest
gap between two sends of a run, 190-440 ms (bench.limit_fidelity --creates-only).
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.drivers import embedded
from sluice.drivers.embedded import build_embedded_driver
from sluice.runtime import Runtime, build_runtime
from sluice.settings import load_settings


class Node:
    """A container the collector tracks."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in a process that has not frozen anything yet; unfrozen again afterwards."""
    gc.unfreeze()
    monkeypatch.setattr(embedded, "_frozen", threading.Event(), raising=False)
    yield
    gc.unfreeze()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    built = build_runtime(load_settings(database_url=f"sqlite:///{tmp_path / 'sluice.db'}"))
    yield built
    built.close()


def tracked(obj: object) -> bool:
    """Whether a collection would walk ``obj`` (frozen objects are not listed)."""
    return any(o is obj for o in gc.get_objects())


def test_start_freezes_what_is_alive_and_collects_what_is_not(
    fresh_process: None, runtime: Runtime
) -> None:
    """Objects alive before start are frozen; a cycle already garbage is collected first."""
    kept = Node()
    cycle = Node()
    cycle.other = Node()
    cycle.other.other = cycle
    gone = weakref.ref(cycle)
    del cycle
    assert tracked(kept)
    driver = build_embedded_driver(runtime)
    try:
        driver.start()
        assert not tracked(kept)
        assert gc.get_freeze_count() > 0
        assert gone() is None
    finally:
        driver.stop()


def test_a_second_start_freezes_nothing_more(fresh_process: None, runtime: Runtime) -> None:
    """Once per process: what a later driver's start finds alive stays collectable."""
    first = build_embedded_driver(runtime)
    try:
        first.start()
    finally:
        first.stop()
    later = Node()
    second = build_embedded_driver(runtime)
    try:
        second.start()
        assert tracked(later)
    finally:
        second.stop()


def test_a_second_start_collects_the_garbage_left_before_it(
    fresh_process: None, runtime: Runtime
) -> None:
    """A driver started after another collects the cycles left meanwhile (a stopped
    driver's, a closed runtime's): a full collection while it dispatches would walk them."""
    first = build_embedded_driver(runtime)
    try:
        first.start()
    finally:
        first.stop()
    gc.disable()  # only the start may collect it
    try:
        cycle = Node()
        cycle.other = Node()
        cycle.other.other = cycle
        gone = weakref.ref(cycle)
        del cycle
        assert gone() is not None
        second = build_embedded_driver(runtime)
        try:
            second.start()
            assert gone() is None
        finally:
            second.stop()
    finally:
        gc.enable()
