"""One contract for the work queue (claims, leases, guarded outcomes, recovery), run against
SQLite (a temp file) and the real PostgreSQL."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from sluice.clock import FakeClock
from sluice.domain import DueTask, Operation, Phase, Submission, Task, TaskStatus
from sluice.engine import decide
from sluice.providers.base import Accepted, Failed, NotFound, StatusReport, Transient
from sluice.store import db, fairshare
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository, event_row, events, tasks
from tests.integration.conftest import POLICY

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE_S = 60.0


@dataclass
class Queue:
    """A work queue and a repository on one fresh database, with a fake clock."""

    queue: WorkQueue
    repo: TaskRepository
    clock: FakeClock
    url: str

    @property
    def engine(self) -> Engine:
        return self.queue.engine

    def now(self) -> datetime:
        return self.clock.now()

    def add(self, count: int = 1, **fields: Any) -> list[int]:
        """Create ``count`` campaign submissions (ready now) and return their ids."""
        spec: dict[str, Any] = {"provider": "sandbox", "kind": "campaign", "payload": {"n": 1}}
        spec.update(fields)
        return self.repo.create_many([Submission(**spec) for _ in range(count)])

    def track(self, task_id: int) -> int:
        """Create a tracked task (polled by id) and return its id."""
        task, _ = self.repo.create(Submission(provider="sandbox", id=task_id))
        return task.id

    def claim(self, worker: str = "w1", limit: int = 100) -> list[DueTask]:
        return self.queue.claim_due(self.now(), limit, worker, LEASE_S)

    def get(self, task_id: int) -> Task:
        return self.repo.get(task_id)

    def claimed_by(self, task_id: int) -> str | None:
        with self.engine.connect() as conn:
            value: str | None = conn.execute(
                select(tasks.c.claimed_by).where(tasks.c.id == task_id)
            ).scalar_one()
        return value

    def event_names(self, task_id: int) -> list[str]:
        return [e.event for e in self.repo.events(task_id)]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def q(database_url: str) -> Iterator[Queue]:
    """A migrated database with a work queue, a repository and a fake clock."""
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    clock = FakeClock(START)
    yield Queue(WorkQueue(engine), TaskRepository(engine, clock), clock, database_url)
    engine.dispose()


# -- claiming ----------------------------------------------------------------------------


def test_claim_takes_due_work_oldest_first_and_records_intent(q: Queue) -> None:
    """A claim returns due tasks oldest first; a submission is marked submitting before any
    request, a tracked task stays polling."""
    first, second = q.add(2)
    tracked = q.track(500)
    q.clock.advance(1)

    claimed = q.claim()

    assert [t.id for t in claimed] == [first, second, tracked]
    assert q.get(first).phase is Phase.SUBMITTING
    assert q.get(tracked).phase is Phase.POLLING
    assert all(t.claimed_by is not None and t.claimed_by.startswith("w1") for t in claimed)
    assert all(t.claimed_until == START + timedelta(seconds=1 + LEASE_S) for t in claimed)


@pytest.mark.parametrize("how", ["fetch", "claim", "fair_one_key", "fair_keys"])
def test_a_due_task_carries_every_field_as_stored(q: Queue, how: str) -> None:
    """Each field of a DueTask is its own column's value (rows are read by position)."""
    (parent,) = q.add(1, tenant="acme", fairness_key="acme")
    (child,) = q.add(1, parent_id=parent, tenant="acme", priority=7, fairness_key="acme")
    keys = ["acme"] if how != "fair_keys" else ["acme", "other"]
    if how == "fair_keys":
        q.add(1, fairness_key="other")
    with q.engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == parent).values(external_id="P-1"))
        conn.execute(
            update(tasks)
            .where(tasks.c.id == child)
            .values(
                status=TaskStatus.IN_PROGRESS.value,
                phase=Phase.READY.value,
                attempts=3,
                polls=2,
                poll_interval_s=4.5,
                deadline_at=START + timedelta(hours=2),
                client_ref="sl-child",
                next_attempt_at=START,
                maybe_created=True,
                track_only=False,
            )
        )
    q.clock.advance(1)
    if how == "fetch":
        found = q.queue.fetch_due(q.now(), 10)
    elif how == "claim":
        found = q.claim()
    else:
        found = q.queue.claim_fair(q.now(), 10, "w1", LEASE_S, "sandbox")
    (task,) = [t for t in found if t.id == child]
    stored = q.get(child)
    assert sorted({t.fairness_key for t in found}) == keys
    assert (task.provider, task.kind) == ("sandbox", "campaign")
    assert task.payload == {"n": 1}
    assert (task.external_id, task.client_ref) == (None, "sl-child")
    assert (task.parent_id, task.parent_external_id) == (parent, "P-1")
    assert task.status is TaskStatus.IN_PROGRESS
    assert (task.track_only, task.attempts, task.polls) == (False, 3, 2)
    assert task.poll_interval_s == 4.5
    assert task.deadline_at == START + timedelta(hours=2)
    assert (task.tenant, task.priority, task.fairness_key) == ("acme", 7, "acme")
    assert task.maybe_created is True
    if how == "fetch":
        assert task.phase is Phase.READY
        assert (task.claimed_by, task.claimed_until) == (None, None)
    else:
        assert task.phase is Phase.SUBMITTING is stored.phase
        assert task.claimed_by is not None
        assert task.claimed_by == q.claimed_by(child)
        assert task.claimed_until == START + timedelta(seconds=1 + LEASE_S)


def test_claimed_work_is_not_claimed_again_until_its_lease_ends(q: Queue) -> None:
    """While a lease lasts nobody else gets the task; after it ends another worker does."""
    tracked = q.track(7)
    assert [t.id for t in q.claim("a")] == [tracked]

    q.clock.advance(LEASE_S - 1)
    assert q.claim("b") == []

    q.clock.advance(2)
    again = q.claim("b")
    assert [t.id for t in again] == [tracked]
    assert q.claimed_by(tracked) == again[0].claimed_by


def test_each_claim_has_its_own_token(q: Queue) -> None:
    """Two claims by the same worker name carry different claim tokens."""
    tracked = q.track(7)
    first = q.claim("a")
    q.clock.advance(LEASE_S + 1)
    second = q.claim("a")

    assert [t.id for t in second] == [tracked]
    assert first[0].claimed_by != second[0].claimed_by


