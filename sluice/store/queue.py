"""Every SQL statement the engine needs: find due work, claim it, record outcomes.

Claims are leases (``claimed_by``/``claimed_until``) so that two workers never act on the
same task at once and a crashed worker's tasks come back after the lease. Each claim has its
own token; outcomes are applied only while the task's status is what the worker saw *and*
its claim still holds, so a cancel that lands while a request is in flight wins, and so
does a worker that took the task over after this one's lease ended.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import fields, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Update,
    and_,
    bindparam,
    case,
    cast,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql

from sluice.domain import DueTask, Outcome, Phase, TaskStatus
from sluice.store import db, fairshare
from sluice.store.bulk import execute_many
from sluice.store.chains import end_descendants, release_children
from sluice.store.rows import (
    EVENT_COLUMNS,
    Unindexed,
    chunks,
    event_row,
    events,
    in_active_phase,
    is_in,
    tasks,
)
from sluice.store.tables import ACTIVE_PHASES

log = logging.getLogger("sluice.store")

_parent = tasks.alias("parent")
_INSERT_EVENTS = insert(events)


def due_now(now: datetime | ColumnElement[Any], *, fair_order: bool = False) -> Any:
    """The condition of a task that is due and not claimed at ``now``. ``fair_order``: for
    a read along ``ix_tasks_fair_order`` (a fair claim's), with the due time out of SQLite's
    index selection (:class:`~sluice.store.rows.NoIndexOnSqlite`)."""
    due_at = Unindexed.next_attempt_at if fair_order else tasks.c.next_attempt_at
    return and_(
        in_active_phase(),
        due_at <= now,
        or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now),
    )


def due_in_stream(now: datetime | ColumnElement[Any], poll: bool) -> Any:
    """:func:`due_now` for a fair claim's read of one stream of a key
    (:data:`fairshare.Due`): the ready tasks along ``ix_tasks_fair_order`` with the due time
    out of SQLite's index selection; the polls with it as the range of
    ``ix_tasks_due_polls`` that ends the read before the polls in flight not due yet."""
    return due_now(now, fair_order=not poll)


_DUE_IN_STREAM = functools.partial(
    due_in_stream, bindparam("due_now", type_=tasks.c.next_attempt_at.type)
)
""":func:`due_in_stream` at the instant given as ``due_now``, built once for the fair
claim's reads of several keys (``fairshare.candidates``, see :func:`is_in`)."""


def _due_by_id(now: datetime) -> Any:
    """:func:`due_now` for a read of tasks named by id: on SQLite no index but the primary
    key (:class:`~sluice.store.rows.NoIndexOnSqlite`; with the phase indexable, SQLite
    without statistics took three ``phase`` lookups of ``ix_tasks_due`` for cheaper than 30
    ids, then sorted)."""
    return and_(
        _ACTIVE_UNINDEXED,
        Unindexed.next_attempt_at <= now,
        or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now),
    )


_ACTIVE = tasks.c.phase.in_(ACTIVE_PHASES)
_ACTIVE_UNINDEXED = Unindexed.phase.in_(ACTIVE_PHASES)
"""An active task (the phase out of SQLite's index choice), built once (:func:`is_in`)."""


_NOT_GOT = tasks.c.id.not_in(bindparam("got_ids", expanding=True))
"""Not one of the tasks a claim already read (``got_ids``), built once (:func:`is_in`)."""

_IN_CANDIDATE_ORDER = func.array_position(
    cast(bindparam("candidate_order"), postgresql.ARRAY(BigInteger)), tasks.c.id
)
"""PostgreSQL: a task's place among the candidates (``candidate_order``), built once."""


def _with_parent() -> Any:
    """The columns of a :class:`DueTask`, in its fields' order, with its parent's id at the
    provider."""
    return select(*_DUE_COLUMNS).select_from(
        tasks.outerjoin(_parent, _parent.c.id == tasks.c.parent_id)
    )


