"""A bulk job crashed at any point and resumed changes exactly the matching tasks, once.

A stateful Hypothesis test over the real store (SQLite and PostgreSQL): tasks of several
statuses and kinds, a bulk retry or cancel previewed and started, tasks added after the
preview (not covered), then batches run by runners that crash (mid-batch, inside the
transaction, or between batches holding the claim) and are replaced once their lease
lapsed. At the end every task that matched at the preview (and only those) was changed
exactly once: one ``retried`` or ``cancelled`` event each.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from sqlalchemy import Connection, Engine, delete, func, select

from sluice import errors
from sluice.clock import FakeClock
from sluice.domain import FINAL_STATUSES, LOCAL_ACTOR, Submission, Task, TaskStatus
from sluice.engine.bulkjobs import LEASE_S
from sluice.store.audit import audit
from sluice.store.bulkjobs import DONE, BulkJobs, bulk_jobs
from sluice.store.filters import TaskFilter
from sluice.store.repository import TaskRepository
from sluice.store.rows import change_status, events, tasks

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STATUSES = [
    TaskStatus.NOT_STARTED,
    TaskStatus.ERROR,
    TaskStatus.CANCELLED,
    TaskStatus.COMPLETED,
    TaskStatus.IN_PROGRESS,
]
KINDS = ["campaign", "creative"]


class Crash(Exception):
    """A runner dying mid-batch, inside the batch's transaction."""


class CrashingRepository(TaskRepository):
    """Changes tasks like the real one, but dies after ``fuse`` changes when it is armed."""

    fuse: int | None = None

    def _tick(self) -> None:
        if self.fuse is not None:
            if self.fuse == 0:
                self.fuse = None
                raise Crash
            self.fuse -= 1

    def retry_in(self, conn: Connection, task: Task, now: datetime) -> list[int]:
        self._tick()
        return super().retry_in(conn, task, now)

    def cancel_in(self, conn: Connection, task: Task, now: datetime) -> list[int]:
        self._tick()
        return super().cancel_in(conn, task, now)


def make_machine(engine: Engine) -> type[RuleBasedStateMachine]:
    class BulkJobMachine(RuleBasedStateMachine):
        @initialize()
        def fresh(self) -> None:
            with engine.begin() as conn:
                for table in (events, bulk_jobs, audit, tasks):
                    conn.execute(delete(table))
            self.clock = FakeClock(START)
            self.repo = CrashingRepository(engine, self.clock)
            self.jobs = BulkJobs(self.repo, self.clock)
            self.job: int | None = None
            self.action = ""
            self.expected: set[int] = set()
            self.runner = 0
            self.batch = 2
            self.before: dict[int, int] = {}

        def _changes(self, action: str) -> dict[int, int]:
            """Per task, how many ``retried`` (or ``cancelled``) events it has."""
            event = "retried" if action == "retry" else "cancelled"
            with engine.connect() as conn:
                rows = conn.execute(
                    select(events.c.task_id, func.count())
                    .where(events.c.event == event)
                    .group_by(events.c.task_id)
                ).all()
            return {task_id: int(n) for task_id, n in rows}

        def _add(self, specs: list[tuple[TaskStatus, str]]) -> list[int]:
            ids = self.repo.create_many([Submission("sandbox", kind, {}) for _, kind in specs])
            for task_id, (status, _) in zip(ids, specs, strict=True):
                if status is TaskStatus.NOT_STARTED:
                    continue
                task = self.repo.get(task_id)
                with engine.begin() as conn:
                    change_status(conn, task, status, now=self.clock.now(), event="test")
            return ids

        @rule(
            specs=st.lists(st.tuples(st.sampled_from(STATUSES), st.sampled_from(KINDS)), max_size=8)
        )
        def add_tasks(self, specs: list[tuple[TaskStatus, str]]) -> None:
            self._add(specs)

        @precondition(lambda self: self.job is None)
        @rule(
            action=st.sampled_from(["retry", "cancel"]),
            kind=st.none() | st.sampled_from(KINDS),
            batch=st.integers(1, 4),
        )
        def start(self, action: str, kind: str | None, batch: int) -> None:
            task_filter = TaskFilter(kind=kind)
            preview = self.jobs.preview(action, task_filter, None)
            with engine.connect() as conn:
                rows = conn.execute(select(tasks.c.id, tasks.c.kind, tasks.c.status)).all()
            eligible = (
                {TaskStatus.ERROR, TaskStatus.CANCELLED}
                if action == "retry"
                else set(TaskStatus) - FINAL_STATUSES
            )
            self.expected = {
                r.id
                for r in rows
                if (kind is None or r.kind == kind) and TaskStatus(r.status) in eligible
            }
            assert preview.count == len(self.expected)
            self.before = self._changes(action)
            job = self.jobs.start(action, task_filter, None, preview, LOCAL_ACTOR)
            self.job, self.action, self.batch = job.id, action, batch

        def _worker(self) -> str:
            return f"runner-{self.runner}"

        @precondition(lambda self: self.job is not None)
        @rule()
        def run_one_batch(self) -> None:
            assert self.job is not None
            claimed = self.jobs.claim(self._worker(), LEASE_S)
            if claimed is None:
                return
            self.jobs.run_batch(self.job, self._worker(), batch=self.batch)

        @precondition(lambda self: self.job is not None)
        @rule(after=st.integers(0, 3))
        def crash_inside_a_batch(self, after: int) -> None:
            assert self.job is not None
            if self.jobs.claim(self._worker(), LEASE_S) is None:
                return
            self.repo.fuse = after
            try:
                self.jobs.run_batch(self.job, self._worker(), batch=self.batch)
            except Crash:
                pass
            finally:
                self.repo.fuse = None

        @precondition(lambda self: self.job is not None)
        @rule()
        def runner_dies_and_another_takes_over(self) -> None:
            # The dead runner's claim lapses; a new runner (another name) resumes.
            self.runner += 1
            self.clock.advance(LEASE_S + 1)

        @precondition(lambda self: self.job is not None)
        @rule(
            specs=st.lists(
                st.tuples(st.sampled_from(STATUSES), st.sampled_from(KINDS)),
                min_size=1,
                max_size=3,
            )
        )
        def tasks_arrive_after_the_preview(self, specs: list[tuple[TaskStatus, str]]) -> None:
            self._add(specs)

        @precondition(lambda self: self.job is not None)
        @rule()
        def finish(self) -> None:
            assert self.job is not None
            self.runner += 1
            self.clock.advance(LEASE_S + 1)
            if self.jobs.claim(self._worker(), LEASE_S) is not None:
                while not self.jobs.run_batch(self.job, self._worker(), batch=self.batch):
                    pass
            job = self.jobs.get(self.job)
            assert job.state == DONE
            assert job.changed == len(self.expected)
            with pytest.raises(errors.BulkJobNotFound):
                self.jobs.run_batch(self.job, self._worker(), batch=self.batch)
            self.job = None
            self.finished = True

        @invariant()
        def each_matching_task_changed_at_most_once_and_no_other(self) -> None:
            if not hasattr(self, "repo"):
                return
            now = self._changes(self.action) if self.action else {}
            counts = {
                task_id: n - self.before.get(task_id, 0)
                for task_id, n in now.items()
                if n != self.before.get(task_id, 0)
            }
            assert set(counts) <= self.expected
            assert all(n == 1 for n in counts.values())
            if self.job is None and self.action:
                assert set(counts) == self.expected

    return BulkJobMachine


