"""Retries of tasks whose status reads found no object (``object_gone``): never a second
live object at the provider, never the missing id polled on every retry.

Each test drives the real store (SQLite), the real HTTP provider adapter and the engine's
decisions against a small fake DSP behind ``httpx.MockTransport``, on a fake clock. The
scenarios came from a review of the change (helper branch ``review-gone``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.clock import FakeClock
from sluice.domain import Actor, Phase, Submission, Task, TaskStatus
from sluice.engine.bulkjobs import BulkJobRunner
from sluice.engine.dispatcher import build_units
from sluice.engine.execute import execute_unit
from sluice.providers.base import Provider
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.bulkjobs import BulkJobs
from sluice.store.filters import TaskFilter
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository
from tests.integration.test_lifecycle_machine import PROVIDERS, REF, STATUS_MAP

LEASE_S = 60.0
LOCAL = Actor(kind="cli")


def providers(**extra: Any) -> dict[str, Any]:
    """The lifecycle machine's provider (a campaign has a lookup), plus a polled kind with
    no lookup (``report``)."""
    table = copy.deepcopy(PROVIDERS["acme"])
    table["kinds"]["report"] = {
        "submit": "POST /reports",
        "status": "GET /reports/{external_id}",
        "status_map": STATUS_MAP,
        **REF,
    }
    return {"acme": {**table, **extra}}


class Dsp:
    """Objects by id; optionally remembers Idempotency-Key answers (like Stripe's 24 h)."""

    def __init__(self, idempotency: bool = False) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, str] = {}
        self.idempotency = idempotency
        self.created = 0
        self.script: list[httpx.Response] = []  # answers to the next status reads
        self.creates: list[str] = []
        self.status_path_broken = False  # every status read answers 404 (a wrong path)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = [p for p in request.url.path.split("/") if p]
        if request.method == "POST":
            key = request.headers.get("Idempotency-Key")
            if self.idempotency and key in self.keys:
                return httpx.Response(201, json={"id": self.keys[key]})
            body = json.loads(request.content)
            self.created += 1
            object_id = f"{parts[0][:3]}-{self.created}"
            self.objects[object_id] = {
                "id": object_id,
                "client_ref": body["client_ref"],
                "status": "pending",
            }
            self.creates.append(object_id)
            if self.idempotency and key is not None:
                self.keys[key] = object_id
            return httpx.Response(201, json={"id": object_id})
        if len(parts) == 1:
            ref = request.url.params["client_ref"]
            found = [o for o in self.objects.values() if o["client_ref"] == ref]
            return httpx.Response(200, json={"data": found})
        if self.script:
            return self.script.pop(0)
        if self.status_path_broken:
            return httpx.Response(404, json={"error": {"message": "no such route"}})
        found_object = self.objects.get(parts[1])
        if found_object is None:
            return httpx.Response(404, json={"error": {"message": f"{parts[1]} not found"}})
        if found_object["status"] == "pending":
            found_object["status"] = "active"  # done by its second read
            return httpx.Response(200, json={"status": "pending"})
        return httpx.Response(200, json={"status": found_object["status"]})


class Harness:
    def __init__(self, tmp_path: Path, dsp: Dsp, **extra: Any) -> None:
        url = f"sqlite:///{tmp_path / 'review.db'}"
        self.engine = db.make_engine(url)
        db.ensure_schema(self.engine)
        self.clock = FakeClock()
        self.dsp = dsp
        settings = load_settings(
            database_url=url, default_provider="acme", providers=providers(**extra)
        )
        self.provider: Provider = load_providers(settings, clock=self.clock)["acme"]
        self.client = build_http_client(self.provider, transport=httpx.MockTransport(dsp))
        self.limiter = MemoryLimiter(clock=self.clock, margin=0.0)
        self.queue = WorkQueue(self.engine)
        self.repo = TaskRepository(self.engine, self.clock)

    def create(self, kind: str) -> int:
        task, _ = self.repo.create(Submission(provider="acme", kind=kind, payload={"n": kind}))
        return task.id

    def step(self) -> None:
        """Time passes; every due task is claimed, sent, and its outcome written."""
        self.clock.advance(5.0)
        due = self.queue.claim_due(self.clock.now(), 10, "w", LEASE_S)
        for unit in build_units(self.provider, due):
            outcomes = execute_unit(unit, self.provider, self.client, self.limiter, self.clock.now)
            self.queue.apply(outcomes, self.clock.now())

    def run(self, task_id: int, steps: int = 30) -> Task:
        for _ in range(steps):
            self.step()
            task = self.repo.get(task_id)
            if task.status.is_final:
                return task
        return self.repo.get(task_id)

    def last_event(self, task_id: int) -> str:
        return self.repo.events(task_id)[-1].event


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[Harness] = []

    def build(dsp: Dsp, **extra: Any) -> Harness:
        harness = Harness(tmp_path, dsp, **extra)
        made.append(harness)
        return harness

    yield build
    for harness in made:
        harness.engine.dispose()