def _due_query(now: datetime, providers: Sequence[str] | None, limit: int) -> Any:
    query = (
        _with_parent()
        .where(due_now(now))
        .order_by(tasks.c.next_attempt_at, tasks.c.id)
        .limit(limit)
    )
    if providers is not None:
        query = query.where(tasks.c.provider.in_(list(providers)))
    return query


_DUE_FIELDS = tuple(f.name for f in fields(DueTask))
_DUE_COLUMNS = tuple(
    _parent.c.external_id.label(name) if name == "parent_external_id" else tasks.c[name]
    for name in _DUE_FIELDS
)
_STATUS, _PHASE, _TRACK_ONLY = (_DUE_FIELDS.index(n) for n in ("status", "phase", "track_only"))
CANDIDATES_PER_SLOT = 4
"""A fair claim reads this many candidates per slot of each key (concurrent claimers)."""
CLAIM_TOKEN_MAX = 128  # tasks.claimed_by


def _to_due(row: Any) -> DueTask:
    """A row of :func:`_with_parent` as a :class:`DueTask` (read by position: claims build
    one per task, and looking each column up by name cost more than the rest)."""
    values = list(row)
    values[_STATUS] = TaskStatus(values[_STATUS])
    values[_PHASE] = Phase(values[_PHASE])
    values[_TRACK_ONLY] = bool(values[_TRACK_ONLY])
    return DueTask(*values)


def claim_token(worker: str) -> str:
    """A token naming one claim: the worker, and 48 random bits that make it unique."""
    suffix = secrets.token_hex(6)
    return f"{worker[: CLAIM_TOKEN_MAX - len(suffix) - 1]}/{suffix}"