def test_bulk_jobs_survive_crashes_and_change_each_match_once(engine: Engine) -> None:
    machine = make_machine(engine)
    machine.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    machine.TestCase().runTest()


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_a_child_changed_with_its_parent_in_one_batch_counts_as_changed(
    engine: Engine, action: str
) -> None:
    """A batch cancels a parent, which ends its child; the child's row, read with the
    batch, then no longer matches. It was changed by the job, and counted skipped."""
    clock = FakeClock(START)
    repo = TaskRepository(engine, clock)
    jobs = BulkJobs(repo, clock)
    parent = repo.create(Submission(provider="sandbox", kind="campaign", payload={"n": 1}))[0]
    repo.create(Submission(provider="sandbox", kind="ad_group", parent_id=parent.id))
    if action == "retry":
        repo.cancel(parent.id)  # the tree is Cancelled: both match a retry
    found = TaskFilter(provider="sandbox")
    preview = jobs.preview(action, found, None)
    job = jobs.start(action, found, None, preview, LOCAL_ACTOR)
    assert preview.count == 2
    assert jobs.claim("w", LEASE_S) is not None
    while not jobs.run_batch(job.id, "w"):
        pass
    assert (jobs.get(job.id).changed, jobs.get(job.id).skipped) == (2, 0)


@pytest.mark.parametrize("action", ["cancel", "retry"])
@pytest.mark.parametrize("by_status", [False, True])
def test_descendants_changed_with_a_parent_of_an_earlier_batch_count_as_changed(
    engine: Engine, action: str, by_status: bool
) -> None:
    """A parent's batch changes its descendants, which a later batch then no longer finds:
    the job counts them changed all the same (it counted only the parent), also when the
    filter names the status they had."""
    clock = FakeClock(START)
    repo = TaskRepository(engine, clock)
    jobs = BulkJobs(repo, clock)
    parent = repo.create(Submission(provider="sandbox", kind="campaign", payload={"n": 1}))[0]
    child = repo.create(Submission(provider="sandbox", kind="ad_group", parent_id=parent.id))[0]
    repo.create(Submission(provider="sandbox", kind="ad", parent_id=child.id))
    repo.create(Submission(provider="sandbox", kind="campaign", payload={"n": 2}))
    if action == "retry":
        repo.cancel(parent.id)
        repo.cancel(parent.id + 3)
    status = TaskStatus.CANCELLED if action == "retry" else TaskStatus.NOT_STARTED
    found = TaskFilter(provider="sandbox", status=status if by_status else None)
    preview = jobs.preview(action, found, None)
    assert preview.count == 4
    job = jobs.start(action, found, None, preview, LOCAL_ACTOR)
    assert jobs.claim("w", LEASE_S) is not None
    while not jobs.run_batch(job.id, "w", batch=1):
        pass
    assert (jobs.get(job.id).changed, jobs.get(job.id).skipped) == (4, 0)
