"""Every SQL statement the API needs: create, read, list, cancel, retry.

Every read and action takes the caller's ``tenant``: a task of another tenant answers
exactly like a missing one (:class:`~sluice.errors.TaskNotFound`), parents must belong to
the same tenant, and idempotency keys are scoped per tenant. ``tenant=None`` means every
tenant (operators, admins, Sluice itself). Cancel and retry write their audit record in
the same transaction as the change, as do creates given an ``actor`` (the API's: one
``task.create`` record per task, one ``tasks.bulk_create`` per batch).

Each public method runs in one transaction of its own, except :meth:`TaskRepository.create`,
which uses up to three: it may read the idempotency key first, inserts and reads the task
back in one transaction (which alone decides what exists), and when a concurrent create won
the key, reads the key again; and ``cancel_in``/``retry_in``, which run in the
caller's transaction (a bulk job's batch). Status changes go through
:func:`~sluice.store.rows.change_status`, which refuses illegal transitions and writes the
event in the same transaction.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    false,
    func,
    insert,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from sluice import errors
from sluice.clock import Clock, SystemClock
from sluice.domain import (
    FINAL_STATUSES,
    LOCAL_ACTOR,
    MAX_ID,
    Actor,
    Phase,
    Submission,
    Task,
    TaskEvent,
    TaskStatus,
)
from sluice.store import audit, bulk, fairshare
from sluice.store.chains import end_descendants, initial_phase, restart_phase, settled_descendants
from sluice.store.filters import TaskFilter
from sluice.store.queue import due_now
from sluice.store.rows import (
    change_status,
    chunks,
    decode_cursor,
    encode_cursor,
    event_row,  # noqa: F401  (tests build events with it from here)
    events,
    in_active_phase,
    row_to_task,
    tasks,
)

MAX_PAGE = 1000
PARENT_BUSY_S = 10.0
"""How long a create tries again while a parent it names is locked by another transaction
(a completion, a claim or a poll holds the row for milliseconds)."""
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL refused a NOWAIT row lock
DEADLOCK_DETECTED = "40P01"  # PostgreSQL ended this transaction to break a deadlock
COPY_PART = 1000
"""Rows of a PostgreSQL batch built and sent at a time: the server inserts a part while the
next is built (bench/ingest.py measured the overlap; docs/scaling.md). A bulk batch is also
checked this many items at a time (``submissions.create_batch``, ``create_in_parts``)."""
_T = TypeVar("_T")
# Tasks that wait for a grant when due: ready, claimed to submit, polled, looked up.
WAITING_PHASES = (
    Phase.READY.value,
    Phase.SUBMITTING.value,
    Phase.POLLING.value,
    Phase.UNCERTAIN.value,
)


@dataclass(frozen=True)
class Page:
    """One page of a listing and the cursor of the next one (None at the end)."""

    items: list[Task]
    next_cursor: str | None


class TaskRepository:
    """Task persistence for the API and the CLI."""

    def __init__(self, engine: Engine, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self._postgres = engine.dialect.name == "postgresql"

    # -- reads -------------------------------------------------------------------------

    def get(self, task_id: int, *, tenant: str | None = None) -> Task:
        """The task, if it exists and belongs to ``tenant`` (any tenant when None)."""
        with self.engine.connect() as conn:
            return self._get(conn, task_id, tenant)

    def _get(
        self,
        conn: Connection,
        task_id: int,
        tenant: str | None,
        *,
        lock: bool = False,
        as_parent: bool = False,
    ) -> Task:
        if not 1 <= task_id <= MAX_ID:
            raise errors.TaskNotFound(task_id)
        query = select(tasks).where(tasks.c.id == task_id)
        if tenant is not None:
            # Another tenant's task is "not found", with the very same message.
            query = query.where(tasks.c.tenant == tenant)
        if lock and self._postgres:
            query = query.with_for_update()
        elif as_parent and self._postgres:
            query = query.with_for_update(read=True, nowait=True)  # see _parent_statuses
        row = conn.execute(query).first()
        if row is None:
            raise errors.TaskNotFound(task_id)
        return row_to_task(row)

    def events(self, task_id: int, *, tenant: str | None = None) -> list[TaskEvent]:
        """The task's history, oldest first (TaskNotFound as for :meth:`get`)."""
        with self.engine.connect() as conn:
            self._get(conn, task_id, tenant)
            rows = conn.execute(
                select(events).where(events.c.task_id == task_id).order_by(events.c.id)
            ).all()
        return [
            TaskEvent(
                id=r.id,
                task_id=r.task_id,
                at=r.at,
                event=r.event,
                from_status=TaskStatus(r.from_status) if r.from_status else None,
                to_status=TaskStatus(r.to_status) if r.to_status else None,
                detail=r.detail,
            )
            for r in rows
        ]

    def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        provider: str | None = None,
        kind: str | None = None,
        parent_id: int | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        cursor: str | None = None,
        limit: int = 100,
        tenant: str | None = None,
    ) -> Page:
        """Tasks in id order after ``cursor``; stable while new tasks are inserted. The
        filters are :class:`TaskFilter`'s (created_from inclusive, created_to exclusive);
        a cursor continues the listing it came from when given with the same filters."""
        limit = max(1, min(limit, MAX_PAGE))
        matching = TaskFilter(
            status=status,
            provider=provider,
            kind=kind,
            parent_id=parent_id,
            created_from=created_from,
            created_to=created_to,
        )
        query = select(tasks).where(*matching.clauses(tenant)).order_by(tasks.c.id).limit(limit + 1)
        if cursor is not None:
            query = query.where(tasks.c.id > decode_cursor(cursor))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        items = [row_to_task(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1].id) if more and items else None)

    def due_ahead(
        self,
        task: Task,
        now: datetime,
        cap: int,
        *,
        tenant: str | None = None,
        fair: bool = True,
    ) -> int:
        """How many due tasks of ``task``'s provider go before it, counted up to ``cap``;
        only ``tenant``'s tasks when given.

        ``fair`` (claims shared between fairness keys, the default): in ``task``'s own
        fairness key, the place claims give it (its polls by due time and its other work
        by priority, children of existing parents before roots, due time and id, in turns:
        :meth:`_ahead_in_key`), each stream read along its index for at most ``cap``
        entries; in other keys, which share the
        slots, those due earlier (then lower id), among the first ``cap`` of the provider's
        tasks due earlier. Otherwise (arrival order): earlier due time, then lower id. Each
        read is one range of an index, at most ``cap`` entries (a filter on the key would
        read a whole million-task key to find the few of others).
        """
        due_at = task.next_attempt_at or now
        earlier = or_(
            tasks.c.next_attempt_at < due_at,
            and_(tasks.c.next_attempt_at == due_at, tasks.c.id < task.id),
        )
        ahead = select(tasks.c.fairness_key, tasks.c.phase).where(
            tasks.c.phase.in_(WAITING_PHASES),
            tasks.c.provider == task.provider,
            tasks.c.id != task.id,
            earlier,
        )
        if tenant is not None:
            ahead = ahead.where(tasks.c.tenant == tenant)
        ahead = ahead.limit(cap)
        with self.engine.connect() as conn:
            if not fair:
                counted = select(func.count()).select_from(ahead.subquery())
                return int(conn.execute(counted).scalar_one())
            # Among the first ``cap`` due earlier: other keys' tasks, and its own key's
            # claimed already (being sent), counted over that range.
            earlier_rows = ahead.subquery()
            others = int(
                conn.execute(
                    select(func.count())
                    .select_from(earlier_rows)
                    .where(
                        or_(
                            earlier_rows.c.fairness_key != task.fairness_key,
                            earlier_rows.c.phase == Phase.SUBMITTING.value,
                        )
                    )
                ).scalar_one()
            )
            return min(cap, others + self._ahead_in_key(conn, task, due_at, now, cap, tenant))

    @staticmethod
    def _ahead_in_key(
        conn: Connection,
        task: Task,
        due_at: datetime,
        now: datetime,
        cap: int,
        tenant: str | None,
    ) -> int:
        """Due tasks of ``task``'s fairness key that a fair claim takes before it.

        A key's polls and its ready tasks take turns, from the turn its last claim left
        (:func:`fairshare.stored_turn`): ``task``'s place is its place in its own stream
        plus the turns the other stream has before it (:func:`fairshare.turn_place`), both
        among the tasks not claimed (a claim takes only those). Each stream is walked along
        its index in claim order for at most ``cap`` entries, and counted over the walk:
        ``task``'s stream up to its place, the other's due tasks; the key's tasks claimed
        already (polls in flight: still ``polling``, their lease running) take no turn and
        count once each as ahead when due before ``task``, as being sent.
        """
        horizon = max(due_at, now)
        polls_first = fairshare.stored_turn(conn, task.provider, task.fairness_key)

        def walk(poll: bool) -> Any:
            query = (
                select(
                    tasks.c.id,
                    tasks.c.priority,
                    tasks.c.parent_id.is_(None).label("is_root"),
                    tasks.c.next_attempt_at,
                    or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now).label(
                        "unclaimed"
                    ),
                )
                .where(
                    in_active_phase(),
                    tasks.c.provider == task.provider,
                    tasks.c.fairness_key == task.fairness_key,
                    fairshare.in_poll_stream() if poll else fairshare.in_ready_stream(),
                )
                .order_by(*(fairshare.poll_order() if poll else fairshare.within_key_order()))
                .limit(cap)
            )
            if tenant is not None:
                query = query.where(tasks.c.tenant == tenant)
            return query.subquery()

        poll = fairshare.is_poll(task.phase)
        own, other = walk(poll), walk(not poll)
        earlier = or_(
            own.c.next_attempt_at < due_at,
            and_(own.c.next_attempt_at == due_at, own.c.id < task.id),
        )
        if poll:
            before: Any = earlier
        else:
            # Children of existing parents go before roots; a child has no rootness ahead.
            root = task.parent_id is None
            child_first = own.c.is_root == false() if root else false()
            same_rootness = own.c.is_root == (true() if root else false())
            before = or_(
                own.c.priority > task.priority,
                and_(
                    own.c.priority == task.priority, or_(child_first, and_(same_rootness, earlier))
                ),
            )
        # Counted over the walks (at most ``cap`` index entries each), not filtered inside
        # them: a filter there would read the whole key to find the few before a task at
        # its front.
        in_stream = (
            select(func.count())
            .select_from(own)
            .where(before, own.c.id != task.id, own.c.next_attempt_at <= horizon, own.c.unclaimed)
            .scalar_subquery()
        )
        other_due = (
            select(func.count())
            .select_from(other)
            .where(other.c.next_attempt_at <= horizon, other.c.unclaimed)
            .scalar_subquery()
        )

        def in_flight(walked: Any) -> Any:
            return (
                select(func.count())
                .select_from(walked)
                .where(
                    walked.c.unclaimed == false(),
                    walked.c.id != task.id,
                    or_(
                        walked.c.next_attempt_at < due_at,
                        and_(walked.c.next_attempt_at == due_at, walked.c.id < task.id),
                    ),
                )
                .scalar_subquery()
            )

        index, others, claimed_own, claimed_other = conn.execute(
            select(in_stream, other_due, in_flight(own), in_flight(other))
        ).one()
        place = fairshare.turn_place(int(index), poll, int(others), polls_first)
        return place + int(claimed_own) + int(claimed_other)

    def find(
        self,
        task_filter: TaskFilter,
        *,
        tenant: str | None = None,
        after_id: int = 0,
        limit: int = 50,
    ) -> tuple[list[Task], bool]:
        """The console's task list: tasks matching ``task_filter`` after ``after_id`` in id
        order (keyset pages), and whether there are more."""
        limit = max(1, min(limit, MAX_PAGE))
        query = (
            select(tasks)
            .where(*task_filter.clauses(tenant), tasks.c.id > after_id)
            .order_by(tasks.c.id)
            .limit(limit + 1)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [row_to_task(r) for r in rows[:limit]], len(rows) > limit

    def children(self, task_id: int, *, tenant: str | None = None, limit: int = 200) -> list[Task]:
        """A task's direct children of ``tenant`` (any when None) in id order (at most
        ``limit``)."""
        query = select(tasks).where(tasks.c.parent_id == task_id)
        if tenant is not None:
            query = query.where(tasks.c.tenant == tenant)
        query = query.order_by(tasks.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [row_to_task(r) for r in conn.execute(query)]

    def max_id(self) -> int:
        """The highest task id so far (0 when empty)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(tasks.c.id))).scalar() or 0)

    def counts(self) -> dict[str, int]:
        """Number of tasks per status."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status))
            return {status: count for status, count in rows}

    def fair_shares(self, provider: str, weights: Mapping[str, float]) -> list[fairshare.Share]:
        """Each fairness key's waiting work, weight and share of the last minute's claims."""
        now = self.clock.now()
        return fairshare.shares(self.engine, provider, weights, due_now(now), now)

    # -- creates -----------------------------------------------------------------------

    def create(self, spec: Submission, actor: Actor | None = None) -> tuple[Task, bool]:
        """Create one task; returns (task, created). A replayed idempotency key returns
        the original task with ``created=False``; the same key with another body is 409.
        With ``actor``, the create is audited (``task.create``) in its own transaction."""
        if spec.idempotency_key is not None:
            existing = self._by_idempotency_key(spec)
            if existing is not None:
                return existing, False

        def write(conn: Connection) -> Task:
            task = self._inserted_task(conn, spec)
            if actor is not None:
                audit.record(
                    conn,
                    actor,
                    "task.create",
                    f"task:{task.id}",
                    tenant=task.tenant,
                    at=task.created_at,
                    detail={
                        "provider": task.provider,
                        "kind": task.kind,
                        "parent_id": task.parent_id,
                    },
                )
            return task

        try:
            # Read back in the insert's own transaction: a second connection (checkout,
            # pre-ping, SELECT, rollback) was about half of a single create's time.
            task = self._in_write(write, [spec])
        except errors.TaskConflict:
            if spec.idempotency_key is not None:
                existing = self._by_idempotency_key(spec)
                if existing is not None:
                    return existing, False
            raise
        return task, True

    def _inserted_task(self, conn: Connection, spec: Submission) -> Task:
        """Insert one task (and its ``created`` event) in ``conn``'s transaction; returns it
        as stored.

        A task without an explicit id takes the next automatic one from its own ``INSERT ...
        RETURNING``: one statement for id, row and read-back instead of three round trips.
        """
        now = self.clock.now()
        if spec.id is not None or spec.track_only or spec.parent_index is not None:
            ids = self._insert_batch(conn, [spec], now)
            return self._get(conn, ids[0], None)
        values = {name: column[0] for name, column in self._columns(conn, [spec], now).items()}
        row = conn.execute(insert(tasks).returning(*tasks.c), values).one()
        self._insert_created_events(conn, [row.id], now)
        return row_to_task(row)

    def _by_idempotency_key(self, spec: Submission) -> Task | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tasks).where(
                    tasks.c.tenant == spec.tenant,
                    tasks.c.idempotency_key == spec.idempotency_key,
                )
            ).first()
        if row is None:
            return None
        if row.request_hash != spec.request_hash:
            raise errors.TaskConflict(
                f"Idempotency-Key {spec.idempotency_key!r} was already used with a different body"
            )
        return row_to_task(row)

    def by_idempotency_keys(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Task]:
        """The tasks holding these (tenant, idempotency key) pairs, by pair; pairs no task
        holds are left out."""
        wanted: dict[str, list[str]] = {}
        for tenant, key in keys:
            wanted.setdefault(tenant, []).append(key)
        found: dict[tuple[str, str], Task] = {}
        with self.engine.connect() as conn:
            for tenant, tenant_keys in wanted.items():
                for part in chunks(sorted(set(tenant_keys))):
                    rows = conn.execute(
                        select(tasks).where(
                            tasks.c.tenant == tenant, tasks.c.idempotency_key.in_(part)
                        )
                    )
                    for row in rows:
                        found[(tenant, row.idempotency_key)] = row_to_task(row)
        return found

    def create_many(self, specs: Sequence[Submission], actor: Actor | None = None) -> list[int]:
        """Create every task or none; returns their ids in input order. With ``actor``, the
        batch is audited (one ``tasks.bulk_create`` record per tenant) in its transaction."""
        if not specs:
            return []
        now = self.clock.now()

        def write(conn: Connection) -> list[int]:
            ids = self._insert_batch(conn, specs, now)
            self._audit_batch(conn, actor, specs, ids, now)
            return ids

        return self._in_write(write, specs)

    def create_in_parts(
        self, count: int, parts: Iterable[Sequence[Submission]], actor: Actor | None = None
    ) -> list[int]:
        """Create ``count`` tasks given a part at a time, every one or none, as
        :meth:`create_many` does; returns their ids in input order.

        ``parts`` is read while the rows go in: on PostgreSQL the server inserts and indexes
        one part while the caller makes the next (``submissions.create_batch`` checks each
        part as it goes), instead of waiting for the whole batch. Its ids are drawn before
        the first part, so no item may have an explicit ``id`` or a ``parent_id`` (a
        ``parent_index`` names an earlier item, which is written first). An exception
        raised by ``parts`` rolls the whole batch back; its ids are then never used.
        """
        if count <= 0:
            return []
        now = self.clock.now()
        given: list[Submission] = []

        def write(conn: Connection) -> list[int]:
            if given:  # past_busy_parents began again: the parts were read already
                raise errors.InvalidTask("a batch given in parts cannot be written twice")
            ids = bulk.reserve_ids(conn, tasks, count)
            rows = _NewRows(given, now, ids, {})

            def columns() -> Iterator[dict[str, list[Any]]]:
                for part in parts:
                    if any(s.id is not None or s.parent_id is not None for s in part):
                        raise errors.InvalidTask(
                            "a batch given in parts cannot name ids or parent_ids"
                        )
                    start = len(given)
                    given.extend(part)
                    if len(given) > count:
                        raise errors.InvalidTask(f"more than the {count} tasks announced")
                    yield rows.columns(start, len(given))

            bulk.insert_column_parts(conn, tasks, columns())
            if len(given) != count:
                raise errors.InvalidTask(f"{len(given)} tasks given of the {count} announced")
            self._insert_created_events(conn, ids, now)
            self._audit_batch(conn, actor, given, ids, now)
            return ids

        return self._in_write(write, given)

    def _audit_batch(
        self,
        conn: Connection,
        actor: Actor | None,
        specs: Sequence[Submission],
        ids: Sequence[int],
        now: datetime,
    ) -> None:
        """One ``tasks.bulk_create`` record per tenant of a batch created for ``actor``."""
        if actor is None:
            return
        by_tenant: dict[str, list[int]] = {}
        for spec, task_id in zip(specs, ids, strict=True):
            by_tenant.setdefault(spec.tenant, []).append(task_id)
        for tenant, tenant_ids in by_tenant.items():
            first, last = min(tenant_ids), max(tenant_ids)
            audit.record(
                conn,
                actor,
                "tasks.bulk_create",
                f"tasks:{first}-{last}",
                tenant=tenant,
                at=now,
                detail={"count": len(tenant_ids), "first_id": first, "last_id": last},
            )

    def _in_write(self, write: Callable[[Connection], _T], specs: Sequence[Submission]) -> _T:
        """``write`` in one transaction of its own; a unique or foreign key violation of
        ``specs`` becomes :class:`~sluice.errors.TaskConflict`, and PostgreSQL ending it to
        break a deadlock :class:`~sluice.errors.WriteDeadlocked` (nothing is written)."""
        # A bulk COPY (store/bulk.py) raises the driver's own errors.
        dbapi = self.engine.dialect.dbapi
        driver_conflict = getattr(dbapi, "IntegrityError", IntegrityError)
        driver_error = getattr(dbapi, "Error", DBAPIError)
        try:
            return self.past_busy_parents(
                write, sorted({s.parent_id for s in specs if s.parent_id is not None})
            )
        except IntegrityError as exc:
            raise errors.TaskConflict(_conflict_message(exc.orig or exc, specs)) from exc
        except driver_conflict as exc:
            raise errors.TaskConflict(_conflict_message(exc, specs)) from exc
        except (DBAPIError, driver_error) as exc:
            # Two batches inserting the same idempotency keys in opposite orders each wait
            # for the other's uncommitted key; PostgreSQL ends one of them.
            orig = exc.orig if isinstance(exc, DBAPIError) else exc
            if getattr(orig, "sqlstate", None) != DEADLOCK_DETECTED:
                raise
            raise errors.WriteDeadlocked(
                "the database ended this write to break a deadlock with a concurrent one "
                "(nothing was written); try again",
                self.engine.url.render_as_string(hide_password=True),
            ) from exc

    def past_busy_parents(self, write: Callable[[Connection], _T], parents: Sequence[int]) -> _T:
        """``write`` in a transaction, begun again while a parent task it reads under a
        shared lock (``parents``, for the message) is being changed by another transaction,
        whose row lock it never waits for; StoreUnavailable (503) if a parent stays locked
        for ``PARENT_BUSY_S``."""
        deadline = time.monotonic() + PARENT_BUSY_S
        pause = 0.002
        while True:
            try:
                with self.engine.begin() as conn:
                    return write(conn)
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                    raise
                if time.monotonic() + pause > deadline:
                    named = f"task(s) {', '.join(map(str, parents))}" if parents else "task"
                    raise errors.StoreUnavailable(
                        f"parent {named} stayed locked by another transaction for "
                        f"{PARENT_BUSY_S:g} s; try again",
                        self.engine.url.render_as_string(hide_password=True),
                    ) from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _insert_batch(
        self, conn: Connection, specs: Sequence[Submission], now: datetime
    ) -> list[int]:
        """Insert ``specs`` (and their ``created`` events) in ``conn``'s transaction; returns
        their ids in input order. Built column by column: a 10,000-task batch is the bulk
        API's hot path (bench/ingest.py)."""
        ids = self._reserve_ids(conn, specs)
        rows = _NewRows(specs, now, ids, self._parent_statuses(conn, specs))
        # PostgreSQL indexes the rows sent while the next part is built (bulk.py).
        size = COPY_PART if self._postgres else len(specs)
        parts = (rows.columns(start, start + size) for start in range(0, len(specs), size))
        bulk.insert_column_parts(conn, tasks, parts)
        self._insert_created_events(conn, ids, now)
        return ids

    def _columns(
        self,
        conn: Connection,
        specs: Sequence[Submission],
        now: datetime,
        ids: list[int] | None = None,
    ) -> dict[str, list[Any]]:
        """The new rows of ``specs``, column by column; without ``ids`` (none explicit, none
        tracked, no ``parent_index``) the ``id`` column is left to the database."""
        return _NewRows(specs, now, ids, self._parent_statuses(conn, specs)).columns(0, len(specs))

    def _reserve_ids(self, conn: Connection, specs: Sequence[Submission]) -> list[int]:
        """Each spec's id: its explicit one, or a new one (never colliding with explicit
        ids, now or later)."""
        highest_explicit = max((spec.id for spec in specs if spec.id is not None), default=0)
        auto = sum(1 for spec in specs if spec.id is None)
        new_ids = iter(bulk.reserve_ids(conn, tasks, auto, above=highest_explicit))
        return [next(new_ids) if spec.id is None else spec.id for spec in specs]

    def _insert_created_events(self, conn: Connection, ids: list[int], now: datetime) -> None:
        """Each new task's ``created`` event (to its status, with its message), copied from
        the rows just inserted by one ``INSERT ... SELECT`` per range or chunk of ids."""
        statement = (
            f"INSERT INTO {events.name} (task_id, at, event, from_status, to_status, detail) "
            f"SELECT id, :at, 'created', NULL, status, last_error FROM {tasks.name} WHERE "
        )
        at = bindparam("at", now, type_=events.c.at.type)
        low, high = min(ids), max(ids)
        if high - low + 1 == len(ids):  # a run of ids (distinct: they were just inserted)
            query = text(statement + "id BETWEEN :low AND :high ORDER BY id")
            conn.execute(query.bindparams(at), {"low": low, "high": high})
        elif self._postgres:
            query = text(statement + "id = ANY(:ids) ORDER BY id")
            conn.execute(query.bindparams(at), {"ids": ids})
        else:
            for chunk in chunks(sorted(ids)):
                query = text(statement + "id IN :ids ORDER BY id").bindparams(
                    at, bindparam("ids", expanding=True)
                )
                conn.execute(query, {"ids": chunk})

    def _parent_statuses(
        self, conn: Connection, specs: Sequence[Submission]
    ) -> dict[int, TaskStatus]:
        """The status of each named parent; a parent of another tenant does not exist."""
        wanted = {s.parent_id: s.tenant for s in specs if s.parent_id is not None}
        if not wanted:
            return {}
        found: dict[int, TaskStatus] = {}
        owners: dict[int, str] = {}
        for chunk in chunks(sorted(wanted)):
            query = select(tasks.c.id, tasks.c.tenant, tasks.c.status).where(tasks.c.id.in_(chunk))
            # Held until the children are committed, so a parent's status cannot change in
            # between: a completion committing after this read would release children it
            # cannot see yet, leaving them waiting for ever. Never waited for (NOWAIT), so
            # no lock cycle with a writer changing several parents: past_busy_parents
            # begins the transaction again.
            for task_id, tenant, status in conn.execute(
                query.with_for_update(read=True, nowait=True)
            ):
                found[task_id] = TaskStatus(status)
                owners[task_id] = tenant
        # Every child of one parent must share the parent's tenant, whichever item names it.
        foreign = {
            s.parent_id for s in specs if s.parent_id in owners and owners[s.parent_id] != s.tenant
        }
        missing = (set(wanted) - set(found)) | foreign
        if missing:
            raise errors.InvalidTask(
                f"parent task(s) {', '.join(map(str, sorted(missing)))} do not exist"
            )
        return found

    # -- cancel and retry ----------------------------------------------------------------

    def cancel(
        self, task_id: int, *, tenant: str | None = None, actor: Actor = LOCAL_ACTOR
    ) -> tuple[Task, int]:
        """Cancel a task that is not final and every unfinished descendant.

        A worker's claim is left to it (its request may be on the way): its outcome loses
        on status, and nobody else takes the task before that claim ends, even if it is
        retried meanwhile.

        Returns the task and how many descendants were cancelled with it.
        """
        now = self.clock.now()
        with self.engine.begin() as conn:
            task = self._get(conn, task_id, tenant, lock=True)
            count = len(self.cancel_in(conn, task, now))
            audit.record(
                conn,
                actor,
                "task.cancel",
                f"task:{task_id}",
                tenant=task.tenant,
                at=now,
                detail={"from_status": task.status.value, "descendants_cancelled": count},
            )
            return self._get(conn, task_id, None), count

    def retry(self, task_id: int, *, tenant: str | None = None, actor: Actor = LOCAL_ACTOR) -> Task:
        """Put an Error or Cancelled task (and its ended descendants) back to Not Started.

        A task whose create may have reached the provider (``maybe_created``) comes back
        ``uncertain``: it is looked up before any create. A task whose parent is Error or
        Cancelled cannot run, so retrying it raises IllegalTransition naming the parent:
        retry the parent instead (it brings its ended descendants back with it).
        """
        now = self.clock.now()

        def retried(conn: Connection) -> Task:
            task = self._get(conn, task_id, tenant, lock=True)
            restarted = len(self.retry_in(conn, task, now))
            audit.record(
                conn,
                actor,
                "task.retry",
                f"task:{task_id}",
                tenant=task.tenant,
                at=now,
                detail={"from_status": task.status.value, "descendants_retried": restarted},
            )
            return self._get(conn, task_id, None)

        return self.past_busy_parents(retried, [])

    def cancel_in(self, conn: Connection, task: Task, now: datetime) -> list[int]:
        """Cancel ``task`` (read under lock in ``conn``) and its unfinished descendants, in
        ``conn``'s transaction, without an audit record; returns the descendants' ids."""
        if task.status in FINAL_STATUSES:
            raise errors.IllegalTransition(
                f"task {task.id} is {task.status.value}; only unfinished tasks can be cancelled"
            )
        changed = change_status(
            conn,
            task,
            TaskStatus.CANCELLED,
            now=now,
            event="cancelled",
            detail="cancelled by request",
            phase=Phase.DONE.value,
            next_attempt_at=None,
        )
        if not changed:
            raise errors.TaskConflict(f"task {task.id} changed meanwhile; try again")
        return end_descendants(
            conn, [task.id], TaskStatus.CANCELLED, f"parent task {task.id} was cancelled", now
        )

    def retry_in(self, conn: Connection, task: Task, now: datetime) -> list[int]:
        """Retry ``task`` (read under lock in ``conn``) and its ended descendants, in
        ``conn``'s transaction, without an audit record; returns the descendants' ids."""
        if task.status not in (TaskStatus.ERROR, TaskStatus.CANCELLED):
            raise errors.IllegalTransition(
                f"task {task.id} is {task.status.value}; only Error or Cancelled tasks "
                "can be retried"
            )
        parent_status = None
        if task.parent_id is not None:
            # Under a shared lock, as a create reads it: a completion committing meanwhile
            # would release children before this one waits (call through past_busy_parents).
            parent_status = self._get(conn, task.parent_id, None, as_parent=True).status
            if parent_status in (TaskStatus.ERROR, TaskStatus.CANCELLED):
                raise errors.IllegalTransition(
                    f"task {task.id} cannot run while its parent task {task.parent_id} "
                    f"is {parent_status.value}; retry task {task.parent_id}, which "
                    "retries its ended descendants too"
                )
        self._restart(conn, task, parent_status, now)
        restarted: list[int] = []
        for fresh in settled_descendants(conn, [task.id]):
            ended = [
                child
                for child in self._tasks(conn, fresh)
                if child.status in (TaskStatus.ERROR, TaskStatus.CANCELLED)
            ]
            parents = self._statuses(conn, {child.parent_id for child in ended})
            for child in ended:
                # A parent that stays Completed (a tracked one) releases nothing again.
                self._restart(conn, child, parents.get(child.parent_id), now)
                restarted.append(child.id)
        return restarted

    def _statuses(self, conn: Connection, ids: set[int | None]) -> dict[int | None, TaskStatus]:
        """The current status of each task in ``ids`` (None, a root's parent, left out)."""
        found: dict[int | None, TaskStatus] = {}
        for chunk in chunks(sorted(i for i in ids if i is not None)):
            for task_id, status in conn.execute(
                select(tasks.c.id, tasks.c.status).where(tasks.c.id.in_(chunk))
            ):
                found[task_id] = TaskStatus(status)
        return found

    def _restart(
        self, conn: Connection, task: Task, parent_status: TaskStatus | None, now: datetime
    ) -> None:
        end = _object_end(conn, task)
        held = end is ObjectEnd.HELD
        phase = restart_phase(held, task.maybe_created, parent_status)
        previous = task.validation_error or task.last_error or "-"
        client_ref = task.client_ref
        if held:
            then = f"; polling {task.external_id} again"
        elif end is ObjectEnd.ENDED_BY_PROVIDER:
            # The old reference names the provider's ended object: a lookup after a lost
            # answer, or an idempotency key, would find that one again.
            client_ref = new_client_ref()
            then = f"; creating it again as {client_ref}"
        else:
            then = ""
        change_status(
            conn,
            task,
            TaskStatus.NOT_STARTED,
            now=now,
            event="retried",
            detail=f"retried by request (was {task.status.value}: {previous}){then}",
            phase=phase.value,
            attempts=0,
            polls=0,
            validation_error=None,
            last_error=None,
            external_id=task.external_id if held else None,
            client_ref=client_ref,
            next_attempt_at=now if phase is not Phase.WAITING_PARENT else None,
            deadline_at=None,
            poll_interval_s=None,
        )

    def _tasks(self, conn: Connection, ids: list[int]) -> list[Task]:
        found: list[Task] = []
        for chunk in chunks(ids):
            found.extend(
                row_to_task(r) for r in conn.execute(select(tasks).where(tasks.c.id.in_(chunk)))
            )
        return sorted(found, key=lambda t: t.id)


