"""The dispatcher under a fake clock: grants before requests, spacing, pauses, chains."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice import errors, submissions
from sluice.clock import FakeClock
from sluice.domain import Submission, TaskStatus, WorkUnit
from sluice.engine.dispatcher import UNLIMITED, Dispatcher
from sluice.engine.execute import execute_unit
from sluice.engine.rates import Ceiling, RatesInForce
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit import holds, sendgate
from sluice.ratelimit.memory import MemoryLimiter
from sluice.ratelimit.rate import Grant, Rate
from sluice.runtime import build_catalog
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository


class FakeDsp:
    """Creates campaigns and ad groups; statuses complete on the first poll."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.arrivals: list[tuple[float, str]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.refuse_next = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrivals.append((self.clock.time(), f"{request.method} {request.url.path}"))
        if self.refuse_next:
            self.refuse_next -= 1
            return httpx.Response(429, headers={"Retry-After": "7"})
        if request.method == "POST":
            body = json.loads(request.content)
            object_id = f"o{len(self.objects) + 1}"
            self.objects[object_id] = body
            return httpx.Response(201, json={"id": object_id})
        ids = request.url.params["ids"].split(",")
        return httpx.Response(
            200, json=[{"id": i, "status": "done"} for i in ids if i in self.objects]
        )


class InlineExecutor:
    """Asks for each unit's grant and runs it at once on the caller's thread, under a send
    permit on the fake clock, and records its outcomes; each ``late_s`` entry makes one
    sender reach the send check that long after asking."""

    def __init__(self, queue: WorkQueue, runtime: dict[str, Any], clock: FakeClock) -> None:
        self.queue, self.runtime, self.clock = queue, runtime, clock
        self.granted: list[Grant] = []
        self.unsent: list[WorkUnit] = []
        self.late_s: list[float] = []

    def capacity(self, *, needs_grant: bool = True) -> int:
        return 1

    def submit(self, unit: WorkUnit, acquire: Callable[[], Grant] | None) -> Grant:
        asked_at = self.clock.monotonic()
        grant = acquire() if acquire is not None else UNLIMITED
        if not grant.granted:
            return grant
        self.granted.append(grant)
        if self.late_s:
            self.clock.advance(self.late_s.pop(0))
        provider = self.runtime["providers"][unit.provider]
        permit = sendgate.SendPermit(asked_at, grant.send_within_s, self.clock.monotonic)
        try:
            with sendgate.bound(permit):
                outcomes = execute_unit(
                    unit, provider, self.runtime["client"], self.runtime["limiter"], self.clock.now
                )
        except errors.GrantExpired:
            holds.finish(self.runtime["limiter"], grant, sent=False)
            self.unsent.append(unit)
            return grant
        holds.finish(self.runtime["limiter"], grant, sent=True)
        self.queue.apply(outcomes, self.clock.now())
        return grant

    def take_unsent(self) -> list[WorkUnit]:
        unsent, self.unsent = self.unsent, []
        return unsent


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    clock = FakeClock()
    dsp = FakeDsp(clock)
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'd.db'}",
        default_provider="acme",
        providers={
            "acme": {
                "base_url": "http://acme.test",
                "rate_limit": "5/s",
                "poll": {
                    "request": "GET /statuses?ids={ids}",
                    "interval": "1s",
                    "status_map": {"done": "Completed"},
                },
                "kinds": {
                    "campaign": {"submit": "POST /campaigns", "external_id_field": "id"},
                    "ad_group": {
                        "submit": "POST /ad_groups",
                        "external_id_field": "id",
                        "parent_field": "campaign_id",
                    },
                },
            }
        },
    )
    providers = load_providers(settings, clock=clock)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    client = build_http_client(providers["acme"], transport=httpx.MockTransport(dsp))
    queue = WorkQueue(engine)
    runtime = {"providers": providers, "client": client, "limiter": limiter}
    executor = InlineExecutor(queue, runtime, clock)
    dispatcher = Dispatcher(
        queue, providers, limiter, executor, worker_id="t", clock=clock, idle_s=0.05
    )
    repo = TaskRepository(engine, clock=clock)
    yield {
        "clock": clock,
        "dsp": dsp,
        "dispatcher": dispatcher,
        "repo": repo,
        "catalog": build_catalog(providers, "acme"),
        "executor": executor,
    }
    client.close()
    engine.dispose()


def run(world: dict[str, Any], seconds: float) -> None:
    """Step the dispatcher, advancing the fake clock by the wait it asks for."""
    clock: FakeClock = world["clock"]
    end = clock.time() + seconds
    while clock.time() < end:
        wait = world["dispatcher"].step()
        clock.advance(max(wait, 0.01))


def test_requests_are_spaced_by_the_limit(world: dict[str, Any]) -> None:
    """At 5/s no sliding second ever sees more than 5 requests, polls included."""
    items = [Submission(kind="campaign", payload={"name": f"c{i}"}) for i in range(20)]
    ids = submissions.create_tasks(world["repo"], world["catalog"], items)
    run(world, 12)
    assert {world["repo"].get(i).status for i in ids} == {TaskStatus.COMPLETED}
    times = [t for t, _ in world["dsp"].arrivals]
    for index, start in enumerate(times):
        in_window = [t for t in times[index:] if t < start + 1.0]
        assert len(in_window) <= 5
    assert len(world["executor"].granted) == len(times)


