"""The dispatcher asks for no grant while the request before it may still be written late.

Through the real executor and limiter, on a fake clock, with a transport (httpx
``MockTransport``) that does what the gated transport does: admit the request under its
permit, write, note the write. Here the "write" is held back by the test, as a thread that
lost the CPU between its send check and the socket would be ("A write that ended late" in
:mod:`sluice.ratelimit.sendgate`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice import errors, submissions
from sluice.clock import FakeClock
from sluice.domain import Submission, WorkUnit
from sluice.drivers import executor as executor_module
from sluice.drivers.executor import ThreadExecutor
from sluice.engine.dispatcher import acquire
from sluice.providers.registry import load_providers
from sluice.ratelimit import MemoryLimiter, gcra, sendgate
from sluice.ratelimit.rate import Grant
from sluice.runtime import build_catalog
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository

Handler = Callable[[httpx.Request], httpx.Response]


class World:
    """One provider at 50/s, one campaign waiting, an executor sending through ``handler``."""

    def __init__(self, tmp_path: Path, handler: Handler, rate: str = "50/s") -> None:
        settings = load_settings(
            database_url=f"sqlite:///{tmp_path / 'd.db'}",
            default_provider="acme",
            providers={
                "acme": {
                    "base_url": "http://acme.test",
                    "rate_limit": rate,
                    "kinds": {"campaign": {"submit": "POST /campaigns", "external_id_field": "id"}},
                }
            },
        )
        self.providers = load_providers(settings)
        engine = db.make_engine(settings.database_url)
        db.ensure_schema(engine)
        submissions.create_tasks(
            TaskRepository(engine),
            build_catalog(self.providers, "acme"),
            [Submission(kind="campaign", payload={"name": "c"})],
        )
        self.queue = WorkQueue(engine)
        self.clock = FakeClock()
        self.limiter = MemoryLimiter(
            clock=self.clock, margin=0.005, catch_up_s=0.002, cold_start=False
        )
        self.client = httpx.Client(
            base_url="http://acme.test", transport=httpx.MockTransport(handler)
        )
        self.executor = ThreadExecutor(
            self.queue,
            self.providers,
            {"acme": self.client},
            self.limiter,
            threads=2,
            clock=self.clock,
        )
        (task,) = self.queue.claim_due(datetime.now(UTC), 10, "w", 120.0)
        self.task = task
        self.unit = WorkUnit("acme", task.operation, (task,))

    def ask(self) -> Grant:
        """What the dispatcher's grant function asks the limiter for this unit."""
        return acquire(self.limiter, self.providers["acme"], self.unit, self.task.payload)

    def submit(self) -> Grant:
        return self.executor.submit(self.unit, self.ask)

    def close(self) -> None:
        self.executor.close()
        self.client.close()


@pytest.fixture
def make_world(tmp_path: Path) -> Any:
    made: list[World] = []

    def make(handler: Handler, rate: str = "50/s") -> World:
        made.append(World(tmp_path, handler, rate))
        return made[-1]

    yield make
    for world in made:
        world.close()


