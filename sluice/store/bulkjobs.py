"""Bulk retry and cancel of every task matching a filter, as a stored job run in batches.

1. :meth:`BulkJobs.preview` counts the tasks the action would change now and notes the
   highest task id: the job covers those ids and no later ones.
2. :meth:`BulkJobs.start` stores the job (and its audit record, in one transaction).
3. A runner (:class:`sluice.engine.bulkjobs.BulkJobRunner`) claims it and calls
   :meth:`BulkJobs.run_batch` until it is done. Each batch is one transaction: it takes
   the next ``batch`` matching ids above the job's ``cursor`` (and at most ``max_id``),
   changes them, and moves the cursor past them. A crash at any point therefore loses a
   whole batch or none of it, and the job resumes at its cursor: every matching task is
   changed exactly once, and no transaction spans more than one batch.

A task is re-checked when its batch runs: one that no longer matches (changed meanwhile)
is left alone. A retry whose parent is Error or Cancelled cannot run, and is counted as
``skipped``; a retried parent brings back its ended descendants, as a single retry does.

A job started with an API key runs on that key's authority: each batch first reads the key,
and once it is revoked or has expired the job ends there, ``stopped``, with a
``tasks.bulk_stop`` audit record (``system:bulk``), so revoking a leaked key also ends
the bulk actions it started. A job started without a key (the open loopback mode) runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Table, func, insert, or_, select, update

from sluice import errors
from sluice.clock import Clock, SystemClock
from sluice.domain import FINAL_STATUSES, MAX_ID, Actor, TaskStatus
from sluice.store import audit
from sluice.store.chains import descendant_ids
from sluice.store.filters import TaskFilter
from sluice.store.repository import TaskRepository
from sluice.store.rows import chunks, row_to_task, tasks
from sluice.store.tables import ApiKeyRow, BulkJobRow

bulk_jobs: Table = BulkJobRow.__table__  # type: ignore[assignment]
api_keys: Table = ApiKeyRow.__table__  # type: ignore[assignment]

ACTIONS = ("retry", "cancel")
RUNNING, DONE, STOPPED = "running", "done", "stopped"
BULK_ACTOR = Actor("system:bulk")
"""Who stops a job whose key was revoked or expired."""
BATCH = 500


def eligible(action: str) -> ColumnElement[bool]:
    """Statuses the action can change: retry Error/Cancelled, cancel anything unfinished."""
    if action == "retry":
        return tasks.c.status.in_([TaskStatus.ERROR.value, TaskStatus.CANCELLED.value])
    if action == "cancel":
        return tasks.c.status.not_in([s.value for s in FINAL_STATUSES])
    raise errors.InvalidValue(f"unknown bulk action {action!r}; use retry or cancel")


@dataclass(frozen=True)
class Preview:
    """What a bulk action would change now: how many tasks, up to which id."""

    action: str
    count: int
    max_id: int


@dataclass(frozen=True)
class BulkJob:
    id: int
    action: str
    filter: TaskFilter
    tenant: str | None
    max_id: int
    previewed: int
    cursor: int
    changed: int
    skipped: int
    state: str
    actor: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _job(row: Any) -> BulkJob:
    return BulkJob(
        id=row.id,
        action=row.action,
        filter=TaskFilter.from_json(row.filter),
        tenant=row.tenant,
        max_id=row.max_id,
        previewed=row.previewed,
        cursor=row.cursor,
        changed=row.changed,
        skipped=row.skipped,
        state=row.state,
        actor=row.actor,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


class BulkJobs:
    """Previews, stores and runs bulk actions."""

    def __init__(self, repo: TaskRepository, clock: Clock | None = None) -> None:
        self.repo = repo
        self.engine: Engine = repo.engine
        self.clock = clock or repo.clock or SystemClock()
        self._postgres = self.engine.dialect.name == "postgresql"

    def preview(
        self, action: str, task_filter: TaskFilter, tenant: str | None, upto: int | None = None
    ) -> Preview:
        """How many tasks ``action`` would change now (ids up to ``upto`` when given), and
        the highest id it may touch."""
        where = [*task_filter.clauses(tenant), eligible(action)]
        if upto is not None:
            where.append(tasks.c.id <= upto)
        with self.engine.connect() as conn:
            count, highest = conn.execute(
                select(func.count(), func.max(tasks.c.id)).where(*where)
            ).one()
        return Preview(action, int(count or 0), int(highest or 0))

    def start(
        self,
        action: str,
        task_filter: TaskFilter,
        tenant: str | None,
        preview: Preview,
        actor: Actor,
    ) -> BulkJob:
        """Store a job for the tasks of ``preview`` (done at once when it matched nothing)."""
        eligible(action)
        now = self.clock.now()
        state = RUNNING if preview.count > 0 else DONE
        with self.engine.begin() as conn:
            job_id = conn.execute(
                insert(bulk_jobs)
                .values(
                    action=action,
                    filter=task_filter.to_json(),
                    tenant=tenant,
                    max_id=preview.max_id,
                    previewed=preview.count,
                    cursor=0,
                    changed=0,
                    skipped=0,
                    state=state,
                    actor=actor.kind if actor.key_name is None else f"key:{actor.key_name}"[:64],
                    key_id=actor.key_id,
                    created_at=now,
                    updated_at=now,
                    finished_at=None if state == RUNNING else now,
                )
                .returning(bulk_jobs.c.id)
            ).scalar_one()
            audit.record(
                conn,
                actor,
                f"tasks.bulk_{action}",
                f"bulk_job:{job_id}",
                tenant=tenant,
                at=now,
                detail={
                    "filter": task_filter.to_json(),
                    "count": preview.count,
                    "max_id": preview.max_id,
                },
            )
        return self.get(int(job_id))

    def get(self, job_id: int, tenant: str | None = None) -> BulkJob:
        """The job; another tenant's job is "not found", like a missing one."""
        if not 1 <= job_id <= MAX_ID:
            raise errors.BulkJobNotFound(f"bulk job {job_id} not found")
        query = select(bulk_jobs).where(bulk_jobs.c.id == job_id)
        if tenant is not None:
            query = query.where(bulk_jobs.c.tenant == tenant)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise errors.BulkJobNotFound(f"bulk job {job_id} not found")
        return _job(row)

    def recent(self, limit: int = 20, tenant: str | None = None) -> list[BulkJob]:
        query = select(bulk_jobs).order_by(bulk_jobs.c.id.desc()).limit(limit)
        if tenant is not None:
            query = query.where(bulk_jobs.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(query)]

    def claim(self, worker: str, lease_s: float) -> BulkJob | None:
        """Take the oldest running job nobody holds (or whose holder's lease lapsed)."""
        now = self.clock.now()
        with self.engine.connect() as conn:
            # A read first: no write transaction (SQLite's BEGIN IMMEDIATE) while idle.
            running = conn.execute(
                select(bulk_jobs.c.id).where(bulk_jobs.c.state == RUNNING).limit(1)
            ).first()
        if running is None:
            return None
        with self.engine.begin() as conn:
            query = (
                select(bulk_jobs.c.id)
                .where(
                    bulk_jobs.c.state == RUNNING,
                    or_(
                        bulk_jobs.c.claimed_until.is_(None),
                        bulk_jobs.c.claimed_until < now,
                        bulk_jobs.c.claimed_by == worker,
                    ),
                )
                .order_by(bulk_jobs.c.id)
                .limit(1)
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            job_id = conn.execute(query).scalar()
            if job_id is None:
                return None
            conn.execute(
                update(bulk_jobs)
                .where(bulk_jobs.c.id == job_id)
                .values(claimed_by=worker, claimed_until=now + timedelta(seconds=lease_s))
            )
        return self.get(int(job_id))

    def run_batch(
        self, job_id: int, worker: str, *, batch: int = BATCH, lease_s: float = 60.0
    ) -> bool:
        """Change the next batch of the job's tasks in one transaction; True when done.

        Raises NotFound when the job is gone or no longer ``worker``'s.
        """
        now = self.clock.now()
        # A retried task's parent is read under a lock never waited for: begun again.
        return self.repo.past_busy_parents(
            lambda conn: self._run_batch_in(conn, job_id, worker, batch, lease_s, now), []
        )

    def _run_batch_in(
        self, conn: Connection, job_id: int, worker: str, batch: int, lease_s: float, now: datetime
    ) -> bool:
        held = conn.execute(
            update(bulk_jobs)
            .where(
                bulk_jobs.c.id == job_id,
                bulk_jobs.c.state == RUNNING,
                bulk_jobs.c.claimed_by == worker,
            )
            .values(updated_at=now, claimed_until=now + timedelta(seconds=lease_s))
            .returning(bulk_jobs)
        ).first()
        if held is None:
            raise errors.BulkJobNotFound(f"bulk job {job_id} is not running under {worker}")
        job = _job(held)
        ended = _key_ended(conn, held.key_id, now)
        if ended is not None:
            self._stop_in(conn, job, held.key_id, ended, now)
            return True
        query = (
            select(tasks)
            .where(
                *job.filter.clauses(job.tenant),
                eligible(job.action),
                tasks.c.id > job.cursor,
                tasks.c.id <= job.max_id,
            )
            .order_by(tasks.c.id)
            .limit(batch)
        )
        if self._postgres:
            query = query.with_for_update()
        rows = conn.execute(query).all()
        ahead = _matching_descendants_ahead(conn, job, [row.id for row in rows])
        changed = skipped = 0
        for row in rows:
            task = row_to_task(row)
            try:
                if job.action == "retry":
                    cascaded = self.repo.retry_in(conn, task, now)
                else:
                    cascaded = self.repo.cancel_in(conn, task, now)
                changed += 1
                # Matching descendants of a later batch changed with it count here: that
                # batch no longer finds them (they are not eligible any more).
                changed += len(ahead.intersection(cascaded))
                ahead.difference_update(cascaded)
            except (errors.IllegalTransition, errors.TaskConflict):
                # A child read with this batch may have been changed by its parent's action
                # a moment ago (a cancel ends the tree): that change counts, not a skip.
                if _still_eligible(conn, job.action, task.id):
                    skipped += 1
                else:
                    changed += 1
        done = len(rows) < batch
        values: dict[str, Any] = {
            "cursor": rows[-1].id if rows else job.cursor,
            "changed": bulk_jobs.c.changed + changed,
            "skipped": bulk_jobs.c.skipped + skipped,
        }
        if done:
            values.update(
                state=DONE,
                finished_at=now,
                cursor=job.max_id,
                claimed_by=None,
                claimed_until=None,
            )
        conn.execute(update(bulk_jobs).where(bulk_jobs.c.id == job_id).values(**values))
        return done

    def _stop_in(
        self, conn: Connection, job: BulkJob, key_id: str, reason: str, now: datetime
    ) -> None:
        """End ``job`` where it is (its key's authority ended), with its audit record."""
        conn.execute(
            update(bulk_jobs)
            .where(bulk_jobs.c.id == job.id)
            .values(state=STOPPED, finished_at=now, claimed_by=None, claimed_until=None)
        )
        audit.record(
            conn,
            BULK_ACTOR,
            "tasks.bulk_stop",
            f"bulk_job:{job.id}",
            tenant=job.tenant,
            at=now,
            detail={
                "reason": reason,
                "key_id": key_id,
                "changed": job.changed,
                "skipped": job.skipped,
            },
        )


def _key_ended(conn: Connection, key_id: str | None, now: datetime) -> str | None:
    """Why the key a job was started with may no longer act (``key revoked``, ``key
    expired``, ``key deleted``), or None while it may (or the job had no key)."""
    if key_id is None:
        return None
    row = conn.execute(
        select(api_keys.c.revoked_at, api_keys.c.expires_at).where(api_keys.c.id == key_id)
    ).first()
    if row is None:
        return "key deleted"
    if row.revoked_at is not None:
        return "key revoked"
    if row.expires_at is not None and now >= row.expires_at:
        return "key expired"
    return None


def _matching_descendants_ahead(conn: Connection, job: BulkJob, batch: list[int]) -> set[int]:
    """Descendants of ``batch`` that the job's later batches would change (matching its
    filter and eligible now, above the batch and at most ``max_id``), read before the batch
    changes anything: a cascade changes their status, so afterwards they no longer match a
    filter on it."""
    if not batch:
        return set()
    later = [i for i in descendant_ids(conn, batch) if batch[-1] < i <= job.max_id]
    found: set[int] = set()
    for chunk in chunks(later):
        found.update(
            conn.execute(
                select(tasks.c.id).where(
                    tasks.c.id.in_(chunk), *job.filter.clauses(job.tenant), eligible(job.action)
                )
            ).scalars()
        )
    return found


def _still_eligible(conn: Connection, action: str, task_id: int) -> bool:
    """Whether task ``task_id`` is still one that ``action`` would change."""
    found = conn.execute(select(tasks.c.id).where(tasks.c.id == task_id, eligible(action)))
    return found.first() is not None
