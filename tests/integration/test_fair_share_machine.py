"""The fair-share claim against a model, on SQLite and the real PostgreSQL (stateful).

Rules add work to fairness keys (with priorities), let workers claim, finish and give back
(release) work, and move the clock. After every claim:

* every task claimed was due and held by nobody (no task is claimed twice);
* the claim took ``min(limit, due)`` tasks (work-conserving);
* each key got exactly the slots a model of start-time fair queuing gives it, and the
  stored tags equal the model's (releases refund, as the model does);
* within a key, the tasks claimed are its highest priority ones, oldest first;
* while no work has been given back, over every run of claims in which the same keys
  stayed backlogged, slots per unit of weight differ by at most one slot of each key.

Weights are powers of two so that the model's arithmetic is exactly the store's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, delete, select, update

from sluice.clock import FakeClock, as_utc
from sluice.domain import DueTask, Phase, Submission, TaskStatus
from sluice.store import fairshare
from sluice.store.fairshare import CLOCK_KEY, fair_shares
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository
from sluice.store.rows import events, tasks

PROVIDER = "sandbox"
WEIGHTS = {"a": 1.0, "b": 2.0, "c": 0.5}
KEYS = sorted(WEIGHTS)
WORKERS = ("w1", "w2")
LEASE_S = 600.0
MAX_TASKS = 150


@dataclass
class ModelTask:
    key: str
    priority: int
    state: str = "due"  # due | held | done
    holder: str | None = None


@dataclass
class Model:
    """Start-time fair queuing, written out plainly."""

    clock: float = 0.0
    vtime: dict[str, float] = field(default_factory=dict)

    def allocate(self, waiting: dict[str, int], slots: int) -> dict[str, int]:
        nxt = {k: max(self.vtime.get(k, 0.0), self.clock) for k, n in waiting.items() if n}
        counts = dict.fromkeys(nxt, 0)
        starts = dict(nxt)
        while slots and nxt:
            key = min(nxt, key=lambda k: (nxt[k], k))
            counts[key] += 1
            self.clock = max(self.clock, nxt[key])
            slots -= 1
            if counts[key] == waiting[key]:
                del nxt[key]
            else:
                nxt[key] += 1 / WEIGHTS[key]
        for key, count in counts.items():
            if count:
                self.vtime[key] = starts[key] + count / WEIGHTS[key]
        return {k: n for k, n in counts.items() if n}

    def refund(self, given_back: dict[str, int]) -> None:
        lowest = self.clock
        for key, count in sorted(given_back.items()):
            if key in self.vtime:
                self.vtime[key] -= count / WEIGHTS[key]
                lowest = min(lowest, self.vtime[key])
        self.clock = min(self.clock, lowest)


class FairShare(RuleBasedStateMachine):
    engine: ClassVar[Engine]

    def __init__(self) -> None:
        super().__init__()
        with self.engine.begin() as conn:
            conn.execute(delete(events))
            conn.execute(delete(tasks))
            conn.execute(delete(fair_shares))
        self.clock = FakeClock()
        self.repo = TaskRepository(self.engine, self.clock)
        self.queue = WorkQueue(self.engine)
        self.tasks: dict[int, ModelTask] = {}
        self.held: dict[str, list[DueTask]] = {w: [] for w in WORKERS}
        self.model = Model()
        self.released_ever = False
        self.window: tuple[frozenset[str], dict[str, int]] | None = None

    def due(self, key: str) -> list[int]:
        return [i for i, t in self.tasks.items() if t.key == key and t.state == "due"]

    # -- rules -------------------------------------------------------------------------

    @precondition(lambda self: len(self.tasks) < MAX_TASKS)
    @rule(key=st.sampled_from(KEYS), count=st.integers(1, 12), priority=st.integers(-2, 2))
    def add(self, key: str, count: int, priority: int) -> None:
        specs = [
            Submission(
                provider=PROVIDER, kind="campaign", payload={}, tenant=key, priority=priority
            )
            for _ in range(count)
        ]
        for task_id in self.repo.create_many(specs):
            self.tasks[task_id] = ModelTask(key, priority)
        self.clock.advance(0.001)

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 15))
    def claim(self, worker: str, limit: int) -> None:
        due_before = {k: len(self.due(k)) for k in KEYS}
        got = self.queue.claim_fair(self.clock.now(), limit, worker, LEASE_S, PROVIDER, WEIGHTS)
        # No task claimed twice; only due work.
        ids = [t.id for t in got]
        assert len(set(ids)) == len(ids)
        for task in got:
            assert self.tasks[task.id].state == "due", f"task {task.id} claimed while held/done"
        # Work-conserving.
        assert len(got) == min(limit, sum(due_before.values()))
        # Exactly the model's slots per key.
        expected = self.model.allocate({k: min(n, limit) for k, n in due_before.items()}, limit)
        counts: dict[str, int] = {}
        for task in got:
            counts[task.fairness_key] = counts.get(task.fairness_key, 0) + 1
        assert counts == expected, (counts, expected, due_before)
        # Within a key: highest priority first, then oldest.
        for key, count in counts.items():
            best = sorted(self.due(key), key=lambda i: (-self.tasks[i].priority, i))[:count]
            assert sorted(t.id for t in got if t.fairness_key == key) == sorted(best)
        for task in got:
            self.tasks[task.id].state = "held"
            self.tasks[task.id].holder = worker
        self.held[worker].extend(got)
        self._track_window(due_before, counts)

    def _track_window(self, due_before: dict[str, int], counts: dict[str, int]) -> None:
        backlogged = frozenset(k for k in KEYS if due_before[k] > counts.get(k, 0))
        everyone = frozenset(k for k in KEYS if due_before[k] > 0)
        if self.released_ever or backlogged != everyone or len(backlogged) < 2:
            self.window = None
            return
        if self.window is None or self.window[0] != backlogged:
            self.window = (backlogged, dict.fromkeys(backlogged, 0))
        window = self.window[1]
        for key in backlogged:
            window[key] += counts.get(key, 0)
        for a in backlogged:
            for b in backlogged:
                gap = window[a] / WEIGHTS[a] - window[b] / WEIGHTS[b]
                assert gap <= 1 / WEIGHTS[a] + 1 / WEIGHTS[b], (window, WEIGHTS)

    @precondition(lambda self: any(self.held.values()))
    @rule(worker=st.sampled_from(WORKERS), count=st.integers(1, 10))
    def finish(self, worker: str, count: int) -> None:
        """Sent and done: the task leaves the queue for good."""
        done, self.held[worker] = self.held[worker][:count], self.held[worker][count:]
        if not done:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(tasks)
                .where(tasks.c.id.in_([t.id for t in done]))
                .values(
                    phase=Phase.DONE.value,
                    status=TaskStatus.COMPLETED.value,
                    claimed_by=None,
                    claimed_until=None,
                )
            )
        for task in done:
            self.tasks[task.id].state = "done"

    @precondition(lambda self: any(self.held.values()))
    @rule(worker=st.sampled_from(WORKERS), count=st.integers(1, 10))
    def release(self, worker: str, count: int) -> None:
        """Given back unsent: due again, and its key refunded."""
        back, self.held[worker] = self.held[worker][-count:], self.held[worker][:-count]
        if not back:
            return
        assert self.queue.release(back) == len(back)
        refunds: dict[str, int] = {}
        for task in back:
            self.tasks[task.id].state = "due"
            refunds[task.fairness_key] = refunds.get(task.fairness_key, 0) + 1
        self.model.refund(refunds)
        self.released_ever = True
        self.window = None

    @rule(seconds=st.sampled_from([0.01, 0.5, 30.0]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def stored_tags_are_the_models(self) -> None:
        with self.engine.connect() as conn:
            stored = {
                key: vtime
                for key, vtime in conn.execute(
                    select(fair_shares.c.fairness_key, fair_shares.c.vtime).where(
                        fair_shares.c.provider == PROVIDER
                    )
                )
            }
        clock = stored.pop(CLOCK_KEY, 0.0)
        assert clock == pytest.approx(self.model.clock, abs=1e-9)
        assert stored == pytest.approx(self.model.vtime, abs=1e-9)

    @invariant()
    def held_tasks_are_claimed_in_the_store(self) -> None:
        with self.engine.connect() as conn:
            claimed = {
                task_id
                for (task_id,) in conn.execute(
                    select(tasks.c.id).where(tasks.c.claimed_by.is_not(None))
                )
            }
        assert claimed == {i for i, t in self.tasks.items() if t.state == "held"}


def test_fair_share_claims_match_the_model(engine: Engine) -> None:
    FairShare.engine = engine
    examples = int(os.environ.get("SLUICE_TEST_MACHINE_EXAMPLES", "60"))
    if engine.dialect.name == "postgresql":
        examples = max(1, examples // 2)
    run_state_machine_as_test(
        FairShare,
        settings=settings(max_examples=examples, stateful_step_count=40, deadline=None),
    )


def test_a_claim_recorded_after_a_later_one_keeps_the_minutes_counts(engine: Engine) -> None:
    """Two claims commit out of the order of their clock reads (12:01:00.01, then
    12:00:59.99): the late one counts in the row's minute. Before, it moved the row back
    to 12:00 and dropped both minutes' grants (the console's shares)."""
    minute = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    for seconds, units in ((10, 20.0), (40, 10.0), (60.01, 5.0), (59.99, 3.0)):
        with engine.begin() as conn:
            fairshare.record(
                conn, "p", 0.0, 0.0, {"acme": units}, {}, minute + timedelta(seconds=seconds)
            )
    with engine.connect() as conn:
        row = conn.execute(
            select(fair_shares.c.minute, fair_shares.c.granted, fair_shares.c.prev_granted).where(
                fair_shares.c.fairness_key == "acme"
            )
        ).one()
    assert (as_utc(row.minute), row.granted, row.prev_granted) == (
        minute + timedelta(minutes=1),
        8.0,
        30.0,
    )