class ObjectEnd(Enum):
    """What became of the provider's object of an ended task, as a retry sees it."""

    NONE = "none"
    """No object was accepted (never sent, refused, or its create's outcome unsettled)."""
    HELD = "held"
    """The provider holds it and Sluice ended the task (a cancel, giving up on polls, a
    deadline, its parent), or it is tracked: a retry polls it again."""
    ENDED_BY_PROVIDER = "ended_by_provider"
    """The provider reported it Error or Cancelled: a retry creates another."""
    GONE = "gone"
    """The last failed status read found no object by its id: a retry clears the id and is
    settled like an ambiguous create (``maybe_created``: a lookup, or "outcome unknown")."""


def _object_end(conn: Connection, task: Task) -> ObjectEnd:
    """Where ``task``'s object stands, by the last event (the one that ended the task)."""
    if task.external_id is None:
        return ObjectEnd.NONE
    if task.track_only:
        return ObjectEnd.HELD
    last = conn.execute(
        select(events.c.event)
        .where(events.c.task_id == task.id)
        .order_by(events.c.id.desc())
        .limit(1)
    ).scalar()
    if last == "status":
        return ObjectEnd.ENDED_BY_PROVIDER
    if last == "object_gone":
        return ObjectEnd.GONE
    if last == "created_after_cancel":
        # Kept for the record only (the create's outcome lost to the cancel): a retry
        # settles it as before, by a lookup first (the kind may have no status to poll).
        return ObjectEnd.NONE
    return ObjectEnd.HELD