def _as_claimed(task: DueTask, token: str, until: datetime) -> DueTask:
    """``task`` as its claim left it (see :meth:`WorkQueue._claim`). Built from its fields'
    dict: ``dataclasses.replace`` walks the fields' definitions each call."""
    if task.phase is Phase.READY:
        return DueTask(
            **{
                **vars(task),
                "phase": Phase.SUBMITTING,
                "maybe_created": True,
                "claimed_by": token,
                "claimed_until": until,
            }
        )
    return DueTask(**{**vars(task), "claimed_by": token, "claimed_until": until})


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
        with db.reading(self.engine) as conn:
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
        workers each get different tasks without waiting on each other; on SQLite the
        transaction starts with ``BEGIN IMMEDIATE``, so claims are serialised. Each call
        claims under a fresh token (``worker/random``): only that token's outcomes apply.
        """
        token = claim_token(worker)
        until = now + timedelta(seconds=lease_s)
        with self._writing() as conn:
            query = _due_query(now, providers, limit)
            if self._postgres:
                query = query.with_for_update(skip_locked=True, of=tasks)
            due = [_to_due(r) for r in conn.execute(query)]
            if not due:
                return []
            claimed = set(self._claim(conn, [t.id for t in due], now, token, until))
        return [_as_claimed(t, token, until) for t in due if t.id in claimed]

    def claim_fair(
        self,
        now: datetime,
        limit: int,
        worker: str,
        lease_s: float,
        provider: str,
        weights: Mapping[str, float] | None = None,
        charge: fairshare.Charge = fairshare.unit_charge,
    ) -> list[DueTask]:
        """Claim up to ``limit`` due tasks of ``provider``, shared fairly between keys.

        The slots go between the fairness keys with work due by weighted fair queuing
        (:mod:`sluice.store.fairshare`), each task counted at its ``charge`` (what its
        request costs the provider's budget); within a key its polls (by due time) and its
        other work (by priority, trees first, then due time) take turns, from the turn the
        key's last claim left (a poll's for a key never claimed), and the turn after what
        this claim takes is stored for the next (:func:`fairshare.next_turn`).
        Tasks are locked with ``FOR UPDATE SKIP LOCKED`` as in :meth:`claim_due`; the
        keys' tags are added to in the same transaction, so concurrent claimers never wait
        for each other and nothing they hand out is lost from the tags. The tasks come back
        in the order their slots were handed out, the keys interleaved.
        """
        weights = weights or {}
        token = claim_token(worker)
        until = now + timedelta(seconds=lease_s)
        found: dict[str, list[fairshare.Candidate]] = {}
        due_in = functools.partial(due_in_stream, now)
        # The candidates are read outside the claim's transaction; every task taken is
        # re-checked under its row lock.
        with db.reading(self.engine) as conn:
            keys = fairshare.waiting_keys(conn, provider)
            if len(keys) == 1:
                # One key waiting: nothing to share. Its tasks are read once, under the
                # lock, if any is due.
                one = keys[0] if fairshare.has_due(conn, due_in, provider, keys[0]) else None
            else:
                # More candidates than slots: claimers running at once read the same ones,
                # and each then takes the first of its share that nobody has locked.
                one = None
                found = fairshare.candidates(
                    conn,
                    _DUE_IN_STREAM,
                    provider,
                    limit,
                    weights,
                    CANDIDATES_PER_SLOT,
                    charge,
                    keys,
                    due_params={"due_now": now},
                )
        if one is None and not found:
            return []
        with self._writing() as conn:
            if one is not None:
                clock, due, plan, state = self._one_key(
                    conn, now, provider, one, limit, weights, charge
                )
                if not due:  # taken meanwhile by another claimer
                    return []
                polls_first = {one: state.polls_next}
            else:
                clock, states = fairshare.read_state(
                    conn, provider, {k: len(v) for k, v in found.items()}, weights
                )
                costs = {key: [c.cost for c in read] for key, read in found.items()}
                plan = fairshare.allocate(clock, states, limit, costs)
                polls_first = {s.key: s.polls_next for s in states}
                due = []
                for key, count in sorted(plan.counts.items()):
                    due.extend(self._locked_due(conn, now, [c.id for c in found[key]], count))
            ids = [t.id for t in due]
            claimed = set(self._claim(conn, ids, now, token, until)) if ids else set()
            by_key: dict[str, list[DueTask]] = {}
            for task in due:
                if task.id in claimed:
                    by_key.setdefault(task.fairness_key, []).append(task)
            # Each key's tasks in turns (the candidates' order, or the one key's read's).
            rank = (
                {c.id: n for key in found for n, c in enumerate(found[key])}
                if found
                else {t.id: n for n, t in enumerate(due)}
            )
            ordered: list[tuple[float, str, DueTask]] = []
            taken: dict[str, float] = {}
            turns: dict[str, bool] = {}
            for key, items in by_key.items():
                polls = sum(1 for t in items if fairshare.is_poll(t.phase))
                turns[key] = fairshare.next_turn(
                    polls, len(items) - polls, polls_first.get(key, True)
                )
                items.sort(key=lambda t: rank[t.id])
                weight = weights.get(key, fairshare.DEFAULT_WEIGHT)
                tag = plan.starts[key]
                for task in items:
                    ordered.append((tag, key, task))
                    cost = charge(provider, task.kind, task.operation)
                    tag += cost / weight
                    taken[key] = taken.get(key, 0.0) + cost
            fairshare.record(conn, provider, clock, plan.clock, taken, weights, now, turns)
        ordered.sort(key=lambda entry: (entry[0], entry[1]))
        return [_as_claimed(t, token, until) for _, _, t in ordered]

    def _locked_due(
        self, conn: Connection, now: datetime, ids: Sequence[int], count: int
    ) -> list[DueTask]:
        """Up to ``count`` of the candidates ``ids`` (a key's, in turns) still due, locked,
        in the candidates' order: the first ``count`` of them nobody else has locked."""
        query = _with_parent().where(is_in(tasks.c.id, "due_ids"), _due_by_id(now))
        named = {"due_ids": list(ids)}
        if not self._postgres:  # one writer at a time: nothing to lock, sorted here
            place = {task_id: n for n, task_id in enumerate(ids)}
            found = sorted(
                (_to_due(r) for r in conn.execute(query, named)), key=lambda t: place[t.id]
            )
            return found[:count]
        query = (
            query.order_by(_IN_CANDIDATE_ORDER)
            .limit(count)
            .with_for_update(skip_locked=True, of=tasks)
        )
        return [_to_due(r) for r in conn.execute(query, {**named, "candidate_order": list(ids)})]

    def _one_key(
        self,
        conn: Connection,
        now: datetime,
        provider: str,
        key: str,
        limit: int,
        weights: Mapping[str, float],
        charge: fairshare.Charge,
    ) -> tuple[float, list[DueTask], fairshare.Allocation, fairshare.KeyState]:
        """A fair claim when one fairness key has work: up to ``limit`` of its due tasks,
        locked and in turns from its stored turn (:func:`fairshare.take_turns`: each stream
        read along its index and locked only as far as the claim takes), the plan that
        hands them all to it (what the general path gives one key, without the candidate
        read), and the key's state as read."""
        clock, (state,) = fairshare.read_state(conn, provider, {key: limit}, weights)
        if state.weight <= 0:  # a key weighted 0 is never served
            return clock, [], fairshare.allocate(clock, [state], 0), state
        due_in = functools.partial(due_in_stream, now)

        def read(count: int, got: Sequence[DueTask], *, poll: bool) -> list[DueTask]:
            query = fairshare.stream(_with_parent(), due_in, provider, key, poll=poll)
            if got:
                query = query.where(_NOT_GOT)
            query = query.limit(count)
            if self._postgres:
                query = query.with_for_update(skip_locked=True, of=tasks)
            return [_to_due(r) for r in conn.execute(query, {"got_ids": [t.id for t in got]})]

        due = fairshare.take_turns(
            lambda count, got: read(count, got, poll=True),
            lambda count, got: read(count, got, poll=False),
            limit,
            state.polls_next,
        )
        costs = {key: [charge(provider, t.kind, t.operation) for t in due]}
        plan = fairshare.allocate(clock, [replace(state, waiting=len(due))], len(due), costs)
        return clock, due, plan, state

    def shares(
        self, provider: str, now: datetime, weights: Mapping[str, float] | None = None
    ) -> list[fairshare.Share]:
        """Each fairness key's waiting work, weight and share of the last minute's claims."""
        return fairshare.shares(self.engine, provider, weights or {}, due_now(now), now)

    def _claim(
        self, conn: Connection, task_ids: Sequence[int], now: datetime, token: str, until: datetime
    ) -> list[int]:
        submitting = tasks.c.phase == Phase.READY.value
        result = conn.execute(
            update(tasks)
            .where(
                is_in(tasks.c.id, "claim_ids"),
                # Found by id: on SQLite not through ix_tasks_due (NoIndexOnSqlite).
                _ACTIVE_UNINDEXED,
                or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now),
            )
            .values(
                claimed_by=token,
                claimed_until=until,
                # The intent to submit is on record before any request leaves.
                phase=case((submitting, Phase.SUBMITTING.value), else_=tasks.c.phase),
                maybe_created=case((submitting, True), else_=tasks.c.maybe_created),
            )
            .returning(tasks.c.id),
            {"claim_ids": list(task_ids)},
        )
        return list(result.scalars())

    def release(
        self,
        claimed: Iterable[DueTask],
        next_attempt_at: datetime | None = None,
        charge: fairshare.Charge = fairshare.unit_charge,
    ) -> int:
        """Give claimed, unsent tasks back, optionally due later; returns how many.

        Only claims still held under the token they were handed out with are given back:
        a worker whose lease ended meanwhile cannot clear its successor's claim. Each task
        given back refunds its fairness key the share its claim charged (``charge``, as
        :meth:`claim_fair` was given it).
        """
        by_token: dict[str, list[int]] = {}
        cost: dict[int, float] = {}
        for task in claimed:
            if task.claimed_by is not None:
                by_token.setdefault(task.claimed_by, []).append(task.id)
                cost[task.id] = charge(task.provider, task.kind, task.operation)
        if not by_token:
            return 0
        unsent = tasks.c.phase == Phase.SUBMITTING.value
        values: dict[str, Any] = {
            "claimed_by": None,
            "claimed_until": None,
            "phase": case((unsent, Phase.READY.value), else_=tasks.c.phase),
            "maybe_created": case((unsent, False), else_=tasks.c.maybe_created),
        }
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        given_back: list[tuple[str, str, float]] = []
        with self._writing() as conn:
            for token, ids in by_token.items():
                for chunk in chunks(ids):
                    given_back.extend(
                        (provider, key, cost[task_id])
                        for task_id, provider, key in conn.execute(
                            update(tasks)
                            .where(is_in(tasks.c.id, "released_ids"), tasks.c.claimed_by == token)
                            .values(**values)
                            .returning(tasks.c.id, tasks.c.provider, tasks.c.fairness_key),
                            {"released_ids": chunk},
                        )
                    )
            if given_back:
                fairshare.refund(conn, given_back)
        return len(given_back)

    def apply(self, outcomes: Iterable[Outcome], now: datetime) -> int:
        """Record outcomes in one transaction; returns how many applied.

        The batch's guarded UPDATEs go first as one ``executemany`` per statement shape
        (:func:`_apply_all_at_once`); if a guard did not hold, that transaction is rolled
        back whole and the batch applied row by row in a new one, which sees each lost
        guard on its own. Rolling back the transaction instead of a savepoint around the
        UPDATEs spares every batch a ``SAVEPOINT`` and a ``RELEASE`` (a fifth of the
        writer's time in an unthrottled engine), and costs a batch that lost a guard (a
        cancel, a lost claim: rare) a second transaction.
        """
        batch = sorted(outcomes, key=_task_id)
        with self._write_lock, self.engine.connect() as conn:
            with conn.begin() as transaction:
                applied = apply_outcomes(conn, batch, now, at_once=True)
                if applied is not None:
                    return applied
                transaction.rollback()
            with conn.begin():
                return _applied(apply_outcomes(conn, batch, now))

    def next_due_at(self) -> datetime | None:
        """When the earliest active task falls due (claimed ones included)."""
        with db.reading(self.engine) as conn:
            value: datetime | None = conn.execute(
                select(func.min(tasks.c.next_attempt_at)).where(_ACTIVE)
            ).scalar()
        return value

    def unfinished_count(self) -> int:
        with db.reading(self.engine) as conn:
            return int(
                conn.execute(
                    select(func.count()).where(tasks.c.phase != Phase.DONE.value)
                ).scalar_one()
            )

    def recover_stuck(self, now: datetime) -> int:
        """Make tasks whose worker died mid-request due again; returns how many.

        A task left ``submitting`` (its lease ended, or its claim was cleared) may have
        reached the provider, so it becomes ``uncertain``: looked up by client reference
        before any re-create. Other expired claims simply lapse. Each is one guarded
        UPDATE whose WHERE is re-checked on the row it changes (PostgreSQL re-evaluates it
        after waiting for a concurrent writer; SQLite runs writers one at a time), so two
        reconcilers never both recover a task, nor clear a claim taken meanwhile.
        """
        uncertain, released = self._recover(
            now,
            or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now),
            tasks.c.claimed_until < now,
        )
        return uncertain + released

    def take_over(self, now: datetime) -> tuple[int, int]:
        """Recover every claim, lapsed or not: ``(made uncertain, released)``.

        Only for an engine that knows no other one can hold a claim on this database: an
        embedded engine that has just taken an engine lock which goes with its holder's
        process (:func:`sluice.drivers.engine_lock.holder_is_gone`), before it claims
        anything itself. The claims left are those of an engine that was killed; waiting
        out their lease (``SLUICE_CLAIM_LEASE_S``, 120 s) would hold its tasks, and their
        children, for as long after every restart.
        """
        return self._recover(now, true(), tasks.c.claimed_until.is_not(None))

    def _recover(self, now: datetime, submission: Any, other: Any) -> tuple[int, int]:
        """Submissions matching ``submission`` become uncertain (each with a 'recovered'
        event) and other claims matching ``other`` are released: ``(uncertain, released)``."""
        with self._writing() as conn:
            recovered = list(
                conn.execute(
                    update(tasks)
                    .where(tasks.c.phase == Phase.SUBMITTING.value, submission)
                    .values(
                        phase=Phase.UNCERTAIN.value,
                        maybe_created=True,
                        next_attempt_at=now,
                        claimed_by=None,
                        claimed_until=None,
                        updated_at=now,
                    )
                    .returning(tasks.c.id)
                ).scalars()
            )
            if recovered:
                conn.execute(
                    insert(events),
                    [
                        event_row(
                            task_id,
                            now,
                            "recovered",
                            None,
                            None,
                            "worker lost mid-submission; will look up before re-creating",
                        )
                        for task_id in recovered
                    ],
                )
            released = conn.execute(
                update(tasks)
                .where(other, tasks.c.phase != Phase.SUBMITTING.value)
                .values(claimed_by=None, claimed_until=None)
            ).rowcount
        return len(recovered), int(released or 0)


