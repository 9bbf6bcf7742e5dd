"""A bulk job runs on its key's authority: once the key that started it is revoked or has
expired, the job stops at its next batch (state ``stopped``, audited), on SQLite and real
PostgreSQL. A job started without a key (the open loopback mode, the host) runs to its end.

Found from outside: a submitter key started a bulk cancel of its tenant's 60,000 tasks and
was revoked 4 s later; the job went on cancelling, 500 a batch, after the revocation, and
nothing (API, console, CLI) could stop it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select

from sluice import apikeys
from sluice.clock import FakeClock
from sluice.domain import Actor, Submission, TaskStatus
from sluice.engine.bulkjobs import BulkJobRunner
from sluice.store.audit import AuditLog
from sluice.store.bulkjobs import BulkJob, BulkJobs
from sluice.store.filters import TaskFilter
from sluice.store.keys import KeyStore
from sluice.store.repository import TaskRepository
from sluice.store.rows import tasks

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TASKS = 10
BATCH = 3


@dataclass
class Store:
    repo: TaskRepository
    jobs: BulkJobs
    keys: KeyStore
    audit: AuditLog
    clock: FakeClock

    def cancelled(self) -> int:
        with self.repo.engine.connect() as conn:
            query = select(func.count()).where(tasks.c.status == TaskStatus.CANCELLED.value)
            return int(conn.execute(query.select_from(tasks)).scalar_one())

    def start_cancel(self, actor: Actor) -> BulkJob:
        """Every acme task made, and a bulk cancel of them started by ``actor``."""
        self.repo.create_many(
            [
                Submission(
                    provider="sandbox",
                    kind="campaign",
                    payload={"name": f"c{i}", "budget_cents": 100},
                    tenant="acme",
                )
                for i in range(TASKS)
            ]
        )
        preview = self.jobs.preview("cancel", TaskFilter(), "acme")
        assert preview.count == TASKS
        return self.jobs.start("cancel", TaskFilter(), "acme", preview, actor)

    def first_batch(self, job: BulkJob) -> None:
        """The job claimed and one batch of it run, as a runner would."""
        claimed = self.jobs.claim("runner-1", 60)
        assert claimed is not None
        assert claimed.id == job.id
        assert not self.jobs.run_batch(job.id, "runner-1", batch=BATCH)
        assert self.cancelled() == BATCH


@pytest.fixture
def store(engine: Engine) -> Store:
    """Over a migrated database of each backend (tests/integration/conftest.py)."""
    clock = FakeClock(START)
    repo = TaskRepository(engine, clock)
    return Store(repo, BulkJobs(repo, clock), KeyStore(engine, clock), AuditLog(engine), clock)


def test_a_revoked_keys_bulk_job_stops_at_its_next_batch(store: Store) -> None:
    """Revoking the key mid-job: no further task is changed, the job reads ``stopped``,
    and the audit trail says why, naming the job and the key."""
    made = apikeys.create_key(store.keys, name="leaked", role="submitter", tenant="acme")
    job = store.start_cancel(Actor.of_key(made.key))
    store.first_batch(job)

    store.keys.revoke(made.key.id)
    BulkJobRunner(store.jobs, batch=BATCH, worker="runner-1").run_once()

    assert store.cancelled() == BATCH
    stopped = store.jobs.get(job.id)
    assert (stopped.state, stopped.changed, stopped.finished_at) == ("stopped", BATCH, START)
    assert store.jobs.claim("runner-2", 60) is None  # nobody takes it up again
    record = store.audit.list(action="tasks.bulk_stop", limit=10).items
    assert [(r.actor, r.target, r.tenant) for r in record] == [
        ("system:bulk", f"bulk_job:{job.id}", "acme")
    ]
    assert record[0].detail == {
        "reason": "key revoked",
        "key_id": made.key.id,
        "changed": BATCH,
        "skipped": 0,
    }


def test_an_expired_keys_bulk_job_stops_at_its_next_batch(store: Store) -> None:
    """A key that expires while its job runs ends the job as a revocation does."""
    made = apikeys.create_key(
        store.keys, name="short", role="submitter", tenant="acme", expires="1h"
    )
    job = store.start_cancel(Actor.of_key(made.key))
    store.first_batch(job)

    store.clock.advance(3600)
    BulkJobRunner(store.jobs, batch=BATCH, worker="runner-1").run_once()

    assert store.cancelled() == BATCH
    assert store.jobs.get(job.id).state == "stopped"
    [record] = store.audit.list(action="tasks.bulk_stop", limit=10).items
    assert record.detail["reason"] == "key expired"


def test_a_job_whose_key_stays_usable_runs_to_its_end(store: Store) -> None:
    """The check stops nothing else: a usable key's job, and a job started without a key,
    change every task they cover."""
    made = apikeys.create_key(store.keys, name="ci", role="submitter", tenant="acme")
    job = store.start_cancel(Actor.of_key(made.key))
    BulkJobRunner(store.jobs, batch=BATCH, worker="runner-1").run_once()
    assert (store.jobs.get(job.id).state, store.cancelled()) == ("done", TASKS)

    store.repo.create_many(
        [Submission(provider="sandbox", kind="campaign", payload={}, tenant="acme")]
    )
    preview = store.jobs.preview("cancel", TaskFilter(), "acme")
    local = store.jobs.start("cancel", TaskFilter(), "acme", preview, Actor("loopback"))
    BulkJobRunner(store.jobs, batch=BATCH, worker="runner-1").run_once()
    assert (store.jobs.get(local.id).state, store.cancelled()) == ("done", TASKS + 1)
    assert store.audit.list(action="tasks.bulk_stop", limit=10).items == []