def test_claim_skips_work_not_yet_due_and_other_providers(q: Queue) -> None:
    """Only tasks due by now, of the providers asked for, are claimed."""
    (ours,) = q.add(1)
    q.add(1, provider="other")

    claimed = q.queue.claim_due(q.now(), 10, "w", LEASE_S, providers=["sandbox"])

    assert [t.id for t in claimed] == [ours]
    assert q.queue.claim_due(q.now() - timedelta(seconds=5), 10, "w", LEASE_S) == []


def _claim_until_empty(url: str, worker: str, rounds: int, fair: bool = False) -> list[int]:
    """Claim small batches of due work through a fresh engine until none is left."""
    engine = db.make_engine(url)
    queue = WorkQueue(engine)
    got: list[int] = []
    now = START + timedelta(seconds=1)
    try:
        for _ in range(rounds):
            if fair:
                batch = queue.claim_fair(now, 3, worker, LEASE_S, "sandbox", {"t1": 2.0})
            else:
                batch = queue.claim_due(now, 3, worker, LEASE_S)
            if not batch:
                break
            got.extend(t.id for t in batch)
    finally:
        engine.dispose()
    return got


@pytest.mark.parametrize("fair", [False, True], ids=["arrival", "fair"])
def test_concurrent_claims_from_threads_never_overlap(q: Queue, fair: bool) -> None:
    """Six threads, each with its own engine, claiming at once: every task goes to exactly
    one (plain and fair claims alike; fair ones over three fairness keys)."""
    ids = [i for tenant in ("t1", "t2", "t3") for i in q.add(80, tenant=tenant)]
    results: dict[int, list[int]] = {}
    start = threading.Barrier(6)

    def claimer(n: int) -> None:
        start.wait()
        results[n] = _claim_until_empty(q.url, f"thread-{n}", 1000, fair)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    claimed = [task_id for got in results.values() for task_id in got]
    assert sorted(claimed) == sorted(ids)
    assert len(set(claimed)) == len(claimed)


def _process_claimer(
    url: str, worker: str, ready: Any, go: Any, out: Any, fair: bool = False
) -> None:
    ready.wait()
    go.wait()
    out.put((worker, _claim_until_empty(url, worker, 1000, fair)))


@pytest.mark.parametrize("fair", [False, True], ids=["arrival", "fair"])
def test_concurrent_claims_from_processes_never_overlap(q: Queue, fair: bool) -> None:
    """Four processes claiming the same queue at once: every task goes to exactly one."""
    ids = [i for tenant in ("t1", "t2", "t3") for i in q.add(80, tenant=tenant)]
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(5)
    go = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_claimer, args=(q.url, f"proc-{n}", ready, go, out, fair))
        for n in range(4)
    ]
    for proc in procs:
        proc.start()
    ready.wait(timeout=60)
    go.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)

    claimed = [task_id for got in results.values() for task_id in got]
    assert sorted(claimed) == sorted(ids)
    assert len(set(claimed)) == len(claimed)
    assert all(proc.exitcode == 0 for proc in procs)


# -- fair share, priorities, trees first ------------------------------------------------


def fair_claim(q: Queue, limit: int, weights: dict[str, float] | None = None) -> list[DueTask]:
    return q.queue.claim_fair(q.now(), limit, "w", LEASE_S, "sandbox", weights)


def test_fair_claim_interleaves_keys_by_weight(q: Queue) -> None:
    """A key queued after another's big backlog still gets its weighted share at once,
    and the claim comes back in slot order (keys interleaved)."""
    q.add(100, tenant="big")
    q.clock.advance(1)
    q.add(20, tenant="small")
    q.clock.advance(1)

    claimed = fair_claim(q, 12, {"big": 3.0})

    assert [t.fairness_key for t in claimed] == ["big", "small", "big", "big"] * 3
    assert fair_claim(q, 8, {"big": 3.0}).count(None) == 0  # nothing claimed twice below
    assert len({t.id for t in claimed}) == 12


def test_fair_claim_is_work_conserving(q: Queue) -> None:
    """An idle key's share goes to the others; a lone key takes every slot."""
    q.add(3, tenant="few")
    q.add(50, tenant="many")
    q.clock.advance(1)

    claimed = fair_claim(q, 20)

    assert sum(t.fairness_key == "few" for t in claimed) == 3
    assert len(claimed) == 20


def test_priority_orders_work_within_a_key_only(q: Queue) -> None:
    """Higher priority first within its key; a key's priorities take nothing from another."""
    low = q.add(5, tenant="a", priority=-5)
    high = q.add(5, tenant="a", priority=50)
    other = q.add(10, tenant="b")
    q.clock.advance(1)

    claimed = fair_claim(q, 10)

    assert [t.id for t in claimed if t.fairness_key == "a"] == high
    assert [t.id for t in claimed if t.fairness_key == "b"] == other[:5]
    assert not {t.id for t in claimed} & set(low)


def _completed_parent(q: Queue) -> int:
    (parent,) = q.add(1)
    with q.engine.begin() as conn:
        conn.execute(
            update(tasks)
            .where(tasks.c.id == parent)
            .values(status="Completed", phase="done", external_id="ext-1")
        )
    return parent


def test_children_of_existing_parents_go_before_new_roots(q: Queue) -> None:
    """Trees first: with equal priority a ready child goes before older roots; a higher
    priority root still goes first."""
    parent = _completed_parent(q)
    roots = q.add(3)
    q.clock.advance(1)
    (child,) = q.add(1, parent_id=parent)
    (urgent,) = q.add(1, priority=1)
    q.clock.advance(1)

    claimed = fair_claim(q, 5)

    assert [t.id for t in claimed] == [urgent, child, *roots]
    assert claimed[1].parent_external_id == "ext-1"


KINDS = ("root", "child", "poll", "lookup")