def _outcome_params(outcome: Outcome, now: datetime) -> dict[str, Any]:
    params = {f"v_{name}": value for name, value in outcome.fields.items()}
    params.update(
        w_id=outcome.task_id,
        w_status=outcome.from_status.value,
        w_claim=outcome.claim,
        v_status=outcome.to_status.value,
        v_phase=outcome.phase.value,
        v_updated_at=now,
    )
    return params


def _apply_one(conn: Connection, outcome: Outcome, now: datetime) -> bool:
    """The guarded UPDATE of one outcome; whether its guard held."""
    shape = tuple(sorted(outcome.fields))
    return conn.execute(_outcome_update(shape), _outcome_params(outcome, now)).rowcount == 1


def _apply_all_at_once(conn: Connection, batch: list[Outcome], now: datetime) -> bool | None:
    """Run every guarded UPDATE of ``batch`` as one ``executemany`` per statement shape.

    Only when each task appears once (then the order of the UPDATEs does not matter) and
    the driver sums row counts over an executemany; False (nothing run) otherwise. Each
    UPDATE changes at most one row (by primary key), so a summed count equal to the
    group's size means every guard held. None: one did not, and the caller's transaction
    must be rolled back (some UPDATEs of the batch went through).
    """
    if len(batch) < 2 or not conn.dialect.supports_sane_multi_rowcount:
        return False
    if len({o.task_id for o in batch}) != len(batch):
        return False
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for outcome in batch:
        shape = tuple(sorted(outcome.fields))
        groups.setdefault(shape, []).append(_outcome_params(outcome, now))
    for shape, rows in groups.items():
        if execute_many(conn, _outcome_update(shape), rows) != len(rows):
            return None
    return True


