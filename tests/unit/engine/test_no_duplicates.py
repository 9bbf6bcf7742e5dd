"""No duplicate creates: after an ambiguous end, a kind with a lookup is looked up first, a
kind without one ends in Error unless its provider opted in to re-submitting."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.clock import FakeClock
from sluice.domain import Outcome, Phase, Submission, Task, TaskStatus
from sluice.engine.dispatcher import build_units
from sluice.engine.execute import execute_unit
from sluice.providers.base import Provider
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository

LEASE_S = 60.0


class LossyDsp:
    """Creates objects synchronously, finds them by client_ref, and can lose answers.

    ``lose_answers`` drops that many create answers *after* creating the object (the client
    sees a read timeout); ``fail_lookups`` answers that many lookups with a 500.
    """

    def __init__(self) -> None:
        self.objects: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.lose_answers = 0
        self.fail_lookups = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            body = json.loads(request.content)
            created = {"id": f"o{len(self.objects) + 1}", **body}
            self.objects.append(created)
            if self.lose_answers:
                self.lose_answers -= 1
                raise httpx.ReadTimeout("answer lost", request=request)
            return httpx.Response(201, json={"id": created["id"]})
        if self.fail_lookups:
            self.fail_lookups -= 1
            return httpx.Response(500, json={"error": {"message": "lookup down"}})
        ref = request.url.params["client_ref"]
        return httpx.Response(
            200, json={"data": [o for o in self.objects if o["client_ref"] == ref]}
        )

    def created(self, client_ref: str | None) -> int:
        return sum(1 for o in self.objects if o["client_ref"] == client_ref)


@dataclass
class World:
    clock: FakeClock
    dsp: LossyDsp
    queue: WorkQueue
    repo: TaskRepository
    provider: Provider
    client: httpx.Client
    limiter: MemoryLimiter

    def add(self, kind: str) -> Task:
        task, _ = self.repo.create(Submission(provider="acme", kind=kind, payload={"name": kind}))
        return task

    def send(self, worker: str = "w") -> list[Outcome]:
        """Claim what is due and send it; return the outcomes without recording them."""
        due = self.queue.claim_due(self.clock.now(), 100, worker, LEASE_S)
        outcomes: list[Outcome] = []
        for unit in build_units(self.provider, due):
            outcomes += execute_unit(unit, self.provider, self.client, self.limiter, self.clock.now)
        return outcomes

    def step(self) -> None:
        """One round: claim, send, record, then let backoffs and leases pass."""
        self.queue.apply(self.send(), self.clock.now())
        self.clock.advance(30)

    def settle(self, task_id: int, rounds: int = 20) -> Task:
        for _ in range(rounds):
            task = self.repo.get(task_id)
            if task.status.is_final:
                return task
            self.step()
        return self.repo.get(task_id)

    def lose_worker(self) -> None:
        """The worker that claimed (and perhaps sent) is gone: its lease ends, recovery runs."""
        self.clock.advance(LEASE_S + 1)
        self.queue.recover_stuck(self.clock.now())


KIND = {"client_ref_field": "client_ref", "external_id_field": "id"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = FakeClock()
    dsp = LossyDsp()
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'n.db'}",
        default_provider="acme",
        providers={
            "acme": {
                "base_url": "http://acme.test",
                "max_attempts": 3,
                "retry_base": "1s",
                "retry_max": "2s",
                "kinds": {
                    "campaign": {
                        "submit": "POST /campaigns",
                        "lookup": "GET /campaigns?client_ref={client_ref}",
                        "lookup_items_field": "data",
                        **KIND,
                    },
                    "audience": {"submit": "POST /audiences", **KIND},
                    "pixel": {"submit": "POST /pixels", "resubmit_when_unknown": True, **KIND},
                },
            }
        },
    )
    provider = load_providers(settings, clock=clock)["acme"]
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    client = build_http_client(provider, transport=httpx.MockTransport(dsp))
    yield World(
        clock,
        dsp,
        WorkQueue(engine),
        TaskRepository(engine, clock),
        provider,
        client,
        MemoryLimiter(clock=clock, margin=0.0),
    )
    client.close()
    engine.dispose()


def test_lost_answer_is_looked_up_and_the_object_adopted(world: World) -> None:
    """A create whose answer was lost is looked up, found and adopted: one object."""
    task = world.add("campaign")
    world.dsp.lose_answers = 1

    done = world.settle(task.id)

    assert done.status is TaskStatus.COMPLETED
    assert world.dsp.created(task.client_ref) == 1
    assert world.dsp.requests == ["POST /campaigns", "GET /campaigns"]
    assert done.external_id == world.dsp.objects[0]["id"]


def test_lost_answer_without_lookup_ends_in_error_not_a_second_create(world: World) -> None:
    """A kind with no lookup is not created again after a lost answer: it ends in Error,
    "outcome unknown: check the provider", after exactly one request."""
    task = world.add("audience")
    world.dsp.lose_answers = 1

    done = world.settle(task.id)

    assert done.status is TaskStatus.ERROR
    assert done.validation_error is not None
    assert done.validation_error.startswith("outcome unknown: check the provider")
    assert world.dsp.requests == ["POST /audiences"]
    assert world.repo.events(task.id)[-1].event == "outcome_unknown"


def test_opted_in_provider_resubmits_after_a_lost_answer(world: World) -> None:
    """With resubmit_when_unknown the create is sent again (the documented duplicate risk)."""
    task = world.add("pixel")
    world.dsp.lose_answers = 1

    done = world.settle(task.id)

    assert done.status is TaskStatus.COMPLETED
    assert world.dsp.requests == ["POST /pixels", "POST /pixels"]


def test_lost_worker_without_lookup_ends_at_once_without_a_request(world: World) -> None:
    """A no-lookup create whose worker vanished mid-request ends in Error "outcome unknown"
    at once: no request, no attempts burnt on lookups that cannot happen."""
    task = world.add("audience")
    world.send()  # sent and created, but the worker dies before recording anything
    world.lose_worker()

    done = world.settle(task.id)

    assert done.status is TaskStatus.ERROR
    assert done.validation_error is not None
    assert "outcome unknown: check the provider" in done.validation_error
    assert done.attempts == 0
    assert world.dsp.requests == ["POST /audiences"]


def test_lost_worker_with_lookup_is_looked_up_not_resent(world: World) -> None:
    """A create whose worker vanished mid-request is looked up and adopted: one object."""
    task = world.add("campaign")
    world.send()
    world.lose_worker()

    done = world.settle(task.id)

    assert done.status is TaskStatus.COMPLETED
    assert world.dsp.created(task.client_ref) == 1
    assert world.dsp.requests == ["POST /campaigns", "GET /campaigns"]


def test_retry_after_giving_up_on_lookups_looks_up_first(world: World) -> None:
    """A task that gave up while its create was unresolved, once retried, is looked up
    before any create: the object made by the lost answer is adopted, not made twice."""
    task = world.add("campaign")
    world.dsp.lose_answers = 1
    world.dsp.fail_lookups = 10
    gave_up = world.settle(task.id)
    assert gave_up.status is TaskStatus.ERROR
    assert gave_up.maybe_created
    world.dsp.fail_lookups = 0

    retried = world.repo.retry(task.id)
    assert retried.phase is Phase.UNCERTAIN
    done = world.settle(task.id)

    assert done.status is TaskStatus.COMPLETED
    assert world.dsp.created(task.client_ref) == 1
    assert world.dsp.requests[-1] == "GET /campaigns"


def test_retry_after_a_cancel_mid_request_looks_up_first(world: World) -> None:
    """A task cancelled while its create was in flight, once retried, is looked up first
    (the id its answer brought is kept on the Cancelled task for the record only)."""
    task = world.add("campaign")
    late = world.send()  # the create went out...
    world.repo.cancel(task.id)  # ...and the task was cancelled before its answer landed
    assert world.queue.apply(late, world.clock.now()) == 0

    assert world.repo.get(task.id).external_id == "o1"
    assert world.repo.retry(task.id).phase is Phase.UNCERTAIN
    done = world.settle(task.id)

    assert done.status is TaskStatus.COMPLETED
    assert world.dsp.created(task.client_ref) == 1
    assert world.dsp.requests == ["POST /campaigns", "GET /campaigns"]


def test_retry_of_an_unsent_cancelled_task_submits(world: World) -> None:
    """A task cancelled before any request is simply submitted when retried."""
    task = world.add("campaign")
    world.repo.cancel(task.id)

    assert world.repo.retry(task.id).phase is Phase.READY
    done = world.settle(task.id)

    assert done.status is TaskStatus.COMPLETED
    assert world.dsp.requests == ["POST /campaigns"]


def test_retry_of_an_unknown_outcome_is_the_persons_decision_to_resend(world: World) -> None:
    """After "outcome unknown" a retry by request submits the no-lookup kind again."""
    task = world.add("audience")
    world.dsp.lose_answers = 1
    world.settle(task.id)

    world.repo.retry(task.id)
    done = world.settle(task.id)

    assert done.status is TaskStatus.COMPLETED
    assert world.dsp.requests == ["POST /audiences", "POST /audiences"]


def test_a_task_keeps_one_client_ref_for_life(world: World) -> None:
    """Through lost answers, failed lookups, give-up and retry, every request of a task
    carries the client reference it was created with."""
    task = world.add("campaign")
    world.dsp.lose_answers = 1
    world.dsp.fail_lookups = 10
    world.settle(task.id)
    world.dsp.fail_lookups = 0
    world.repo.retry(task.id)
    world.settle(task.id)

    refs = Counter(o["client_ref"] for o in world.dsp.objects)
    assert refs == {task.client_ref: 1}
    assert world.repo.get(task.id).client_ref == task.client_ref


class Unprintable(Exception):
    """A bug's exception that cannot even print itself."""

    def __str__(self) -> str:
        raise RuntimeError("no")


def test_a_unit_that_raises_an_unprintable_error_still_gets_its_outcome(world: World) -> None:
    """Anything an adapter raises becomes a failure decided like a lost answer (a create may
    have happened: looked up next), even an exception whose message raises."""
    task = world.add("campaign")

    def broken(request: httpx.Request) -> httpx.Response:
        raise Unprintable

    world.client = build_http_client(world.provider, transport=httpx.MockTransport(broken))
    (outcome,) = world.send()

    assert outcome.phase is Phase.UNCERTAIN
    assert outcome.fields["last_error"] == "internal error: Unprintable: (unprintable)"
    assert world.queue.apply([outcome], world.clock.now()) == 1
    assert world.repo.get(task.id).phase is Phase.UNCERTAIN