def new_client_ref() -> str:
    """A fresh client reference (see :func:`new_client_refs`)."""
    return new_client_refs(1)[0]


def new_client_refs(count: int) -> list[str]:
    """``count`` fresh client references, ``sl-`` and 24 hex digits: the milliseconds since
    the epoch (11 digits), then a random 52-bit number counted up by one per reference (13).
    Distinct from each other, and from any other batch's unless both were made in the same
    millisecond with overlapping counts (odds about 2 x count / 2^52).

    Time first, so a batch's references go in together at the end of the unique index
    instead of each landing on a random page of it: fully random ones cost PostgreSQL's
    ``COPY`` about 1.3 µs more per task on a fresh table, more as the index outgrows memory.
    """
    prefix = f"sl-{time.time_ns() // 1_000_000:011x}"
    start = int.from_bytes(os.urandom(7), "big")
    return [f"{prefix}{(start + i) & _REF_COUNTER:013x}" for i in range(count)]


_REF_COUNTER = 2**52 - 1


def _conflict_message(orig: BaseException, specs: Sequence[Submission]) -> str:
    """What a unique violation (the driver's error) says about the batch, without values."""
    text_ = str(orig).lower()
    if "idempotency" in text_:
        return "Idempotency-Key already used"
    explicit = [s.id for s in specs if s.id is not None]
    if explicit and (
        "primary" in text_ or "tasks.id" in text_ or "pk_tasks" in text_ or "unique" in text_
    ):
        if len(explicit) == 1:
            return f"task {explicit[0]} already exists"
        return f"one of tasks {', '.join(map(str, explicit[:20]))} already exists"
    return "conflicting task"