def test_a_429_pauses_the_provider_and_is_not_an_attempt(world: dict[str, Any]) -> None:
    """After a 429 with Retry-After: 7 nothing is sent for 7 s and attempts stay 0."""
    world["dsp"].refuse_next = 1
    (task_id,) = submissions.create_tasks(
        world["repo"], world["catalog"], [Submission(kind="campaign", payload={"name": "c"})]
    )
    run(world, 1)
    first = world["dsp"].arrivals[0][0]
    run(world, 10)
    after = [t for t, _ in world["dsp"].arrivals[1:]]
    assert after
    assert min(after) >= first + 7
    task = world["repo"].get(task_id)
    assert task.status is TaskStatus.COMPLETED
    assert task.attempts == 0


def test_child_is_submitted_after_parent_with_its_external_id(world: dict[str, Any]) -> None:
    """An ad group is sent only after its campaign is Completed, carrying the campaign's id."""
    ids = submissions.create_tasks(
        world["repo"],
        world["catalog"],
        [
            Submission(kind="campaign", payload={"name": "c"}),
            Submission(kind="ad_group", payload={"name": "g"}, parent_index=0),
        ],
    )
    run(world, 6)
    campaign, group = (world["repo"].get(i) for i in ids)
    assert campaign.status is TaskStatus.COMPLETED
    assert group.status is TaskStatus.COMPLETED
    assert world["dsp"].objects[group.external_id]["campaign_id"] == campaign.external_id
    paths = [p for _, p in world["dsp"].arrivals]
    assert paths.index("POST /ad_groups") > paths.index("GET /statuses")


def test_claims_are_released_on_stop(world: dict[str, Any]) -> None:
    """Tasks claimed but not sent go back to ready when the dispatcher stops."""
    ids = submissions.create_tasks(
        world["repo"],
        world["catalog"],
        [Submission(kind="campaign", payload={"name": f"c{i}"}) for i in range(10)],
    )
    world["dispatcher"].step()
    world["dispatcher"].release_all()
    world["clock"].advance(timedelta(seconds=1).total_seconds())
    unsent = [world["repo"].get(i) for i in ids if world["repo"].get(i).external_id is None]
    assert unsent
    assert all(t.phase.value == "ready" for t in unsent)


def test_one_accounts_spent_budget_does_not_hold_back_others(tmp_path: Path) -> None:
    """With a per-advertiser limit, advertiser B's work goes while A waits for its budget."""
    clock = FakeClock()
    dsp = FakeDsp(clock)
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'a.db'}",
        default_provider="acme",
        providers={
            "acme": {
                "base_url": "http://acme.test",
                "rate_limit": "100/s",
                "limits": [{"rate": "1/s", "scope": "write", "per": "advertiser_id"}],
                "kinds": {"campaign": {"submit": "POST /campaigns", "external_id_field": "id"}},
            }
        },
    )
    providers = load_providers(settings, clock=clock)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    client = build_http_client(providers["acme"], transport=httpx.MockTransport(dsp))
    queue = WorkQueue(engine)
    runtime = {"providers": providers, "client": client, "limiter": limiter}
    dispatcher = Dispatcher(
        queue, providers, limiter, InlineExecutor(queue, runtime, clock), worker_id="t", clock=clock
    )
    repo = TaskRepository(engine, clock=clock)
    items = [
        Submission(kind="campaign", payload={"advertiser_id": adv, "name": f"{adv}{n}"})
        for adv in ("A", "B")
        for n in range(3)
    ]
    submissions.create_tasks(repo, build_catalog(providers, "acme"), items)
    end = clock.time() + 0.5
    while clock.time() < end:
        clock.advance(max(dispatcher.step(), 0.01))
    sent = [obj["advertiser_id"] for obj in dsp.objects.values()]
    client.close()
    engine.dispose()
    assert sent.count("A") == 1
    assert sent.count("B") == 1


def test_a_lower_rate_in_force_spaces_requests_by_it(world: dict[str, Any]) -> None:
    """A ceiling of 2/s on the provider's key (a pin, a learned rate) rules over its 5/s."""

    class Pinned:
        def ceilings(self) -> dict[str, list[Ceiling]]:
            return {"acme": [Ceiling("pinned", Rate(2, 1.0))]}

    world["dispatcher"].rates = RatesInForce([Pinned()], clock=world["clock"])
    items = [Submission(kind="campaign", payload={"name": f"c{i}"}) for i in range(10)]
    submissions.create_tasks(world["repo"], world["catalog"], items)
    run(world, 4)
    times = [t for t, _ in world["dsp"].arrivals]
    assert len(times) >= 6
    for index, start in enumerate(times):
        assert len([t for t in times[index:] if t < start + 1.0]) <= 2