def _one_of(q: Queue, kind: str, priority: int, parent: int) -> int:
    """A task of one fairness key: a new root, a child of an existing parent, a tracked
    task (polled) or a root whose create may have gone through (looked up)."""
    if kind == "child":
        return q.add(1, parent_id=parent, priority=priority)[0]
    if kind == "poll":
        task, _ = q.repo.create(
            Submission(provider="sandbox", id=q.repo.max_id() + 1, priority=priority)
        )
        return task.id
    (task_id,) = q.add(1, priority=priority)
    if kind == "lookup":
        with q.engine.begin() as conn:
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(phase="uncertain", maybe_created=True)
            )
    return task_id


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(-1, 1), st.integers(-3, 2)),
        min_size=1,
        max_size=12,
    ),
    polls_first=st.booleans(),
)
def test_explains_ahead_is_the_place_a_fair_claim_gives_each_due_task(
    q: Queue, specs: list[tuple[str, int, int]], polls_first: bool
) -> None:
    """In one fairness key, the count explain shows (:meth:`TaskRepository.due_ahead`, up
    to its cap) is the number of tasks a fair claim of everything due takes before the
    task, for every kind of due task (new root, child, poll, lookup), with tasks not due
    yet (due in up to 2 s) beside them, and the key's stored turn
    (``fair_shares.polls_next``) set to either stream's: explain starts from the turn the
    claim does."""
    with q.engine.begin() as conn:  # the previous example's tasks: finished
        conn.execute(update(tasks).values(phase="done", claimed_by=None, claimed_until=None))
    parent = _completed_parent(q)
    due_at: dict[int, datetime] = {}
    for kind, priority, offset in specs:
        task_id = _one_of(q, kind, priority, parent)
        due_at[task_id] = q.now() + timedelta(seconds=offset)
    key = q.get(next(iter(due_at))).fairness_key
    with q.engine.begin() as conn:
        for task_id, when in due_at.items():
            conn.execute(update(tasks).where(tasks.c.id == task_id).values(next_attempt_at=when))
        fairshare.record(conn, "sandbox", 0.0, 0.0, {key: 0.0}, {}, q.now(), {key: polls_first})
        stored = conn.execute(
            select(fairshare.fair_shares.c.polls_next).where(
                fairshare.fair_shares.c.fairness_key == key
            )
        ).scalar_one()
    assert bool(stored) is polls_first
    due = [task_id for task_id, when in due_at.items() if when <= q.now()]
    ahead = {task_id: q.repo.due_ahead(q.get(task_id), q.now(), 1000) for task_id in due}

    claimed = [t.id for t in fair_claim(q, len(due_at))]

    assert sorted(claimed) == sorted(due)
    assert ahead == {task_id: claimed.index(task_id) for task_id in due}


def _turns(polls: list[int], ready: list[int], polls_first: bool = True) -> list[int]:
    """The two streams of a key in turns, a poll first unless the key's last claim left
    the turn to its ready tasks (the model of a fair claim)."""
    first, second = (polls, ready) if polls_first else (ready, polls)
    merged: list[int] = []
    for n in range(max(len(polls), len(ready))):
        merged.extend(first[n : n + 1])
        merged.extend(second[n : n + 1])
    return merged


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(-1, 1), st.integers(-3, 2)),
        min_size=1,
        max_size=12,
    ),
    limit=st.integers(1, 12),
    other_key=st.booleans(),
)
def test_a_fair_claim_hands_out_a_keys_polls_and_creates_in_turns(
    q: Queue, specs: list[tuple[str, int, int]], limit: int, other_key: bool
) -> None:
    """Within a key, a fair claim takes its due polls and lookups (by due time, then id) and
    its other due work (priority, children of existing parents first, due time, id) in
    turns, from the turn the key's last claim left (the previous example's: either); once
    one stream runs out, the other fills the rest. With another key beside it (the
    candidates' path) the key's part of the claim is the same prefix."""
    with q.engine.begin() as conn:  # the previous example's tasks: finished
        conn.execute(update(tasks).values(phase="done", claimed_by=None, claimed_until=None))
    parent = _completed_parent(q)
    due_at: dict[int, datetime] = {}
    for kind, priority, offset in specs:
        task_id = _one_of(q, kind, priority, parent)
        due_at[task_id] = q.now() + timedelta(seconds=offset)
    with q.engine.begin() as conn:
        for task_id, when in due_at.items():
            conn.execute(update(tasks).where(tasks.c.id == task_id).values(next_attempt_at=when))
    if other_key:
        q.add(limit, tenant="other")
    due = [q.get(task_id) for task_id, when in due_at.items() if when <= q.now()]
    polls = sorted(
        (t for t in due if t.phase in (Phase.POLLING, Phase.UNCERTAIN)),
        key=lambda t: (due_at[t.id], t.id),
    )
    ready = sorted(
        (t for t in due if t.phase is Phase.READY),
        key=lambda t: (-t.priority, t.parent_id is None, due_at[t.id], t.id),
    )

    with q.engine.connect() as conn:
        key = q.get(next(iter(due_at))).fairness_key
        polls_first = fairshare.stored_turn(conn, "sandbox", key)

    claimed = [t.id for t in fair_claim(q, limit) if t.fairness_key != "other"]

    expected = _turns([t.id for t in polls], [t.id for t in ready], polls_first)
    assert claimed == expected[: len(claimed)]
    if not other_key:
        assert len(claimed) == min(len(expected), limit)


def test_a_due_poll_goes_in_the_first_claim_behind_a_backlog_of_roots(q: Queue) -> None:
    """A poll that falls due after 300 due roots is taken by the next fair claim (it took
    the claim after every one of them until polls and creates took turns)."""
    roots = q.add(300)
    q.clock.advance(1)
    polled = q.track(q.repo.max_id() + 1)
    q.clock.advance(1)

    claimed = fair_claim(q, 10)

    assert [t.id for t in claimed] == [polled, *roots[:9]]


def test_creates_get_half_of_each_claim_however_many_polls_are_due(q: Queue) -> None:
    """With 100 polls due before them, creates still take every other slot of a claim
    (polls share the provider's budget: first would let them take it all)."""
    polled = [q.track(n) for n in range(1, 101)]
    q.clock.advance(1)
    roots = q.add(50)
    q.clock.advance(1)

    first = fair_claim(q, 10)
    second = fair_claim(q, 9)

    assert [t.id for t in first] == _turns(polled[:5], roots[:5])
    assert [t.id for t in second] == _turns(polled[5:10], roots[5:9])


def test_release_refunds_the_share(q: Queue) -> None:
    """Work claimed for a key and given back unsent does not count against its share."""
    q.add(40, tenant="a")
    q.add(40, tenant="b")
    q.clock.advance(1)
    first = fair_claim(q, 10)
    q.queue.release([t for t in first if t.fairness_key == "a"])

    again = fair_claim(q, 10)

    # Net of what went back, a and b have had their equal share to within one task.
    net_a = sum(t.fairness_key == "a" for t in again)
    net_b = sum(t.fairness_key == "b" for t in [*first, *again])
    assert abs(net_a - net_b) <= 1
    assert net_a + net_b == 15