@dataclass(frozen=True)
class RunSummary:
    """How a set of tasks (a run's own) fared."""

    total: int
    by_status: dict[str, int]
    by_event: dict[str, int]
    errors: list[tuple[int, str | None, str]]


def summarize(engine: Engine, ids: Sequence[int], max_errors: int = 50) -> RunSummary:
    """Counts per status and per event, and each error with its message, for the tasks
    ``ids``. Only those: on PostgreSQL a concurrent creator draws ids from the same
    sequence, so another run's tasks may sit between a run's first and last id (a range
    read counted them). Contiguous ids are read as one range, others in chunks."""
    wanted = sorted(set(ids))
    if not wanted:
        return RunSummary(0, {}, {}, [])
    parts: list[tuple[int, int, list[int] | None]]
    if wanted[-1] - wanted[0] + 1 == len(wanted):
        parts = [(wanted[0], wanted[-1], None)]
    else:
        parts = [(chunk[0], chunk[-1], chunk) for chunk in chunks(wanted)]
    by_status: Counter[str] = Counter()
    by_event: Counter[str] = Counter()
    failures: list[Any] = []
    with engine.connect() as conn:
        for low, high, exact in parts:
            mine = tasks.c.id.between(low, high) if exact is None else tasks.c.id.in_(exact)
            own_events = (
                events.c.task_id.between(low, high)
                if exact is None
                else events.c.task_id.in_(exact)
            )
            for status, count in conn.execute(
                select(tasks.c.status, func.count()).where(mine).group_by(tasks.c.status)
            ):
                by_status[status] += int(count)
            for name, count in conn.execute(
                select(events.c.event, func.count()).where(own_events).group_by(events.c.event)
            ):
                by_event[name] += int(count)
            if len(failures) < max_errors:
                failures += conn.execute(
                    select(tasks.c.id, tasks.c.kind, tasks.c.validation_error, tasks.c.last_error)
                    .where(mine, tasks.c.status == TaskStatus.ERROR.value)
                    .order_by(tasks.c.id)
                    .limit(max_errors - len(failures))
                ).all()
    return RunSummary(
        total=sum(by_status.values()),
        by_status=dict(by_status),
        by_event=dict(by_event),
        errors=[(r.id, r.kind, r.validation_error or r.last_error or "") for r in failures],
    )


