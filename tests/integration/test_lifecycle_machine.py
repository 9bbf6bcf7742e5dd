"""A Hypothesis state machine over a task's life, on the real store (SQLite and PostgreSQL).

Rules: create, claim, send (with a fault: answer lost, 5xx, 429, 400, rejected, object
gone), write the
outcome, worker crash, lease expiry, recovery, cancel, retry, and a pause (claims given
back). The provider is a fake DSP behind ``httpx.MockTransport``; the clock is fake. After
every step: no task in two live claims, no create without a lookup that found nothing
after an ambiguous end, only legal status transitions, an event for every status change,
phases that agree with statuses, one live object per task and per client reference (a
task gets a new reference only when retried after the provider ended its object). At the
end, with faults stopped, the engine runs to quiescence and every task must be final.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, delete, select, update

from sluice import errors
from sluice.clock import FakeClock
from sluice.domain import (
    DueTask,
    Operation,
    Outcome,
    Phase,
    Submission,
    Task,
    TaskStatus,
    can_transition,
)
from sluice.engine.dispatcher import build_units
from sluice.engine.execute import execute_unit
from sluice.providers.base import Provider
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository, events, tasks

LEASE_S = 60.0
MAX_TASKS = 5
WORKERS = ("a", "b")
KINDS_WITH_LOOKUP = frozenset({"campaign", "ad_group"})
STATUS_MAP = {"pending": "In Progress", "active": "Completed", "rejected": "Error"}
REF = {"client_ref_field": "client_ref", "external_id_field": "id"}
PROVIDERS: dict[str, Any] = {
    "acme": {
        "base_url": "http://acme.test",
        "max_attempts": 3,
        "retry_base": "1s",
        "retry_max": "4s",
        "poll_interval": "1s",
        # A lost create answer is looked up no sooner than this: within a step's 5 s.
        "timeout": "4s",
        "kinds": {
            # Polled for its status, found again by client reference.
            "campaign": {
                "submit": "POST /campaigns",
                "lookup": "GET /campaigns?client_ref={client_ref}",
                "lookup_items_field": "data",
                "status": "GET /campaigns/{external_id}/status",
                "status_map": STATUS_MAP,
                **REF,
            },
            # A child of a campaign, synchronous, found again by client reference.
            "ad_group": {
                "submit": "POST /ad_groups",
                "parent_field": "campaign_id",
                "lookup": "GET /ad_groups?client_ref={client_ref}",
                "lookup_items_field": "data",
                **REF,
            },
            # Synchronous and with no lookup: an unknown outcome ends in Error.
            "audience": {"submit": "POST /audiences", **REF},
        },
    }
}
RETRYABLE = (TaskStatus.ERROR, TaskStatus.CANCELLED)
T = TypeVar("T")
# What the provider does with the next request: answer, lose the answer (after creating),
# fail with a 5xx (nothing created), refuse with a 429, refuse a create as invalid, report
# the object rejected, or forget the object (its status reads answer 404 from then on).
FAULTS = ("ok", "lose", "500", "429", "400", "reject", "gone")


class FakeDsp:
    """The provider model: objects by id, and the client references whose create Sluice
    cannot know about (``unresolved``): a create that reached the provider with no answer
    recorded yet. A create for an unresolved reference is a violation."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.unresolved: set[str] = set()
        self.violations: list[str] = []
        self.fault = "ok"
        self.created = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        fault, self.fault = self.fault, "ok"
        parts = [p for p in request.url.path.split("/") if p]
        if fault == "429":
            return httpx.Response(429, headers={"Retry-After": "2"})
        if request.method == "POST":
            return self._create(request, parts[0], fault)
        if fault == "500":
            return httpx.Response(500, json={"error": {"message": "down"}})
        if fault == "lose":
            raise httpx.ReadTimeout("answer lost", request=request)
        if len(parts) == 1:
            ref = request.url.params["client_ref"]
            self.unresolved.discard(ref)  # a lookup answered: Sluice now knows
            found = [o for o in self.objects.values() if o["client_ref"] == ref]
            return httpx.Response(200, json={"data": found})
        if fault == "gone":
            self.objects.pop(parts[1], None)
        found_object = self.objects.get(parts[1])
        if found_object is None:
            return httpx.Response(404, json={"error": {"message": f"{parts[1]} not found"}})
        found_object["polls"] += 1
        if fault == "reject":
            found_object["status"] = "rejected"
        elif found_object["polls"] >= 2 and found_object["status"] == "pending":
            found_object["status"] = "active"
        return httpx.Response(200, json={"status": found_object["status"]})

    def _create(self, request: httpx.Request, collection: str, fault: str) -> httpx.Response:
        body = json.loads(request.content)
        ref = body["client_ref"]
        if ref in self.unresolved:
            self.violations.append(f"create of {ref} without a lookup after an ambiguous end")
        if fault == "400":
            return httpx.Response(400, json={"error": {"message": "name: invalid"}})
        self.unresolved.add(ref)
        if fault == "500":
            return httpx.Response(500, json={"error": {"message": "down"}})
        self.created += 1
        object_id = f"{collection[:3]}-{self.created}"
        self.objects[object_id] = {
            "id": object_id,
            "client_ref": ref,
            "status": "pending",
            "polls": 0,
        }
        if fault == "lose":
            raise httpx.ReadTimeout("answer lost", request=request)
        return httpx.Response(201, json={"id": object_id})


