"""The limiter failing after a request was sent must not lose the request's outcome.

A Redis that stops between the grant and the end of a request makes giving back the
in-flight lease (and recording a 429's pause) fail. The outcome is still written at once:
otherwise the task would sit claimed until its lease ran out (the CI failure this guards).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice import errors, submissions
from sluice.domain import Submission, TaskStatus, WorkUnit
from sluice.drivers.executor import ThreadExecutor
from sluice.engine.dispatcher import acquire
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.runtime import build_catalog
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.pauses import PauseStore
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository


class LimiterThatDies(MemoryLimiter):
    """Grants, then fails every later call as a Redis that just stopped would."""

    def release(self, lease_id: str, key: str) -> None:
        raise errors.LimiterError("redis limiter failed: connection refused")

    def pause(self, key: str, seconds: float) -> None:
        raise errors.LimiterError("redis limiter failed: connection refused")

    def hold(self, lease_id: str, key: str, seconds: float) -> None:
        raise errors.LimiterError("redis limiter failed: connection refused")


class RecordingLimiter(MemoryLimiter):
    """Records the window holds kept after each answer."""

    def __init__(self) -> None:
        super().__init__(cold_start=False)
        self.kept: list[tuple[str, float]] = []

    def hold(self, lease_id: str, key: str, seconds: float) -> None:
        self.kept.append((key, seconds))
        super().hold(lease_id, key, seconds)


def dsp(status: int) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        if status == 429:
            return httpx.Response(429, headers={"Retry-After": "30"})
        body = json.loads(request.content)
        return httpx.Response(201, json={"id": f"x-{body['name']}"})

    return httpx.MockTransport(answer)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'd.db'}",
        default_provider="acme",
        providers={
            "acme": {
                "base_url": "http://acme.test",
                "rate_limit": "50/s",
                "max_in_flight": 4,
                "kinds": {"campaign": {"submit": "POST /campaigns", "external_id_field": "id"}},
            }
        },
    )
    providers = load_providers(settings)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine)
    submissions.create_tasks(
        repo, build_catalog(providers, "acme"), [Submission(kind="campaign", payload={"name": "c"})]
    )
    yield {"providers": providers, "engine": engine, "repo": repo, "queue": WorkQueue(engine)}
    engine.dispose()


def send_one(
    world: dict[str, Any], status: int, limiter: MemoryLimiter | None = None
) -> ThreadExecutor:
    providers = world["providers"]
    provider = providers["acme"]
    queue: WorkQueue = world["queue"]
    limiter = limiter or LimiterThatDies(cold_start=False)
    client = build_http_client(provider, transport=dsp(status))
    executor = ThreadExecutor(
        queue,
        providers,
        {"acme": client},
        limiter,
        threads=2,
        pauses=PauseStore(world["engine"]),
    )
    (task,) = queue.claim_due(datetime.now(UTC), 10, "w", 120.0)
    unit = WorkUnit("acme", task.operation, (task,))
    # A loaded host may miss a grant's send window: nothing is sent then, and the unit
    # comes back through take_unsent, as it would to the dispatcher. Ask again.
    for _ in range(50):
        grant = executor.submit(unit, lambda: acquire(limiter, provider, unit, task.payload))
        assert grant.granted
        assert grant.lease_id is not None
        deadline = time.monotonic() + 10
        while not executor.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not executor.take_unsent():
            break
        time.sleep(0.05)
    executor.close()
    client.close()
    return executor


def test_an_outcome_is_written_when_the_lease_cannot_be_given_back(
    world: dict[str, Any],
) -> None:
    executor = send_one(world, 201)
    assert executor.stats.outcomes == 1
    task = world["repo"].get(1)
    assert task.external_id == "x-c"
    assert task.status is TaskStatus.COMPLETED  # no poll configured


def test_a_429_is_written_and_its_pause_kept_when_the_limiter_is_down(
    world: dict[str, Any],
) -> None:
    executor = send_one(world, 429)
    assert executor.stats.outcomes == 1
    assert [e.event for e in world["repo"].events(1)][-1] == "rate_limited"
    assert world["repo"].get(1).attempts == 0
    assert "acme" in PauseStore(world["engine"]).active(datetime.now(UTC))


def test_the_window_hold_is_kept_a_window_after_the_answer(world: dict[str, Any]) -> None:
    """Window holds (sluice/ratelimit/holds.py) through the real executor: the request's
    place on ``acme`` (50/s) is kept for up to one window after its answer was read."""
    limiter = RecordingLimiter()
    executor = send_one(world, 201, limiter)
    assert executor.stats.outcomes == 1
    ((key, seconds),) = limiter.kept
    assert key == "acme#window"
    assert 0.0 < seconds <= 1.0