def heavy_audiences(provider: str, kind: str | None, operation: Operation) -> float:
    """A DV360-like budget: creating an audience costs 5 units, everything else 1."""
    return 5.0 if (kind, operation) == ("audience", Operation.SUBMIT) else 1.0


def test_shares_are_counted_in_budget_units(q: Queue) -> None:
    """A key whose creates cost 5 gets a fifth as many tasks as one whose creates cost 1,
    the same units of the budget; the shares report units, and giving work back refunds
    what its claim charged."""
    q.add(40, tenant="heavy", kind="audience")
    q.add(40, tenant="light", kind="campaign")
    q.clock.advance(1)

    claimed = q.queue.claim_fair(q.now(), 24, "w", LEASE_S, "sandbox", None, heavy_audiences)

    assert sum(t.fairness_key == "heavy" for t in claimed) == 4
    assert sum(t.fairness_key == "light" for t in claimed) == 20
    shares = {s.key: s for s in q.queue.shares("sandbox", q.now())}
    assert shares["heavy"].granted_last_minute == shares["light"].granted_last_minute == 20
    assert shares["heavy"].share == 0.5

    back = [t for t in claimed if t.fairness_key == "heavy"][:2]
    assert q.queue.release(back, charge=heavy_audiences) == 2
    after = {s.key: s for s in q.queue.shares("sandbox", q.now())}
    assert after["heavy"].granted_last_minute == 10
    # The refunded units count as never handed out: heavy is 10 units (two tasks) behind;
    # once level, the tie goes by key order.
    again = q.queue.claim_fair(q.now(), 4, "w", LEASE_S, "sandbox", None, heavy_audiences)
    assert [t.fairness_key for t in again] == ["heavy", "heavy", "heavy", "light"]


def test_shares_report_waiting_and_granted(q: Queue) -> None:
    q.add(30, tenant="a")
    q.add(10, tenant="b")
    q.clock.advance(1)
    fair_claim(q, 8, {"a": 3.0})

    shares = {s.key: s for s in q.queue.shares("sandbox", q.now(), {"a": 3.0})}

    assert (shares["a"].waiting, shares["b"].waiting) == (24, 8)
    assert (shares["a"].granted_last_minute, shares["b"].granted_last_minute) == (6, 2)
    assert shares["a"].weight == 3.0
    assert shares["a"].share == 0.75
    q.clock.advance(200)
    later = {s.key: s for s in q.queue.shares("sandbox", q.now(), {"a": 3.0})}
    assert later["a"].granted_last_minute == 0
    assert later["a"].waiting == 24


# -- giving work back --------------------------------------------------------------------


def test_release_of_unsent_work_makes_it_ready_again(q: Queue) -> None:
    """Released, unsent submissions are ready again at the given time, with no claim."""
    (task_id,) = q.add(1)
    claimed = q.claim()
    later = q.now() + timedelta(seconds=30)

    q.queue.release(claimed, next_attempt_at=later)

    task = q.get(task_id)
    assert task.phase is Phase.READY
    assert task.next_attempt_at == later
    assert q.claimed_by(task_id) is None
    assert not task.maybe_created


def test_release_never_touches_someone_elses_claim(q: Queue) -> None:
    """A worker whose lease ran out and whose task another worker claimed cannot release it."""
    tracked = q.track(9)
    stale = q.claim("a")
    q.clock.advance(LEASE_S + 1)
    fresh = q.claim("b")

    q.queue.release(stale)

    assert q.claimed_by(tracked) == fresh[0].claimed_by


# -- guarded outcomes --------------------------------------------------------------------


def test_outcome_applies_for_the_claim_holder(q: Queue) -> None:
    """The holder's outcome is applied, with its event, and the claim is cleared."""
    (task_id,) = q.add(1)
    (due,) = q.claim()

    applied = q.queue.apply(
        [decide.after_submit(due, Accepted("x-1", completed=False), POLICY, q.now())], q.now()
    )

    assert applied == 1
    task = q.get(task_id)
    assert (task.status, task.phase, task.external_id) == (
        TaskStatus.IN_PROGRESS,
        Phase.POLLING,
        "x-1",
    )
    assert q.claimed_by(task_id) is None
    assert q.event_names(task_id) == ["created", "submitted"]


def test_guarded_apply_loses_to_a_concurrent_cancel(q: Queue) -> None:
    """An outcome arriving after the task was cancelled loses: cancel wins. The object the
    create made is recorded on the Cancelled task (it was known to nobody before)."""
    (task_id,) = q.add(1)
    (due,) = q.claim()
    outcome = decide.after_submit(due, Accepted("x-1", completed=False), POLICY, q.now())

    q.repo.cancel(task_id)
    applied = q.queue.apply([outcome], q.now())

    assert applied == 0
    task = q.get(task_id)
    assert task.status is TaskStatus.CANCELLED
    assert task.external_id == "x-1"
    assert task.maybe_created  # a retry looks the object up before creating it
    assert q.event_names(task_id) == ["created", "cancelled", "created_after_cancel"]
    assert q.claimed_by(task_id) is None  # the holder let go
    retried = q.repo.retry(task_id)  # settled as before: looked up first, never created twice
    assert (retried.phase, retried.external_id) == (Phase.UNCERTAIN, None)


def test_a_failed_create_that_lost_to_a_cancel_records_nothing(q: Queue) -> None:
    """Only a create that made an object leaves its id on the Cancelled task."""
    (task_id,) = q.add(1)
    (due,) = q.claim()
    outcome = decide.after_submit(due, Transient("HTTP 500"), POLICY, q.now())

    q.repo.cancel(task_id)
    q.queue.apply([outcome], q.now())

    task = q.get(task_id)
    assert task.external_id is None
    assert q.event_names(task_id) == ["created", "cancelled"]
    assert q.claimed_by(task_id) is None


def test_cancel_and_retry_never_hand_a_held_task_to_a_second_worker(q: Queue) -> None:
    """A task cancelled and retried while a worker still holds it (its request may be on
    the way) is not claimed by anyone else until that claim ends: never two live claims."""
    (task_id,) = q.add(1)
    (held,) = q.claim("a")

    q.repo.cancel(task_id)
    retried = q.repo.retry(task_id)

    assert retried.phase is Phase.UNCERTAIN  # the held create may still be sent
    assert q.claimed_by(task_id) == held.claimed_by
    q.clock.advance(LEASE_S - 1)
    assert q.claim("b") == []
    q.clock.advance(2)
    assert q.queue.recover_stuck(q.now()) == 1
    (taken,) = q.claim("b")
    assert taken.operation.value == "lookup"


