"""Every SQL statement the engine needs: find due work, claim it, record outcomes.

Claims are leases (``claimed_by``/``claimed_until``) so that two workers never act on the
same task at once and a crashed worker's tasks come back after the lease. Outcomes are
applied only while the task's status is what the worker saw, so a cancel that lands while
a request is in flight wins.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)

from sluice.domain import DueTask, Outcome, Phase, TaskStatus
from sluice.store.chains import end_descendants, release_children
from sluice.store.rows import event_row, events, task_values, tasks

ACTIVE_PHASES = (Phase.READY.value, Phase.POLLING.value, Phase.UNCERTAIN.value)
_parent = tasks.alias("parent")


def _due_query(now: datetime, providers: Sequence[str] | None, limit: int) -> Any:
    parent = _parent
    query = (
        select(tasks, parent.c.external_id.label("parent_external_id"))
        .select_from(tasks.outerjoin(parent, parent.c.id == tasks.c.parent_id))
        .where(
            tasks.c.phase.in_(ACTIVE_PHASES),
            tasks.c.next_attempt_at <= now,
            or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now),
        )
        .order_by(tasks.c.next_attempt_at, tasks.c.id)
        .limit(limit)
    )
    if providers is not None:
        query = query.where(tasks.c.provider.in_(list(providers)))
    return query


_DUE_FIELDS = tuple(f.name for f in fields(DueTask))


def _to_due(row: Any) -> DueTask:
    return DueTask(**task_values(row._mapping, _DUE_FIELDS))


class WorkQueue:
    """The engine's view of the task table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._write_lock: AbstractContextManager[Any] = (
            nullcontext() if self._postgres else threading.Lock()
        )

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction; on SQLite the threads of this process queue for it here.

        SQLite admits one writer at a time, and a connection that finds it busy sleeps in
        SQLite's busy handler (1, 2, 5, 10... ms): the dispatcher's claims then wait tens
        of ms behind the outcome writer. A Python lock hands over as soon as it is free.
        """
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    def fetch_due(
        self, now: datetime, limit: int, providers: Sequence[str] | None = None
    ) -> list[DueTask]:
        """Unclaimed tasks due by ``now``, oldest due first (read only)."""
        with self.engine.connect() as conn:
            return [_to_due(r) for r in conn.execute(_due_query(now, providers, limit))]

    def claim_due(
        self,
        now: datetime,
        limit: int,
        worker: str,
        lease_s: float,
        providers: Sequence[str] | None = None,
    ) -> list[DueTask]:
        """Find and claim due tasks in one transaction.

        On PostgreSQL the rows are locked with ``FOR UPDATE SKIP LOCKED`` so concurrent
        workers each get different tasks without waiting on each other.
        """
        with self._writing() as conn:
            query = _due_query(now, providers, limit)
            if self._postgres:
                query = query.with_for_update(skip_locked=True, of=tasks)
            due = [_to_due(r) for r in conn.execute(query)]
            if not due:
                return []
            claimed = set(self._claim(conn, [t.id for t in due], now, worker, lease_s))
        return [t for t in due if t.id in claimed]

    def claim(
        self, task_ids: Sequence[int], now: datetime, worker: str, lease_s: float
    ) -> list[int]:
        """Claim the given tasks if nobody holds them; returns the ids claimed."""
        if not task_ids:
            return []
        with self._writing() as conn:
            return self._claim(conn, task_ids, now, worker, lease_s)

    def _claim(
        self, conn: Connection, task_ids: Sequence[int], now: datetime, worker: str, lease_s: float
    ) -> list[int]:
        until = now + timedelta(seconds=lease_s)
        result = conn.execute(
            update(tasks)
            .where(
                tasks.c.id.in_(list(task_ids)),
                tasks.c.phase.in_(ACTIVE_PHASES),
                or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now),
            )
            .values(
                claimed_by=worker,
                claimed_until=until,
                # The intent to submit is on record before any request leaves.
                phase=case(
                    (tasks.c.phase == Phase.READY.value, Phase.SUBMITTING.value),
                    else_=tasks.c.phase,
                ),
            )
            .returning(tasks.c.id)
        )
        return list(result.scalars())

    def release(self, task_ids: Sequence[int], next_attempt_at: datetime | None = None) -> None:
        """Give claimed, unsent tasks back, optionally due later."""
        if not task_ids:
            return
        values: dict[str, Any] = {
            "claimed_by": None,
            "claimed_until": None,
            "phase": case(
                (tasks.c.phase == Phase.SUBMITTING.value, Phase.READY.value),
                else_=tasks.c.phase,
            ),
        }
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        with self._writing() as conn:
            conn.execute(update(tasks).where(tasks.c.id.in_(list(task_ids))).values(**values))

    def apply(self, outcomes: Iterable[Outcome], now: datetime) -> int:
        """Record outcomes in one transaction; returns how many applied."""
        with self._writing() as conn:
            return apply_outcomes(conn, outcomes, now)

    def next_due_at(self) -> datetime | None:
        """When the earliest active task falls due (claimed ones included)."""
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(
                select(func.min(tasks.c.next_attempt_at)).where(tasks.c.phase.in_(ACTIVE_PHASES))
            ).scalar()
        return value

    def unfinished_count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(tasks.c.phase != Phase.DONE.value)
                ).scalar_one()
            )

    def recover_stuck(self, now: datetime) -> int:
        """Find tasks whose worker died mid-request and make them due again.

        A task left ``submitting`` may have reached the provider, so it becomes
        ``uncertain`` (looked up by client reference before any re-create); other
        claimed tasks are simply released.
        """
        stale = and_(tasks.c.claimed_until.is_not(None), tasks.c.claimed_until < now)
        with self._writing() as conn:
            ids = list(
                conn.execute(
                    select(tasks.c.id).where(stale, tasks.c.phase == Phase.SUBMITTING.value)
                ).scalars()
            )
            if ids:
                conn.execute(
                    update(tasks)
                    .where(tasks.c.id.in_(ids))
                    .values(
                        phase=Phase.UNCERTAIN.value,
                        next_attempt_at=now,
                        claimed_by=None,
                        claimed_until=None,
                        updated_at=now,
                    )
                )
                conn.execute(
                    insert(events),
                    [
                        event_row(
                            i,
                            now,
                            "recovered",
                            None,
                            None,
                            "worker lost mid-submission; will look up before re-creating",
                        )
                        for i in ids
                    ],
                )
            released = conn.execute(
                update(tasks)
                .where(stale, tasks.c.phase != Phase.SUBMITTING.value)
                .values(claimed_by=None, claimed_until=None)
            ).rowcount
            # A submitting task without a live claim (its lease was cleared) is stuck too.
            orphans = conn.execute(
                update(tasks)
                .where(tasks.c.phase == Phase.SUBMITTING.value, tasks.c.claimed_until.is_(None))
                .values(phase=Phase.UNCERTAIN.value, next_attempt_at=now, updated_at=now)
            ).rowcount
        return len(ids) + int(released or 0) + int(orphans or 0)


@functools.lru_cache(maxsize=128)
def _outcome_update(field_names: tuple[str, ...]) -> Update:
    """The guarded UPDATE of one outcome that sets ``field_names``, built once per shape.

    Building and hashing a fresh statement per outcome cost more than running it; the
    outcome writer is the busiest thread of an unthrottled engine.
    """
    return (
        update(tasks)
        .where(tasks.c.id == bindparam("w_id"), tasks.c.status == bindparam("w_status"))
        .values(
            status=bindparam("v_status"),
            phase=bindparam("v_phase"),
            updated_at=bindparam("v_updated_at"),
            claimed_by=None,
            claimed_until=None,
            **{name: bindparam(f"v_{name}") for name in field_names},
        )
    )


def apply_outcomes(conn: Connection, outcomes: Iterable[Outcome], now: datetime) -> int:
    """Apply each outcome if the task's status is still its ``from_status``."""
    applied = 0
    new_events: list[dict[str, Any]] = []
    released: list[int] = []
    ended: list[tuple[int, TaskStatus, str]] = []
    for outcome in outcomes:
        params = {f"v_{name}": value for name, value in outcome.fields.items()}
        params.update(
            w_id=outcome.task_id,
            w_status=outcome.from_status.value,
            v_status=outcome.to_status.value,
            v_phase=outcome.phase.value,
            v_updated_at=now,
        )
        result = conn.execute(_outcome_update(tuple(sorted(outcome.fields))), params)
        if result.rowcount != 1:
            continue
        applied += 1
        changed = outcome.to_status != outcome.from_status
        if outcome.event or changed:
            new_events.append(
                event_row(
                    outcome.task_id,
                    now,
                    outcome.event or "status",
                    outcome.from_status if changed else None,
                    outcome.to_status if changed else None,
                    outcome.detail,
                )
            )
        if outcome.release_children:
            released.append(outcome.task_id)
        if outcome.end_descendants is not None:
            ended.append((outcome.task_id, *outcome.end_descendants))
    if new_events:
        conn.execute(insert(events), new_events)
    if released:
        release_children(conn, released, now)
    for root, status, message in ended:
        end_descendants(conn, [root], status, message, now)
    return applied