@dataclass
class Worker:
    """A dispatcher's claimed units (``held``) and sent units whose outcome is not written."""

    held: list[DueTask] = field(default_factory=list)
    pending: list[tuple[DueTask, list[Outcome]]] = field(default_factory=list)

    def entries(self) -> Iterator[DueTask]:
        yield from self.held
        yield from (task for task, _ in self.pending)


class Lifecycle(RuleBasedStateMachine):
    """Tasks through claims, sends, faults, crashes, recoveries, cancels and retries."""

    engine: ClassVar[Engine]
    database_url: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        with self.engine.begin() as conn:
            conn.execute(delete(events))
            conn.execute(update(tasks).values(parent_id=None))
            conn.execute(delete(tasks))
        self.clock = FakeClock()
        self.dsp = FakeDsp()
        settings_ = load_settings(
            database_url=self.database_url, default_provider="acme", providers=PROVIDERS
        )
        self.provider: Provider = load_providers(settings_, clock=self.clock)["acme"]
        self.client = build_http_client(self.provider, transport=httpx.MockTransport(self.dsp))
        self.limiter = MemoryLimiter(clock=self.clock, margin=0.0)
        self.queue = WorkQueue(self.engine)
        self.repo = TaskRepository(self.engine, self.clock)
        self.workers = {name: Worker() for name in WORKERS}
        self.ids: list[int] = []
        self.refs: dict[int, str | None] = {}  # each task's client reference now
        self.owner: dict[str, int] = {}  # every client reference a task had, to its task
        self.kinds: dict[int, str | None] = {}
        self.snapshot: list[Task] = []  # every task, as of the end of the last step

    # -- rules -------------------------------------------------------------------------

    @initialize(kinds=st.lists(st.sampled_from(["campaign", "audience"]), min_size=1, max_size=3))
    def start(self, kinds: list[str]) -> None:
        for kind in kinds:
            self.create(kind, 0)
        self.snapshot = self._tasks()

    @precondition(lambda self: len(self.ids) < MAX_TASKS)
    @rule(kind=st.sampled_from(["campaign", "ad_group", "audience"]), pick=st.integers(0, 7))
    def create(self, kind: str, pick: int) -> None:
        parent_id = None
        if kind == "ad_group":
            campaigns = [i for i in self.ids if self.kinds[i] == "campaign"]
            if not campaigns:
                return
            parent_id = campaigns[pick % len(campaigns)]
        spec = Submission(provider="acme", kind=kind, payload={"name": kind}, parent_id=parent_id)
        task, _ = self.repo.create(spec)
        self.ids.append(task.id)
        self.refs[task.id] = task.client_ref
        if task.client_ref is not None:
            self.owner[task.client_ref] = task.id
        self.kinds[task.id] = kind

    @rule(
        name=st.sampled_from(WORKERS),
        fault=st.sampled_from(FAULTS),
        send=st.booleans(),
        fair=st.booleans(),
    )
    def dispatch(self, name: str, fault: str, send: bool, fair: bool) -> None:
        """A dispatcher claims due work if it holds none (in arrival order, or fairly
        between fairness keys as dispatchers do by default), and (maybe) sends the first."""
        worker = self.workers[name]
        if not worker.held:
            now = self.clock.now()
            worker.held.extend(
                self.queue.claim_fair(now, 2, name, LEASE_S, "acme")
                if fair
                else self.queue.claim_due(now, 2, name, LEASE_S)
            )
        if worker.held and send:
            self._send(worker, 0, fault)

    @precondition(lambda self: any(w.held for w in self.workers.values()))
    @rule(pick=st.integers(0, 7), fault=st.sampled_from(FAULTS))
    def send(self, pick: int, fault: str) -> None:
        """Any held unit is sent (units need not go in claim order)."""
        worker = self._pick([w for w in self.workers.values() if w.held], pick)
        self._send(worker, pick, fault)

    def _send(self, worker: Worker, pick: int, fault: str) -> None:
        task = worker.held.pop(pick % len(worker.held))
        assert task.claimed_until is not None
        if self.clock.now() >= task.claimed_until:
            return  # a dispatcher never sends once its lease is over
        (unit,) = build_units(self.provider, [task])
        # A validation refusal only answers creates; a rejection or a forgotten object only
        # status reads.
        if (fault == "400" and unit.operation is not Operation.SUBMIT) or (
            fault in ("reject", "gone") and unit.operation is not Operation.POLL
        ):
            fault = "ok"
        self.dsp.fault = fault
        outcomes = execute_unit(unit, self.provider, self.client, self.limiter, self.clock.now)
        self.dsp.fault = "ok"
        worker.pending.append((task, outcomes))

    @precondition(lambda self: any(w.pending for w in self.workers.values()))
    @rule(pick=st.integers(0, 7))
    def write(self, pick: int) -> None:
        worker = self._pick([w for w in self.workers.values() if w.pending], pick)
        _, outcomes = worker.pending.pop(0)
        self._apply(outcomes)

    @precondition(lambda self: any(w.held or w.pending for w in self.workers.values()))
    @rule(name=st.sampled_from(WORKERS))
    def crash(self, name: str) -> None:
        """A worker process dies: its claimed and sent-but-unrecorded units are gone."""
        self.workers[name] = Worker()

    @precondition(lambda self: any(w.held for w in self.workers.values()))
    @rule(pick=st.integers(0, 7))
    def pause(self, pick: int) -> None:
        """A long provider pause: the dispatcher gives its unsent claims back."""
        worker = self._pick([w for w in self.workers.values() if w.held], pick)
        self.queue.release(worker.held, self.clock.now() + timedelta(seconds=5))
        worker.held.clear()

    @rule(seconds=st.sampled_from([1.0, 5.0, LEASE_S + 1]))
    def tick(self, seconds: float) -> None:
        """Time passes (backoffs, pauses, leases), with no reconciler running."""
        self.clock.advance(seconds)

    @rule()
    def expire(self) -> None:
        """Every lease taken so far ends, and a reconciler runs."""
        self.clock.advance(LEASE_S + 1)
        self.queue.recover_stuck(self.clock.now())

    @precondition(lambda self: any(not t.status.is_final for t in self.snapshot))
    @rule(pick=st.integers(0, MAX_TASKS - 1))
    def cancel(self, pick: int) -> None:
        task = self._pick([t for t in self.snapshot if not t.status.is_final], pick)
        assert self.repo.cancel(task.id)[0].status is TaskStatus.CANCELLED

    @precondition(lambda self: any(t.status in RETRYABLE for t in self.snapshot))
    @rule(pick=st.integers(0, MAX_TASKS - 1))
    def retry(self, pick: int) -> None:
        task = self._pick([t for t in self.snapshot if t.status in RETRYABLE], pick)
        parent = self.repo.get(task.parent_id) if task.parent_id is not None else None
        if parent is not None and parent.status in RETRYABLE:
            with pytest.raises(errors.IllegalTransition, match="parent task"):
                self.repo.retry(task.id)
            return
        if (task.validation_error or "").startswith("outcome unknown"):
            # The person checked the provider: submitting again is their decision.
            self.dsp.unresolved.discard(task.client_ref or "")
        provider_ended = task.external_id is not None and self._last_event(task.id) == "status"
        retried = self.repo.retry(task.id)
        # A new client reference exactly when the provider ended the task's object.
        assert (retried.client_ref != task.client_ref) == provider_ended
        if provider_ended:
            assert retried.client_ref is not None
            assert retried.client_ref not in self.owner
            self.owner[retried.client_ref] = task.id
        self.refs[task.id] = retried.client_ref

    @precondition(lambda self: bool(self.ids))
    @rule(pick=st.integers(0, MAX_TASKS - 1))
    def refused_request(self, pick: int) -> None:
        """Cancelling a final task or retrying an unended one is refused and changes nothing."""
        task = self.repo.get(self.ids[pick % len(self.ids)])
        action = self.repo.cancel if task.status.is_final else self.repo.retry
        if task.status in RETRYABLE:
            return
        with pytest.raises(errors.IllegalTransition):
            action(task.id)
        assert self.repo.get(task.id) == task

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def guarantees_hold(self) -> None:
        """Every invariant, on one fresh read of the store (also used by preconditions)."""
        self.snapshot = self._tasks()
        self.no_task_in_two_live_claims()
        self.no_create_without_a_lookup_after_an_ambiguous_end()
        self.no_second_live_object_for_a_kind_with_a_lookup()
        self.statuses_move_legally_each_with_an_event()
        self.every_event_has_its_task()
        self.phases_agree_with_statuses()

    def no_task_in_two_live_claims(self) -> None:
        now = self.clock.now()
        live: dict[int, str] = {}
        for worker in self.workers.values():
            for entry in worker.entries():
                assert entry.claimed_until is not None
                assert entry.claimed_by is not None
                if entry.claimed_until < now:
                    continue
                assert entry.id not in live, f"task {entry.id} is in two live claims"
                live[entry.id] = entry.claimed_by
        if live:
            with self.engine.connect() as conn:
                held = dict(
                    conn.execute(
                        select(tasks.c.id, tasks.c.claimed_by).where(tasks.c.id.in_(list(live)))
                    ).all()
                )
            assert held == live, "a live claim was taken over or cleared"

    def no_create_without_a_lookup_after_an_ambiguous_end(self) -> None:
        assert self.dsp.violations == []

    def no_second_live_object_for_a_kind_with_a_lookup(self) -> None:
        """One client reference, one object the provider has not rejected: a retry of a
        task whose create was accepted polls that object again. (A kind with no lookup may
        be created again by a person's retry after an unknown outcome: documented.)"""
        live: dict[str, list[str]] = {}
        for object_id, found in self.dsp.objects.items():
            if found["status"] != "rejected" and not object_id.startswith("aud"):
                live.setdefault(found["client_ref"], []).append(object_id)
        twice = {ref: ids for ref, ids in live.items() if len(ids) > 1}
        assert twice == {}, f"created twice: {twice}"
        by_task: dict[int, list[str]] = {}
        for ref, ids in live.items():
            by_task.setdefault(self.owner[ref], []).extend(ids)
        two = {task_id: ids for task_id, ids in by_task.items() if len(ids) > 1}
        assert two == {}, f"a task has two live objects: {two}"

    def every_event_has_its_task(self) -> None:
        """No event outlives or precedes its task (the store keeps no foreign key for it:
        migration 0015)."""
        with self.engine.connect() as conn:
            orphans = conn.execute(
                select(events.c.id, events.c.task_id).where(
                    events.c.task_id.not_in(select(tasks.c.id))
                )
            ).all()
        assert orphans == [], f"events without their task: {orphans}"

    def statuses_move_legally_each_with_an_event(self) -> None:
        with self.engine.connect() as conn:
            changes = conn.execute(
                select(events.c.task_id, events.c.from_status, events.c.to_status)
                .where(events.c.to_status.is_not(None))
                .order_by(events.c.id)
            ).all()
        last: dict[int, TaskStatus] = {}
        for task_id, from_status, to_status in changes:
            new = TaskStatus(to_status)
            if task_id not in last:
                assert from_status is None, f"task {task_id}: first event is not 'created'"
            else:
                old = TaskStatus(from_status)
                assert old is last[task_id], f"task {task_id}: a change left no event"
                assert can_transition(old, new), f"task {task_id}: {old} -> {new}"
            last[task_id] = new
        for task in self.snapshot:
            assert last[task.id] is task.status, f"task {task.id}: a change left no event"

    def phases_agree_with_statuses(self) -> None:
        for task in self.snapshot:
            assert task.client_ref == self.refs[task.id]
            if task.status.is_final:
                assert task.phase is Phase.DONE
            elif task.status is TaskStatus.IN_PROGRESS:
                assert task.phase is Phase.POLLING
                assert task.external_id is not None
            else:
                # Not Started: polled only for an object the provider holds (a retry of a
                # task Sluice ended after its create was accepted), created otherwise.
                assert task.phase is not Phase.DONE
                assert (task.phase is Phase.POLLING) == (task.external_id is not None)
            if task.status is TaskStatus.COMPLETED:
                assert task.external_id is not None
                assert self.dsp.objects[task.external_id]["client_ref"] == task.client_ref

    # -- the end: faults stop, everything settles -------------------------------------

    def teardown(self) -> None:
        try:
            self.workers = {name: Worker() for name in WORKERS}
            for _ in range(40):
                if all(task.status.is_final for task in self._tasks()):
                    break
                self.clock.advance(LEASE_S + 1)
                self.queue.recover_stuck(self.clock.now())
                due = self.queue.claim_due(self.clock.now(), 100, "z", LEASE_S)
                for unit in build_units(self.provider, due):
                    self._apply(
                        execute_unit(unit, self.provider, self.client, self.limiter, self.clock.now)
                    )
            self.guarantees_hold()
            unfinished = [(t.id, t.status, t.phase) for t in self.snapshot if not t.status.is_final]
            assert unfinished == [], f"not final once faults stopped: {unfinished}"
        finally:
            self.client.close()

    # -- helpers -----------------------------------------------------------------------

    def _apply(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            applied = self.queue.apply([outcome], self.clock.now())
            if applied and outcome.event in ("submitted", "found"):
                self.dsp.unresolved.discard(self.refs[outcome.task_id] or "")

    def _last_event(self, task_id: int) -> str | None:
        with self.engine.connect() as conn:
            last: str | None = conn.execute(
                select(events.c.event)
                .where(events.c.task_id == task_id)
                .order_by(events.c.id.desc())
                .limit(1)
            ).scalar()
        return last

    @staticmethod
    def _pick(items: list[T], pick: int) -> T:
        return items[pick % len(items)]

    def _tasks(self) -> list[Task]:
        page = self.repo.list_tasks(limit=MAX_TASKS + 3)
        assert [t.id for t in page.items] == sorted(self.ids)
        return page.items


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'machine.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.mark.timeout(900)
def test_task_lifecycle_keeps_its_guarantees(database_url: str) -> None:
    """Under any interleaving of claims, sends, faults, crashes, lease expiry, recovery,
    cancels, retries and pauses, the lifecycle invariants hold after every step and every
    task ends final once faults stop."""
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    Lifecycle.engine = engine
    Lifecycle.database_url = database_url
    examples = int(os.environ.get("SLUICE_TEST_MACHINE_EXAMPLES", "100"))
    if engine.dialect.name == "postgresql":
        # The same rules on the same code, slower per step: half as many examples in CI.
        examples = max(1, examples // 2)
    try:
        run_state_machine_as_test(
            Lifecycle,
            settings=settings(
                max_examples=examples,
                stateful_step_count=50,
                deadline=None,
            ),
        )
    finally:
        engine.dispose()


def _machine(database_url: str) -> Iterator[Lifecycle]:
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    Lifecycle.engine = engine
    Lifecycle.database_url = database_url
    machine = Lifecycle()
    try:
        machine.start(["campaign"])
        yield machine
        machine.teardown()
    finally:
        engine.dispose()


@pytest.fixture
def machine(database_url: str) -> Iterator[Lifecycle]:
    yield from _machine(database_url)


def _step(machine: Lifecycle, fault: str) -> Task:
    """Time passes, worker a claims the task, sends it with ``fault``, writes the outcome."""
    machine.tick(5.0)
    machine.dispatch("a", fault, send=True, fair=False)
    machine.write(0)
    machine.guarantees_hold()
    (task,) = machine.snapshot
    return task


def test_a_lost_create_after_a_rejection_is_not_taken_for_the_rejected_object(
    machine: Lifecycle,
) -> None:
    """Created, rejected by the provider, retried, and the new create's answer lost: the
    lookup finds the new object (the retry sent a new client reference), not the rejected
    one, so the task follows the object that is live and a second retry is never needed.
    With one reference for life the lookup adopted the rejected object, the task ended in
    Error while the new object lived on, and the next retry made a third."""
    assert _step(machine, "ok").status is TaskStatus.IN_PROGRESS
    assert _step(machine, "reject").status is TaskStatus.ERROR
    machine.retry(0)
    assert _step(machine, "lose").phase is Phase.UNCERTAIN
    found = _step(machine, "ok")
    assert (found.status, found.external_id) == (TaskStatus.IN_PROGRESS, "cam-2")
    done = _step(machine, "ok")
    while done.status is TaskStatus.IN_PROGRESS:
        done = _step(machine, "ok")
    assert (done.status, done.external_id) == (TaskStatus.COMPLETED, "cam-2")
    assert sorted(machine.dsp.objects) == ["cam-1", "cam-2"]


def test_a_retry_creates_again_an_object_the_provider_forgot(machine: Lifecycle) -> None:
    """Status reads answering 404 until Sluice gives up end the task ``object_gone``; its
    retry looks the object up, finds nothing, and creates it again (no endless polls of
    the missing id)."""
    assert _step(machine, "ok").status is TaskStatus.IN_PROGRESS
    task = _step(machine, "gone")
    while task.status is TaskStatus.IN_PROGRESS:
        task = _step(machine, "ok")
    assert task.status is TaskStatus.ERROR
    assert "has no object cam-1" in (task.validation_error or "")
    machine.retry(0)
    looked_up = _step(machine, "ok")
    assert (looked_up.phase, looked_up.external_id) == (Phase.READY, None)
    task = _step(machine, "ok")
    while task.status is not TaskStatus.COMPLETED:
        assert task.status is TaskStatus.IN_PROGRESS
        task = _step(machine, "ok")
    assert task.external_id == "cam-2"
    assert sorted(machine.dsp.objects) == ["cam-2"]