def test_a_write_under_way_is_waited_for_and_pushes_the_key_back(
    make_world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its send window, a request whose check passed but whose write has not ended
    keeps the dispatcher waiting (it returned after the window, 5 ms, and asked for the
    next grant while the write was still to come); the write, 200 ms late, pushes the key
    back before the dispatcher goes on: the next grant waits a step less the window."""
    # The write waits for the test, however slowly a loaded host runs it.
    monkeypatch.setattr(executor_module, "WRITE_WAIT_MAX_S", 60.0)
    admitted, write = threading.Event(), threading.Event()
    world: World

    def handler(request: httpx.Request) -> httpx.Response:
        sendgate.admit_current()
        admitted.set()
        write.wait(30)
        world.clock.advance(0.2)  # the thread lost the CPU for 200 ms before writing
        permit = sendgate.current()
        assert permit is not None
        permit.written()
        return httpx.Response(201, json={"id": "x-1"})

    world = make_world(handler)
    answer: list[Grant] = []
    dispatcher = threading.Thread(target=lambda: answer.append(world.submit()))
    dispatcher.start()
    assert admitted.wait(30)
    dispatcher.join(0.5)  # 100 times the send window
    assert dispatcher.is_alive()  # was: gone after 5 ms
    write.set()
    dispatcher.join(30)
    assert not dispatcher.is_alive()
    (grant,) = answer
    assert world.executor.stats.written_late == 1
    (step,) = (step for key, step in grant.steps if key == "acme")
    after = world.ask()
    assert after.reason == "rate"
    expected_us = step - gcra.to_us(grant.send_within_s)
    assert gcra.to_us(after.retry_after_s) == expected_us  # was: the slot passed long ago


def test_a_request_not_yet_admitted_is_given_up(make_world: Any) -> None:
    """Past its send window, a request whose thread has not reached its send check yet is
    given up: it is never sent, even on a clock that has not moved (the time check alone
    would still pass it), and its unit goes back unsent."""
    go = threading.Event()
    sent: list[str] = []
    refused: list[Exception] = []

    def handler(request: httpx.Request) -> httpx.Response:
        go.wait(30)
        try:
            sendgate.admit_current()
        except errors.GrantExpired as exc:
            refused.append(exc)
            raise
        sent.append(request.url.path)
        return httpx.Response(201, json={"id": "x-1"})

    world = make_world(handler)
    grant = world.submit()
    assert grant.granted
    go.set()
    deadline = time.monotonic() + 30
    while not world.executor.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sent == []  # was: sent after the dispatcher had moved on
    assert len(refused) == 1
    assert world.executor.stats.expired == 1
    assert [unit.tasks for unit in world.executor.take_unsent()] == [world.unit.tasks]


def test_a_send_permit_is_freed_without_the_cyclic_collector(make_world: Any) -> None:
    """Every limited request's permit (and the grant, hand-off and stream state it holds)
    goes when its send is over, by reference counting alone: a permit that refers to itself
    (its ``on_written`` bound to it) is cyclic garbage, and every request adding some is
    what brings on the collections the embedded driver freezes its runtime against
    (``drivers/embedded.py``: 190-440 ms gaps between sends)."""
    import gc
    import weakref

    permits: list[weakref.ref[sendgate.SendPermit]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        permit = sendgate.current()
        assert permit is not None
        permits.append(weakref.ref(permit))
        sendgate.admit_current()
        permit.written()
        return httpx.Response(201, json={"id": "x-1"})

    world = make_world(handler)
    gc.collect()
    gc.disable()
    try:
        assert world.submit().granted
        deadline = time.monotonic() + 10
        while (not permits or permits[0]() is not None) and time.monotonic() < deadline:
            time.sleep(0.01)  # the pool thread lets go of its work item after the send
        (permit,) = permits
        assert permit() is None  # was: alive until the collector found the cycle
    finally:
        gc.enable()


def test_a_slow_key_waits_for_a_write_under_way_too(
    make_world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2/s key under window holds (the default for a 1 s window) gets a send window of a
    quarter to 0.35 of its spacing, 125-175 ms: more than ``SEND_WAIT_MAX_S``, so the
    dispatcher stops waiting after 100 ms and asks for the next grant while a request
    admitted before may still be written late, and a leaky bucket judging one request of
    burst can then see three in less than a spacing (grant ``k + 1`` decided before ``k``'s
    push back, sent late in its own 175 ms window). The sendgate docstring says every key
    of a second's window is far below 0.1 s."""
    monkeypatch.setattr(executor_module, "WRITE_WAIT_MAX_S", 60.0)
    admitted, write = threading.Event(), threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        sendgate.admit_current()
        admitted.set()
        write.wait(30)
        permit = sendgate.current()
        assert permit is not None
        permit.written()
        return httpx.Response(201, json={"id": "x-1"})

    world = make_world(handler, "2/s")
    answer: list[Grant] = []
    dispatcher = threading.Thread(target=lambda: answer.append(world.submit()))
    dispatcher.start()
    assert admitted.wait(30)
    dispatcher.join(2)  # 20 times SEND_WAIT_MAX_S; the write waits for the test
    waited = dispatcher.is_alive()
    write.set()
    dispatcher.join(30)
    (grant,) = answer
    assert grant.send_within_s > executor_module.SEND_WAIT_MAX_S
    assert waited  # was: back 100 ms after the grant, the write still to come