class _NewRows:
    """The rows a batch of ``specs`` inserts, built column by column a part at a time (in
    order: an item's ``parent_index`` names an earlier item, whose status decides its own).
    """

    def __init__(
        self,
        specs: Sequence[Submission],
        now: datetime,
        ids: list[int] | None,
        parent_statuses: Mapping[int, TaskStatus],
    ) -> None:
        self.specs = specs
        self.now = now
        # Without ids (one untracked task without parent_index) the database numbers it.
        self.ids = ids
        self.known = ids if ids is not None else [0] * len(specs)
        self.parent_statuses = parent_statuses
        self.statuses: list[str] = []  # every item's so far, for its children's parent_index

    def columns(self, start: int, stop: int) -> dict[str, list[Any]]:
        """Items ``start`` to ``stop`` (exclusive; every earlier item built already)."""
        if start != len(self.statuses):
            raise errors.InvalidValue(f"rows from {start} built before rows {len(self.statuses)}")
        specs = self.specs[start:stop]
        now = self.now
        count = len(specs)
        refs = new_client_refs(count)
        ready, not_started = Phase.READY.value, TaskStatus.NOT_STARTED.value
        statuses = self.statuses
        phases: list[str] = []
        messages: list[str | None] = []
        due: list[datetime | None] = []
        client_refs: list[str | None] = []
        for position, spec in enumerate(specs):
            if spec.provider is None:
                raise errors.InvalidTask("a task needs a provider (submissions.check fills it in)")
            if spec.kind is not None and spec.parent_id is None and spec.parent_index is None:
                # A submission without a parent (initial_phase's commonest answer).
                statuses.append(not_started)
                phases.append(ready)
                messages.append(None)
                due.append(now)
                client_refs.append(refs[position])
                continue
            if spec.parent_index is not None:
                parent_status: TaskStatus | None = TaskStatus(statuses[spec.parent_index])
            elif spec.parent_id is not None:
                parent_status = self.parent_statuses[spec.parent_id]
            else:
                parent_status = None
            status, phase, message = initial_phase(spec, parent_status)
            if message and spec.parent_index is not None:
                message = f"parent item {spec.parent_index}: {message}"
            elif message:
                message = f"parent task {spec.parent_id}: {message}"
            statuses.append(status.value)
            phases.append(phase.value)
            messages.append(message)
            due.append(now if phase in (Phase.READY, Phase.POLLING) else None)
            client_refs.append(None if spec.track_only else refs[position])
        known = self.known
        own_ids = known[start:stop]
        nothing: list[Any] = [None] * count
        columns: dict[str, list[Any]] = {} if self.ids is None else {"id": own_ids}
        columns.update(
            {
                "tenant": [spec.tenant for spec in specs],
                "provider": [spec.provider for spec in specs],
                "kind": [spec.kind for spec in specs],
                "payload": [spec.payload for spec in specs],
                "external_id": [
                    str(task_id) if spec.track_only else None
                    for spec, task_id in zip(specs, own_ids, strict=True)
                ],
                "parent_id": [
                    spec.parent_id if spec.parent_index is None else known[spec.parent_index]
                    for spec in specs
                ],
                "status": statuses[start:stop],
                "phase": phases,
                "track_only": [spec.kind is None for spec in specs],
                "validation_error": nothing,
                "last_error": messages,
                "attempts": [0] * count,
                "polls": [0] * count,
                "poll_interval_s": nothing,
                "next_attempt_at": due,
                "deadline_at": nothing,
                "idempotency_key": [spec.idempotency_key for spec in specs],
                "request_hash": [spec.request_hash for spec in specs],
                "client_ref": client_refs,
                "claimed_by": nothing,
                "claimed_until": nothing,
                "created_at": [now] * count,
                "updated_at": [now] * count,
                "priority": [spec.priority for spec in specs],
                "fairness_key": [spec.fairness_key or spec.tenant for spec in specs],
            }
        )
        return columns