def test_holder_outcome_after_cancel_and_retry_is_recorded(q: Queue) -> None:
    """After a cancel and a retry, the holder's answer for its create is the truth about
    the provider and is recorded (status is Not Started again, the claim is still its)."""
    (task_id,) = q.add(1)
    (held,) = q.claim("a")
    outcome = decide.after_submit(held, Accepted("x-9", completed=False), POLICY, q.now())
    q.repo.cancel(task_id)
    q.repo.retry(task_id)

    assert q.queue.apply([outcome], q.now()) == 1

    task = q.get(task_id)
    assert (task.status, task.external_id) == (TaskStatus.IN_PROGRESS, "x-9")
    assert q.claimed_by(task_id) is None


def _accepted(q: Queue) -> int:
    """A task whose create the provider accepted (as ``x-1``), now polled."""
    (task_id,) = q.add(1)
    (due,) = q.claim()
    q.queue.apply(
        [decide.after_submit(due, Accepted("x-1", completed=False), POLICY, q.now())], q.now()
    )
    return task_id


def _end_by_sluice(q: Queue, task_id: int, how: str) -> None:
    """End a polled task the way Sluice does, not the provider."""
    if how == "cancelled":
        q.repo.cancel(task_id)
        return
    policy = POLICY if how == "gave up" else replace(POLICY, deadline_s=60.0)
    if how == "deadline":
        q.clock.advance(3)
        (due,) = q.claim()  # the first read starts the deadline
        report = StatusReport(TaskStatus.IN_PROGRESS, None, "processing")
        q.queue.apply([decide.after_poll(due, report, policy, q.now())], q.now())
        q.clock.advance(61)
    for _ in range(policy.max_attempts):
        q.clock.advance(3600)
        (due,) = q.claim()
        answer = (
            Transient("502 bad gateway")
            if how == "gave up"
            else StatusReport(TaskStatus.IN_PROGRESS, None, "processing")
        )
        q.queue.apply([decide.after_poll(due, answer, policy, q.now())], q.now())
        if q.get(task_id).status is TaskStatus.ERROR:
            return
    raise AssertionError(f"{how}: task {task_id} did not end")


@pytest.mark.parametrize("how", ["cancelled", "gave up", "deadline"])
def test_retry_polls_again_an_object_the_provider_holds(q: Queue, how: str) -> None:
    """A task whose create was accepted and that Sluice ended (a cancel, polls given up, a
    deadline) is polled again by its id when retried: never created a second time."""
    task_id = _accepted(q)
    _end_by_sluice(q, task_id, how)
    assert q.get(task_id).status in (TaskStatus.CANCELLED, TaskStatus.ERROR)

    retried = q.repo.retry(task_id)

    assert (retried.phase, retried.external_id) == (Phase.POLLING, "x-1")
    assert (retried.attempts, retried.maybe_created) == (0, False)
    q.clock.advance(1)
    (due,) = q.claim()
    assert due.operation is Operation.POLL
    done = StatusReport(TaskStatus.COMPLETED, None, "active")
    q.queue.apply([decide.after_poll(due, done, POLICY, q.now())], q.now())
    assert (q.get(task_id).status, q.get(task_id).external_id) == (TaskStatus.COMPLETED, "x-1")


@pytest.mark.parametrize("final", [TaskStatus.ERROR, TaskStatus.CANCELLED])
def test_retry_submits_again_what_the_provider_ended(q: Queue, final: TaskStatus) -> None:
    """A task the provider itself reported Error or Cancelled is created anew when
    retried: the provider's object is finished, the retry asks for another."""
    task_id = _accepted(q)
    q.clock.advance(3)
    (due,) = q.claim()
    report = StatusReport(final, "audience too small", "rejected")
    q.queue.apply([decide.after_poll(due, report, POLICY, q.now())], q.now())
    assert q.get(task_id).status is final

    before = q.get(task_id).client_ref
    retried = q.repo.retry(task_id)

    assert (retried.phase, retried.external_id) == (Phase.READY, None)
    # A new client reference: the old one names the ended object, which a lookup after a
    # lost answer (or an idempotency key) would otherwise find again.
    assert retried.client_ref is not None
    assert retried.client_ref.startswith("sl-")
    assert retried.client_ref != before
    (due,) = q.claim()
    assert due.operation is Operation.SUBMIT
    assert due.client_ref == retried.client_ref


@pytest.mark.parametrize("can_lookup", [True, False])
def test_retry_creates_again_an_object_the_provider_no_longer_has(
    q: Queue, can_lookup: bool
) -> None:
    """Status reads that keep answering 404 end the task ``object_gone``; a retry does not
    poll the missing id again but is settled first, like an ambiguous create: looked up by
    its (same) client reference, or, for a kind with no lookup, "outcome unknown"."""
    policy = replace(POLICY, can_lookup=can_lookup)
    task_id = _accepted(q)
    ref = q.get(task_id).client_ref
    for _ in range(policy.max_attempts):
        q.clock.advance(3600)
        (due,) = q.claim()
        gone = Transient("HTTP 404: x-1 not found", gone=True)
        q.queue.apply([decide.after_poll(due, gone, policy, q.now())], q.now())
    ended = q.get(task_id)
    assert ended.status is TaskStatus.ERROR
    assert "has no object x-1" in (ended.validation_error or "")

    retried = q.repo.retry(task_id)

    assert (retried.external_id, retried.client_ref) == (None, ref)
    assert (retried.phase, retried.maybe_created) == (Phase.UNCERTAIN, True)
    (due,) = q.claim()
    assert due.operation is Operation.LOOKUP
    if not can_lookup:
        unknown = decide.unresolved(due, policy, q.now())
        q.queue.apply([unknown], q.now())
        assert q.get(task_id).status is TaskStatus.ERROR
        assert q.repo.retry(task_id).phase is Phase.READY


def test_outcome_from_a_lost_claim_is_refused(q: Queue) -> None:
    """A worker whose lease expired and whose task was recovered and claimed by another
    cannot overwrite the task: its late outcome is refused, the new holder's applies."""
    (task_id,) = q.add(1)
    (stale,) = q.claim("a")
    q.clock.advance(LEASE_S + 1)
    assert q.queue.recover_stuck(q.now()) == 1
    (fresh,) = q.claim("b")
    assert fresh.phase is Phase.UNCERTAIN

    late = decide.after_submit(stale, Transient("connection refused"), POLICY, q.now())
    assert q.queue.apply([late], q.now()) == 0

    task = q.get(task_id)
    assert task.phase is Phase.UNCERTAIN
    assert q.claimed_by(task_id) == fresh.claimed_by
    assert q.queue.apply([decide.after_lookup(fresh, NotFound(), POLICY, q.now())], q.now()) == 1
    assert q.get(task_id).phase is Phase.READY