def test_an_idempotency_key_the_provider_remembers_gives_the_lost_object_back(
    make: Any,
) -> None:
    """The documented limit: a gone task keeps its client reference (a lookup must find
    what an earlier attempt made), so with ``idempotency_header`` a provider that still
    remembers the key answers the re-create with the id it lost. The task then ends
    ``object_gone`` again: no second object and no endless polls, but no new object until
    the provider forgets the key (docs/providers.md, Lookup)."""
    h = make(Dsp(idempotency=True), idempotency_header="Idempotency-Key")
    task_id = h.create("campaign")
    h.step()
    assert h.repo.get(task_id).external_id == "cam-1"
    del h.dsp.objects["cam-1"]  # the DSP lost or deleted it; it keeps its idempotency keys
    assert h.run(task_id).status is TaskStatus.ERROR
    assert h.last_event(task_id) == "object_gone"
    h.repo.retry(task_id)
    again = h.run(task_id)
    assert (again.status, h.last_event(task_id)) == (TaskStatus.ERROR, "object_gone")
    assert "lookup" in [e.event for e in h.repo.events(task_id)]
    assert h.dsp.creates == ["cam-1"]
    h.dsp.keys.clear()  # the provider forgot the key: the next retry makes a live object
    h.repo.retry(task_id)
    done = h.run(task_id)
    assert (done.status, done.external_id, h.dsp.creates) == (
        TaskStatus.COMPLETED,
        "cam-2",
        ["cam-1", "cam-2"],
    )


@pytest.mark.parametrize("kind", ["campaign", "report"])
def test_one_404_after_other_failures_never_leaves_two_objects(make: Any, kind: str) -> None:
    """Two 503s then one 404 (a gateway during a deploy) end the task ``object_gone`` though
    the object lives. Its retry leaves one live object: a kind with a lookup finds it and
    follows it to Completed; one without ends "outcome unknown" without a request."""
    h = make(Dsp())
    task_id = h.create(kind)
    h.step()
    first = h.repo.get(task_id).external_id
    down = httpx.Response(503, json={"error": {"message": "down"}})
    h.dsp.script = [down, down, httpx.Response(404, json={"error": {"message": "no route"}})]
    h.run(task_id)
    assert h.last_event(task_id) == "object_gone"
    h.repo.retry(task_id)
    after = h.run(task_id)
    assert sorted(h.dsp.objects) == [first]
    if kind == "campaign":
        assert (after.status, after.external_id) == (TaskStatus.COMPLETED, first)
    else:
        assert after.status is TaskStatus.ERROR
        assert (after.validation_error or "").startswith("outcome unknown")


def test_a_status_path_that_404s_needs_two_retries_to_create_a_kind_without_lookup(
    make: Any,
) -> None:
    """Every status read answers 404 (a moved route): a kind without a lookup is not created
    again by one retry (one bulk retry of every such task would double them all). The
    retry ends "outcome unknown"; a second retry is the person's decision to create."""
    h = make(Dsp())
    task_id = h.create("report")
    h.step()
    h.dsp.status_path_broken = True
    h.run(task_id)
    gone = h.repo.get(task_id)
    assert h.last_event(task_id) == "object_gone"
    assert "has no lookup, so a retry ends in 'outcome unknown'" in (gone.validation_error or "")
    h.repo.retry(task_id)
    unknown = h.run(task_id)
    assert sorted(h.dsp.objects) == ["rep-1"]
    assert h.last_event(task_id) == "outcome_unknown"
    assert "status reads no longer found its object" in (unknown.validation_error or "")
    h.repo.retry(task_id)
    h.step()
    assert sorted(h.dsp.objects) == ["rep-1", "rep-2"]


def test_bulk_retry_restarts_each_end_as_a_single_retry_does(make: Any) -> None:
    """A bulk retry restarts like a single retry: the provider-ended task gets a new client
    reference, the gone one is looked up under its own; one live object each."""
    h = make(Dsp())
    ended, gone = h.create("campaign"), h.create("campaign")
    h.step()
    h.dsp.objects[h.repo.get(ended).external_id]["status"] = "rejected"
    del h.dsp.objects[h.repo.get(gone).external_id]
    h.run(ended)
    h.run(gone)
    assert h.last_event(ended) == "status"
    assert h.last_event(gone) == "object_gone"
    before = {t: h.repo.get(t) for t in (ended, gone)}
    jobs = BulkJobs(h.repo, h.clock)
    task_filter = TaskFilter(status=TaskStatus.ERROR)
    jobs.start("retry", task_filter, None, jobs.preview("retry", task_filter, None), LOCAL)
    BulkJobRunner(jobs, batch=1, worker="bulk").run_once()
    after = {t: h.repo.get(t) for t in (ended, gone)}
    assert after[ended].client_ref != before[ended].client_ref
    assert (after[ended].phase, after[ended].external_id) == (Phase.READY, None)
    assert (after[gone].phase, after[gone].client_ref) == (Phase.UNCERTAIN, before[gone].client_ref)
    assert h.run(ended).status is TaskStatus.COMPLETED
    assert h.run(gone).status is TaskStatus.COMPLETED
    live = [o for o in h.dsp.objects.values() if o["status"] != "rejected"]
    assert sorted(o["client_ref"] for o in live) == sorted(
        [after[ended].client_ref, after[gone].client_ref]
    )