@functools.lru_cache(maxsize=128)
def _outcome_update(field_names: tuple[str, ...]) -> Update:
    """The guarded UPDATE of one outcome that sets ``field_names``, built once per shape.

    Building and hashing a fresh statement per outcome cost more than running it; the
    outcome writer is the busiest thread of an unthrottled engine.
    """
    return (
        update(tasks)
        .where(
            tasks.c.id == bindparam("w_id"),
            tasks.c.status == bindparam("w_status"),
            tasks.c.claimed_by.is_not_distinct_from(bindparam("w_claim")),
        )
        .values(
            status=bindparam("v_status"),
            phase=bindparam("v_phase"),
            updated_at=bindparam("v_updated_at"),
            claimed_by=None,
            claimed_until=None,
            **{name: bindparam(f"v_{name}") for name in field_names},
        )
    )


def _applied(count: int | None) -> int:
    """The count of outcomes applied one by one (never None: only ``at_once`` gives up)."""
    assert count is not None
    return count


def _task_id(outcome: Outcome) -> int:
    return outcome.task_id


def _record_created_after_cancel(conn: Connection, outcome: Outcome) -> bool:
    """Keep the provider's id of an object a create made while its task was cancelled.

    The create's outcome loses to the cancel, and the object the provider made would be
    known to nobody. Recorded only while the task is still Cancelled, without an id, and
    under this outcome's claim (a task retried meanwhile looks the object up before any
    create). Whether it was recorded.
    """
    external_id = outcome.fields.get("external_id")
    if external_id is None:
        return False
    changed = conn.execute(
        update(tasks)
        .where(
            tasks.c.id == outcome.task_id,
            tasks.c.claimed_by == outcome.claim,
            tasks.c.status == TaskStatus.CANCELLED.value,
            tasks.c.external_id.is_(None),
        )
        .values(external_id=external_id)
    )
    return changed.rowcount == 1