def test_same_worker_cannot_apply_an_outcome_of_its_own_earlier_claim(q: Queue) -> None:
    """A claim token is per claim: an outcome of an earlier claim by the same worker name
    is refused once the task was claimed again."""
    tracked = q.track(4)
    (first,) = q.claim("a")
    q.clock.advance(LEASE_S + 1)
    (second,) = q.claim("a")

    report = StatusReport(TaskStatus.ERROR, "rejected", "rejected")
    late = decide.after_poll(first, report, POLICY, q.now())

    assert q.queue.apply([late], q.now()) == 0
    assert q.get(tracked).status is TaskStatus.NOT_STARTED
    assert q.claimed_by(tracked) == second.claimed_by


def test_outcome_for_a_released_claim_is_refused(q: Queue) -> None:
    """Once a claim is given back, an outcome decided under it is not applied."""
    tracked = q.track(4)
    (due,) = q.claim("a")
    q.queue.release([due])

    report = StatusReport(TaskStatus.COMPLETED, None, "done")
    assert q.queue.apply([decide.after_poll(due, report, POLICY, q.now())], q.now()) == 0
    assert q.get(tracked).status is TaskStatus.NOT_STARTED


# -- leases and recovery -----------------------------------------------------------------


def test_expired_submission_is_recovered_as_uncertain_once(q: Queue) -> None:
    """A submission whose worker vanished becomes uncertain (looked up next) with one
    'recovered' event; recovering again changes nothing."""
    (task_id,) = q.add(1)
    q.claim("a")
    q.clock.advance(LEASE_S + 1)

    assert q.queue.recover_stuck(q.now()) == 1
    assert q.queue.recover_stuck(q.now()) == 0

    task = q.get(task_id)
    assert task.phase is Phase.UNCERTAIN
    assert task.maybe_created
    assert task.next_attempt_at == q.now()
    assert q.claimed_by(task_id) is None
    assert q.event_names(task_id) == ["created", "recovered"]
    (due,) = q.claim("b")
    assert due.operation.value == "lookup"


def test_recovery_leaves_live_claims_alone(q: Queue) -> None:
    """Claims whose lease has not ended are not recovered."""
    (task_id,) = q.add(1)
    tracked = q.track(70)
    q.claim("a")
    q.clock.advance(LEASE_S - 1)

    assert q.queue.recover_stuck(q.now()) == 0

    assert q.get(task_id).phase is Phase.SUBMITTING
    assert q.claimed_by(task_id) is not None
    assert q.claimed_by(tracked) is not None


def test_expired_poll_claims_are_released_without_changing_phase(q: Queue) -> None:
    """An expired claim on a poll just lapses: the task is due again, still polling."""
    tracked = q.track(70)
    q.claim("a")
    q.clock.advance(LEASE_S + 1)

    assert q.queue.recover_stuck(q.now()) == 1

    assert q.get(tracked).phase is Phase.POLLING
    assert q.claimed_by(tracked) is None
    assert q.event_names(tracked) == ["created"]


