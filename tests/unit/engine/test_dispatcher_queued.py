"""What the dispatcher hands over when units needing no grant may wait queued for a send
thread (``Executor.capacity(needs_grant=False)``): a queued unit waits for a thread to free,
so its claim must have room for that wait as well as for its own request."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sluice import submissions
from sluice.clock import FakeClock
from sluice.domain import Submission, WorkUnit
from sluice.engine.dispatcher import UNLIMITED, Dispatcher, lease_guard_s
from sluice.providers.registry import load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.ratelimit.rate import Grant
from sluice.runtime import build_catalog
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository

KINDS = {"campaign": {"submit": "POST /campaigns", "external_id_field": "id"}}


class ModelExecutor:
    """``threads`` send threads and as many queued places (as ``ThreadExecutor``); the test
    ends units itself (:meth:`finish`)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.running = 0
        self.open = True
        self.handed: list[tuple[str, bool]] = []

    def capacity(self, *, needs_grant: bool = True) -> int:
        if not self.open:
            return 0
        free = self.threads - self.running
        return free if needs_grant else free + self.threads

    def submit(self, unit: WorkUnit, acquire: Callable[[], Grant] | None) -> Grant:
        self.running += 1
        self.handed.append((unit.provider, acquire is not None))
        return UNLIMITED if acquire is None else acquire()

    def finish(self, count: int = 1) -> None:
        self.running -= count

    def take_unsent(self) -> list[WorkUnit]:
        return []


def _world(tmp_path: Path, providers_config: dict[str, Any], executor: ModelExecutor) -> Any:
    clock = FakeClock()
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'q.db'}",
        default_provider=next(iter(providers_config)),
        providers=providers_config,
    )
    providers = load_providers(settings, clock=clock)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, clock=clock)
    for name in providers_config:
        submissions.create_tasks(
            repo,
            build_catalog(providers, name),
            [Submission(kind="campaign", payload={"name": f"{name}{n}"}) for n in range(6)],
        )
    queue = WorkQueue(engine)
    dispatcher = Dispatcher(
        queue,
        providers,
        MemoryLimiter(clock=clock, margin=0.0, cold_start=False),
        executor,
        worker_id="t",
        clock=clock,
        lease_s=600.0,
    )
    return clock, providers, engine, dispatcher


def test_a_unit_that_would_wait_queued_needs_lease_for_the_wait_too(tmp_path: Path) -> None:
    """A queued unit waits for a busy thread's request to end (up to the lease guard: about
    three timeouts) before its own starts: with less than two guards of lease left it waits
    for a free thread instead, or its request could still run when the lease ends and
    another worker recovers the task."""
    executor = ModelExecutor(threads=1)
    executor.open = False
    config = {"free": {"base_url": "http://free.test", "kinds": KINDS}}
    clock, providers, engine, dispatcher = _world(tmp_path, config, executor)
    dispatcher.step()  # claims into the lane; every place busy
    assert dispatcher.lanes["free"].units
    guard = lease_guard_s(providers["free"], dispatcher.lease_s)
    assert guard < dispatcher.lease_s / 4
    # A guard and a half of lease left: enough to start now, not to wait first.
    clock.advance(dispatcher.lease_s - guard * 1.5)
    executor.open = True
    executor.running = executor.threads  # every thread busy: a unit handed over would queue
    dispatcher.step()
    assert executor.handed == []  # not queued behind the busy thread
    executor.finish()  # a thread frees: now it starts at once, with a guard and a half left
    dispatcher.step()
    engine.dispose()
    assert executor.handed == [("free", False)]
    assert dispatcher.stats.stale == 0


@pytest.mark.parametrize("first", ["paced", "free"])
def test_a_limited_provider_is_not_kept_from_threads_by_one_with_no_limit(
    tmp_path: Path, first: str
) -> None:
    """Units needing a grant go only to a free thread, never behind queued ones. While one
    waits for a thread, a provider with no limit queues nothing more (nor takes the thread
    that frees), or it would keep every thread busy and the queue full for as long as it
    has work, and the limited provider would never send (whichever lane comes first)."""
    executor = ModelExecutor(threads=1)
    free = {"base_url": "http://free.test", "kinds": KINDS}
    paced = {"base_url": "http://paced.test", "rate_limit": "100/s", "kinds": KINDS}
    config = {"paced": paced, "free": free} if first == "paced" else {"free": free, "paced": paced}
    clock, _, engine, dispatcher = _world(tmp_path, config, executor)
    executor.running = 2 * executor.threads  # busy with earlier units, one queued
    for _ in range(6):
        clock.advance(max(dispatcher.step(), 0.01))
        if ("paced", True) in executor.handed:
            break
        executor.finish()  # the busy thread's request ends; a queued unit (if any) starts
    engine.dispose()
    assert ("paced", True) in executor.handed
    assert executor.running <= 2 * executor.threads


def test_only_units_needing_no_grant_are_queued_behind_busy_threads(tmp_path: Path) -> None:
    """With every thread busy, a provider with no limit still hands units over to wait for
    a thread (up to the queued places); a limited provider's wait for a free thread, so
    they never sit behind queued ones with their send window running."""
    executor = ModelExecutor(threads=3)
    config = {
        "free": {"base_url": "http://free.test", "kinds": KINDS},
        "paced": {"base_url": "http://paced.test", "rate_limit": "100/s", "kinds": KINDS},
    }
    clock, _, engine, dispatcher = _world(tmp_path, config, executor)
    executor.running = executor.threads  # every thread busy, every queued place free
    for _ in range(3):
        clock.advance(max(dispatcher.step(), 0.01))
    engine.dispose()
    assert executor.handed == [("free", False)] * 3