def apply_outcomes(
    conn: Connection, outcomes: Iterable[Outcome], now: datetime, *, at_once: bool = False
) -> int | None:
    """Apply each outcome whose task still has its ``from_status`` and its ``claim``.

    ``at_once``: try the guarded UPDATEs as one statement per shape first; None if a guard
    did not hold (nothing more is done: the caller rolls its transaction back and calls
    again without ``at_once``, :meth:`WorkQueue.apply`).

    An outcome that loses (a cancel, or a worker that took over after this one's lease
    ended) is dropped and logged; the task's current holder decides it.

    The rows are changed in task id order (one task's outcomes keep theirs), the order in
    which bulk jobs and the pruner lock them, so the writer and they do not wait for each
    other in a cycle. Outcomes of different shapes go in one statement per shape, each in
    id order; a deadlock left between those is detected by PostgreSQL and the writer tries
    the batch again (:meth:`sluice.drivers.executor.ThreadExecutor._write`).
    """
    applied = 0
    dropped: list[dict[str, Any]] = []
    new_events: list[dict[str, Any]] = []
    released: list[int] = []
    ended: list[tuple[int, TaskStatus, str]] = []
    batch = sorted(outcomes, key=_task_id)
    held = at_once and _apply_all_at_once(conn, batch, now)
    if held is None:
        return None
    for outcome in batch:
        if not held and not _apply_one(conn, outcome, now):
            log.info(
                "outcome.dropped",
                extra={"task_id": outcome.task_id, "event": outcome.event or "status"},
            )
            if outcome.claim is not None:
                dropped.append({"w_id": outcome.task_id, "w_claim": outcome.claim})
                if _record_created_after_cancel(conn, outcome):
                    new_events.append(
                        event_row(
                            outcome.task_id,
                            now,
                            "created_after_cancel",
                            None,
                            None,
                            f"the provider created {outcome.fields['external_id']} before the "
                            "cancel reached it; the task stays Cancelled",
                        )
                    )
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
    if dropped:
        # The holder is done with a task someone changed meanwhile (a cancel): let go.
        conn.execute(
            update(tasks)
            .where(tasks.c.id == bindparam("w_id"), tasks.c.claimed_by == bindparam("w_claim"))
            .values(claimed_by=None, claimed_until=None),
            dropped,
        )
    if new_events:
        execute_many(conn, _INSERT_EVENTS, new_events, columns=EVENT_COLUMNS)
    if released:
        release_children(conn, released, now)
    for root, status, message in ended:
        end_descendants(conn, [root], status, message, now)
    return applied