def test_concurrent_reconcilers_recover_each_task_once(q: Queue) -> None:
    """Four reconcilers on their own engines, racing over 60 stuck submissions: each task
    is recovered exactly once (one event each)."""
    ids = q.add(60)
    q.claim("dead", limit=100)
    q.clock.advance(LEASE_S + 1)
    now = q.now()
    start = threading.Barrier(4)
    counts: list[int] = []

    def reconcile() -> None:
        engine = db.make_engine(q.url)
        try:
            queue = WorkQueue(engine)
            start.wait()
            counts.append(queue.recover_stuck(now))
        finally:
            engine.dispose()

    threads = [threading.Thread(target=reconcile) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(counts) == 60
    for task_id in ids:
        assert q.event_names(task_id) == ["created", "recovered"]


def _wait_for_lock_waiter(engine: Engine, timeout_s: float = 20.0) -> bool:
    """Wait until some session of this database waits on a row lock (True), or give up."""
    deadline = time.monotonic() + timeout_s
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            # pg_stat_activity is a snapshot per transaction: end it to see changes.
            conn.rollback()
            if waiting:
                return True
            time.sleep(0.01)
    return False


@pytest.mark.postgres
def test_recovery_rechecks_the_row_and_never_clears_a_fresh_claim(postgres_url: str) -> None:
    """A reconciler that saw a task stuck, but reaches it only after another reconciler
    recovered it and a worker claimed it again, leaves the fresh claim alone and writes no
    second 'recovered' event (recovery is one guarded statement, not select-then-update)."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    clock = FakeClock(START)
    q = Queue(WorkQueue(engine), TaskRepository(engine, clock), clock, postgres_url)
    try:
        (task_id,) = q.add(1)
        q.claim("dead")
        clock.advance(LEASE_S + 1)
        now = clock.now()
        late_engine = db.make_engine(postgres_url)
        late = WorkQueue(late_engine)
        result: list[int] = []

        with engine.connect() as holder:
            # Another reconciler is mid-way: it holds the row while recovering it.
            holder.begin()
            holder.execute(select(tasks.c.id).where(tasks.c.id == task_id).with_for_update())
            thread = threading.Thread(target=lambda: result.append(late.recover_stuck(now)))
            thread.start()
            assert _wait_for_lock_waiter(engine), "the late reconciler never reached the row"
            # ... recovers it, and a worker claims it again for a lookup.
            holder.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(
                    phase=Phase.UNCERTAIN.value,
                    claimed_by="fresh-worker/1",
                    claimed_until=now + timedelta(seconds=LEASE_S),
                )
            )
            holder.execute(
                events.insert(), [event_row(task_id, now, "recovered", None, None, "first")]
            )
            holder.commit()
        thread.join(timeout=30)
        late_engine.dispose()

        assert result == [0]
        assert q.claimed_by(task_id) == "fresh-worker/1"
        assert q.event_names(task_id) == ["created", "recovered"]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_apply_waiting_on_a_cancel_in_progress_loses_to_it(postgres_url: str) -> None:
    """An outcome written while a cancel holds the row waits for it, then finds the status
    changed and is dropped: the cancel wins under real concurrency too."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    clock = FakeClock(START)
    q = Queue(WorkQueue(engine), TaskRepository(engine, clock), clock, postgres_url)
    try:
        (task_id,) = q.add(1)
        (held,) = q.claim("a")
        outcome = decide.after_submit(held, Accepted("x-1", completed=False), POLICY, q.now())
        writer_engine = db.make_engine(postgres_url)
        applied: list[int] = []
        with engine.connect() as canceller:
            canceller.begin()
            canceller.execute(select(tasks.c.id).where(tasks.c.id == task_id).with_for_update())
            writer = threading.Thread(
                target=lambda: applied.append(WorkQueue(writer_engine).apply([outcome], q.now()))
            )
            writer.start()
            assert _wait_for_lock_waiter(engine), "the outcome writer never reached the row"
            canceller.execute(
                update(tasks)
                .where(tasks.c.id == task_id)
                .values(status=TaskStatus.CANCELLED.value, phase=Phase.DONE.value)
            )
            canceller.commit()
        writer.join(timeout=30)
        writer_engine.dispose()

        assert applied == [0]
        task = q.get(task_id)
        # The cancel wins; the object the create made is recorded on the Cancelled task.
        assert (task.status, task.external_id) == (TaskStatus.CANCELLED, "x-1")
    finally:
        engine.dispose()


def test_submitting_task_without_a_claim_is_recovered(q: Queue) -> None:
    """A task left submitting with no claim at all (its claim was cleared) becomes uncertain."""
    (task_id,) = q.add(1)
    q.claim("a")
    with q.engine.begin() as conn:
        conn.execute(
            update(tasks).where(tasks.c.id == task_id).values(claimed_by=None, claimed_until=None)
        )

    assert q.queue.recover_stuck(q.now()) == 1

    assert q.get(task_id).phase is Phase.UNCERTAIN
    assert q.event_names(task_id) == ["created", "recovered"]


def test_take_over_recovers_every_claim_before_its_lease_ends(q: Queue) -> None:
    """An engine that knows it is alone on the database (an embedded one that just took the
    engine lock of a killed one) recovers the claims left there at once: the submission
    becomes uncertain, the poll's claim is released, and nothing is left to a lease."""
    (task_id,) = q.add(1)
    tracked = q.track(70)
    q.claim("killed")
    q.clock.advance(1)  # well inside the lease

    assert q.queue.take_over(q.now()) == (1, 1)
    assert q.queue.take_over(q.now()) == (0, 0)

    task = q.get(task_id)
    assert (task.phase, task.maybe_created) == (Phase.UNCERTAIN, True)
    assert q.claimed_by(task_id) is None
    assert q.event_names(task_id) == ["created", "recovered"]
    assert (q.get(tracked).phase, q.claimed_by(tracked)) == (Phase.POLLING, None)
    (lookup, poll) = sorted(q.claim("new"), key=lambda due: due.id)
    assert lookup.operation.value == "lookup"
    assert poll.id == tracked


# -- what is due -------------------------------------------------------------------------


def test_next_due_and_unfinished_counts(q: Queue) -> None:
    """next_due_at is the earliest due active task; unfinished counts tasks not final."""
    assert q.queue.next_due_at() is None
    first, second = q.add(2)
    q.clock.advance(5)
    q.add(1)
    q.repo.cancel(second)

    assert q.queue.next_due_at() == START
    assert q.queue.unfinished_count() == 2
    assert first != second


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cancelled=st.lists(st.booleans(), min_size=2, max_size=8),
    accepted=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_a_batch_of_outcomes_applies_exactly_those_whose_guard_holds(
    q: Queue, cancelled: list[bool], accepted: list[bool]
) -> None:
    """One transaction of outcomes (the writer's batch, its UPDATEs sent together when every
    guard holds) applies each outcome whose task is still as claimed and only those, as if
    applied one by one; a cancelled task keeps its cancel and its holder lets go."""
    ids = q.add(len(cancelled))
    due = {d.id: d for d in q.claim(limit=1000) if d.id in ids}
    assert set(due) == set(ids)
    outcomes = [
        decide.after_submit(
            due[task_id],
            Accepted(f"x-{task_id}", completed=False)
            if accepted[i]
            else Transient("connection refused"),
            POLICY,
            q.now(),
        )
        for i, task_id in enumerate(ids)
    ]
    for task_id, cancel in zip(ids, cancelled, strict=True):
        if cancel:
            q.repo.cancel(task_id)

    applied = q.queue.apply(outcomes, q.now())

    assert applied == cancelled.count(False)
    for i, (task_id, cancel) in enumerate(zip(ids, cancelled, strict=True)):
        task = q.get(task_id)
        assert q.claimed_by(task_id) is None
        if cancel:
            # The object a create made before the cancel reached it is recorded, no more.
            assert task.status is TaskStatus.CANCELLED
            made = ["created_after_cancel"] if accepted[i] else []
            assert q.event_names(task_id) == ["created", "cancelled", *made]
            assert task.external_id == (f"x-{task_id}" if accepted[i] else None)
        elif accepted[i]:
            assert (task.status, task.external_id) == (TaskStatus.IN_PROGRESS, f"x-{task_id}")
            assert q.event_names(task_id) == ["created", "submitted"]
        else:
            assert task.status is TaskStatus.NOT_STARTED
            assert q.event_names(task_id)[-1] == "attempt_failed"


@pytest.mark.postgres
def test_a_batch_of_outcomes_changes_its_rows_in_task_id_order(postgres_url: str) -> None:
    """Outcomes that arrived newest task first change the rows oldest first, the order in
    which a bulk job locks them: a transaction locking the first row, then the second,
    waits for the writer or the writer for it, never both. In arrival order the writer
    held the second row while waiting for the first, and PostgreSQL aborted one of them."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    q = Queue(WorkQueue(engine), TaskRepository(engine, FakeClock(START)), FakeClock(START), "")
    first, second = q.add(2)
    due = {task.id: task for task in q.claim()}
    outcomes = [
        decide.after_submit(due[i], Accepted(f"x-{i}", completed=False), POLICY, q.now())
        for i in (second, first)
    ]
    applied: list[int] = []
    writer = threading.Thread(target=lambda: applied.append(q.queue.apply(outcomes, q.now())))
    try:
        with engine.connect() as bulk_job:
            locking = bulk_job.begin()
            bulk_job.execute(select(tasks.c.id).where(tasks.c.id == first).with_for_update())
            writer.start()
            writer.join(timeout=0.5)  # the writer waits for the first row
            bulk_job.execute(select(tasks.c.id).where(tasks.c.id == second).with_for_update())
            locking.commit()
        writer.join(timeout=30)
        assert applied == [2]
        assert [q.get(i).external_id for i in (first, second)] == [f"x-{first}", f"x-{second}"]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_deadlock_is_transient_and_a_broken_constraint_is_not(postgres_url: str) -> None:
    """What the outcome writer tries again (``db.transient``), on errors PostgreSQL raised."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock(START))
    first, second = repo.create_many([Submission(provider="sandbox", kind="campaign")] * 2)
    raised: list[Exception] = []

    def lock(conn: Any, *ids: int) -> None:
        try:
            for task_id in ids:
                conn.execute(select(tasks.c.id).where(tasks.c.id == task_id).with_for_update())
                time.sleep(0.3)
        except Exception as exc:
            raised.append(exc)

    try:
        with engine.connect() as one, engine.connect() as other:
            one.begin()
            other.begin()
            crossing = threading.Thread(target=lock, args=(other, second, first))
            crossing.start()
            lock(one, first, second)
            crossing.join(timeout=30)
        (deadlock,) = raised
        assert db.transient(deadlock), deadlock
        with pytest.raises(IntegrityError) as broken, engine.begin() as conn:
            conn.execute(tasks.insert().values(id=first, provider="sandbox"))
        assert not db.transient(broken.value)
    finally:
        engine.dispose()


def test_on_sqlite_a_locked_database_is_transient_and_a_missing_table_is_not(
    tmp_path: Path,
) -> None:
    """SQLite raises both as ``OperationalError``: retrying a missing table (a database
    never migrated) held every later batch of outcomes back for a minute (a review)."""
    path = tmp_path / "t.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.ensure_schema(engine)
    impatient = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    holder = sqlite3.connect(path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError) as locked, impatient.begin() as conn:
            conn.execute(text("DELETE FROM tasks"))
        assert db.transient(locked.value), locked.value
        holder.rollback()
        for statement in ("SELECT * FROM no_such_table", "SELEC 1", "SELECT no_such FROM tasks"):
            with pytest.raises(OperationalError) as broken, impatient.connect() as conn:
                conn.execute(text(statement))
            assert not db.transient(broken.value), statement
    finally:
        holder.close()
        impatient.dispose()
        engine.dispose()


def test_what_a_provider_says_is_stored_even_with_a_nul_character(q: Queue) -> None:
    """A third party's id, messages and the event's detail may hold U+0000, which
    PostgreSQL's text cannot: it is stored as U+FFFD, on both databases, and the rest of the
    batch is written with it (before, PostgreSQL refused the whole batch of outcomes)."""
    first, second = q.add(2)
    due = {d.id: d for d in q.claim()}
    rejected = decide.after_submit(due[first], Failed("name\x00 is not allowed"), POLICY, q.now())
    accepted = decide.after_submit(
        due[second], Accepted("x-\x00-1", completed=False), POLICY, q.now()
    )

    assert q.queue.apply([rejected, accepted], q.now()) == 2

    task = q.get(first)
    assert task.status is TaskStatus.ERROR
    assert task.validation_error == "name\ufffd is not allowed"
    assert q.repo.events(first)[-1].detail == "name\ufffd is not allowed"
    assert q.get(second).external_id == "x-\ufffd-1"


def test_explains_ahead_keeps_the_claims_order_with_a_poll_in_flight(q: Queue) -> None:
    """A poll claimed already (in flight: still ``polling``, its lease running) is not due:
    it takes no turn from the due tasks. Explain's ``ahead`` must still rank the due tasks
    as the next claim takes them (each at most one more than the one before), not count the
    poll in flight as a turn the ready tasks wait for."""
    polls = [q.track(n) for n in (1, 2)]
    q.clock.advance(1)
    roots = q.add(3)
    q.clock.advance(1)
    (in_flight,) = fair_claim(q, 1)
    assert in_flight.id == polls[0]
    due = [polls[1], *roots]
    ahead = {task_id: q.repo.due_ahead(q.get(task_id), q.now(), 1000) for task_id in due}

    claimed = [t.id for t in fair_claim(q, 10)]

    # The claim of p0 left the turn to the ready tasks (the turns run on across claims).
    assert claimed == [roots[0], polls[1], *roots[1:]]
    in_claim_order = [ahead[task_id] for task_id in claimed]
    assert in_claim_order == sorted(in_claim_order), ahead
    assert len(set(in_claim_order)) == len(in_claim_order), ahead


def _polled_again(q: Queue, claimed: list[DueTask]) -> None:
    """The claimed polls answered "still running": due again a poll interval later."""
    q.queue.release(claimed, next_attempt_at=q.now())
    q.clock.advance(1)


def test_claims_of_one_task_do_not_starve_a_keys_creates_behind_recurring_polls(
    q: Queue,
) -> None:
    """A slow provider claims one task at a time (a lookahead at 1/s). The turns restart at
    each claim and give its one slot to a poll, so while a poll of the key is due at every
    claim (objects in flight, polled again and again) its create is never claimed. In due
    order (before the turns) the create, due before the polls came due again, went third."""
    q.track(1)
    q.track(2)
    q.clock.advance(1)
    (root,) = q.add(1)
    q.clock.advance(1)

    taken: list[int] = []
    for _ in range(8):
        claimed = fair_claim(q, 1)
        taken += [t.id for t in claimed]
        _polled_again(q, [t for t in claimed if t.phase is Phase.POLLING])

    assert root in taken, taken


def test_claims_shared_by_many_keys_do_not_starve_their_creates_behind_recurring_polls(
    q: Queue,
) -> None:
    """With as many keys waiting as a claim has slots, each key gets one slot a claim, and
    the turns give it to the key's poll: while every key has a poll due at each claim, no
    create of any key is claimed."""
    keys = [f"k{n}" for n in range(4)]
    for n, key in enumerate(keys):
        q.repo.create(Submission(provider="sandbox", id=q.repo.max_id() + 1 + n, tenant=key))
    q.clock.advance(1)
    roots = {key: q.add(2, tenant=key) for key in keys}
    q.clock.advance(1)

    taken: list[int] = []
    for _ in range(8):
        claimed = fair_claim(q, len(keys))
        taken += [t.id for t in claimed]
        _polled_again(q, [t for t in claimed if t.phase is Phase.POLLING])

    created = {task_id for ids in roots.values() for task_id in ids}
    assert created & set(taken), taken
