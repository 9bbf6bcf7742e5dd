"""Units that need no grant may wait, queued, for a send thread; units that need one never
wait behind them (``ThreadExecutor.capacity``, ``QUEUED_PER_THREAD``).

Through the real executor and store, with a transport (httpx ``MockTransport``) that holds
every request until the test lets it go, so what runs and what waits is the test's to see.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice import submissions
from sluice.domain import Submission, TaskStatus, WorkUnit
from sluice.drivers.executor import QUEUED_PER_THREAD, ThreadExecutor
from sluice.providers.registry import load_providers
from sluice.ratelimit import MemoryLimiter
from sluice.runtime import build_catalog
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository

THREADS = 2


class Held:
    """A provider that answers each create only once the test lets it go."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = threading.Semaphore(0)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.release()
        try:
            assert self.go.wait(60)
            return httpx.Response(201, json={"id": f"x-{request.content.decode()[-6:-2]}"})
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def world(tmp_path: Path) -> Any:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'd.db'}",
        default_provider="acme",
        providers={
            "acme": {
                "base_url": "http://acme.test",
                "kinds": {"campaign": {"submit": "POST /campaigns", "external_id_field": "id"}},
            }
        },
    )
    providers = load_providers(settings)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine)
    count = THREADS * (1 + QUEUED_PER_THREAD) + 1
    ids = submissions.create_tasks(
        repo,
        build_catalog(providers, "acme"),
        [Submission(kind="campaign", payload={"name": f"c{i:04d}"}) for i in range(count)],
    )
    held = Held()
    client = httpx.Client(base_url="http://acme.test", transport=httpx.MockTransport(held))
    queue = WorkQueue(engine)
    executor = ThreadExecutor(
        queue, providers, {"acme": client}, MemoryLimiter(cold_start=False), threads=THREADS
    )
    due = queue.claim_due(datetime.now(UTC), count, "w", 120.0)
    units = [WorkUnit("acme", task.operation, (task,)) for task in due]
    yield {"executor": executor, "held": held, "units": units, "repo": repo, "ids": ids}
    held.go.set()
    executor.close()
    client.close()
    engine.dispose()


def test_units_needing_no_grant_wait_queued_and_units_needing_one_do_not(world: Any) -> None:
    executor: ThreadExecutor = world["executor"]
    held: Held = world["held"]
    units: list[WorkUnit] = world["units"]
    queued = THREADS * QUEUED_PER_THREAD
    assert executor.capacity(needs_grant=True) == THREADS
    assert executor.capacity(needs_grant=False) == THREADS + queued
    for index, unit in enumerate(units[:-1]):
        assert executor.capacity(needs_grant=False) == THREADS + queued - index
        assert executor.submit(unit, None).granted
    for _ in range(THREADS):
        assert held.started.acquire(timeout=30)
    # Every thread busy and every queued place taken: nothing more, of either kind.
    assert executor.capacity(needs_grant=False) == 0
    # A unit needing a grant would wait behind the queued ones: it waits for a free thread.
    assert executor.capacity(needs_grant=True) == -queued
    assert held.most == THREADS
    held.go.set()
    executor.submit(units[-1], None)
    for _ in range(len(units) - THREADS):  # every queued unit started (not given back)
        assert held.started.acquire(timeout=30)
    executor.close()
    assert held.most == THREADS  # never more requests at once than threads
    # Every unit was sent and its outcome written, queued ones included.
    statuses = {world["repo"].get(i).status for i in world["ids"]}
    assert statuses <= {TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED}


def test_units_still_queued_when_the_executor_closes_are_not_sent(world: Any) -> None:
    """A stop lets requests in flight finish and gives the other claims back
    (docs/architecture.md, "SIGTERM drains"): a unit still queued for a thread is not in
    flight, so it comes back unsent (``take_unsent``) instead of being sent during the stop."""
    executor: ThreadExecutor = world["executor"]
    held: Held = world["held"]
    units: list[WorkUnit] = world["units"]
    queued = THREADS * QUEUED_PER_THREAD
    for unit in units[: THREADS + queued]:
        executor.submit(unit, None)
    for _ in range(THREADS):
        assert held.started.acquire(timeout=30)
    closer = threading.Thread(target=executor.close)
    closer.start()
    assert executor._closing.wait(30)
    held.go.set()
    closer.join(60)
    assert not closer.is_alive()
    assert not held.started.acquire(blocking=False)  # only the THREADS in flight were sent
    unsent = sorted(t.id for u in executor.take_unsent() for t in u.tasks)
    assert unsent == sorted(t.id for u in units[THREADS : THREADS + queued] for t in u.tasks)
    assert executor.idle()
