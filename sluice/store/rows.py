"""What the store's two faces share: the tables, row <-> value mapping, guarded status changes.

:mod:`sluice.store.repository` (the API's SQL), :mod:`sluice.store.queue` (the engine's SQL)
and :mod:`sluice.store.chains` build on these; none of them reaches into another's internals.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    and_,
    bindparam,
    insert,
    literal_column,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from sluice import errors
from sluice.domain import MAX_ID, Phase, Task, TaskStatus, can_transition
from sluice.store.tables import ACTIVE_PHASES, TaskEventRow, TaskRow

tasks: Table = TaskRow.__table__  # type: ignore[assignment]
events: Table = TaskEventRow.__table__  # type: ignore[assignment]

IN_CHUNK = 900
"""Ids per ``IN (...)`` list: below SQLite's historical limit of 999 bound parameters."""

T = TypeVar("T")


class NoIndexOnSqlite(ColumnElement[Any]):
    """A column SQLite must not look up through an index: ``+column`` there (the unary
    plus SQLite documents for taking a term out of index selection), the column itself on
    any other database.

    Sluice never runs ``ANALYZE`` on SQLite, and without statistics its planner ranged
    over ``ix_tasks_claim`` or ``ix_tasks_due`` (every due task of the provider, then
    sorted) for a fair claim's reads of one key, and walked ``ix_tasks_due`` over every
    active task for the claim's ``UPDATE ... WHERE id IN``: a claim of 50 took 60 times the
    work with 20,000 due tasks as with 200. With the due time and the phase out of index
    selection, those reads walk ``ix_tasks_fair_order`` in claim order and stop, and the
    UPDATE finds its rows by id (tests/integration/test_sqlite_fair_claim_plans.py)."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column
        self.type = column.type

    def _bind_param(
        self, operator: Any, obj: Any, type_: Any = None, expanding: bool = False
    ) -> Any:
        """Values compared with it are bound as with the column itself (the same parameter
        names, so PostgreSQL's SQL is the text it was without the wrapper)."""
        return self.column._bind_param(operator, obj, type_=type_, expanding=expanding)


class Unindexed:
    """The columns SQLite is kept from looking up through an index, each wrapped once: an
    expression SQLAlchemy compares keeps a comparator that refers back to it, so a wrapper
    made per statement was a reference cycle left to the collector (docs/ratelimit.md, "The
    collector")."""

    phase = NoIndexOnSqlite(tasks.c.phase)
    status = NoIndexOnSqlite(tasks.c.status)
    next_attempt_at = NoIndexOnSqlite(tasks.c.next_attempt_at)


@compiles(NoIndexOnSqlite)
def _plain(element: NoIndexOnSqlite, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column, **kw)


@compiles(NoIndexOnSqlite, "sqlite")
def _unary_plus(element: NoIndexOnSqlite, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.column, **kw)


def in_phases(phases: Sequence[str]) -> ColumnElement[bool]:
    """A task in one of ``phases``, written with literal values as the predicates of the
    partial indexes are (``tables.READY_PHASE_SQL``, ``POLL_PHASE_SQL``): SQLite uses a
    partial index only when the query repeats its predicate with literals, ``=`` for one
    phase and ``IN`` for several. Built once per set of phases (see :func:`is_in`)."""
    return _in_phases(tuple(phases))


@functools.cache
def _in_phases(phases: tuple[str, ...]) -> ColumnElement[bool]:
    values: list[ColumnElement[Any]] = [literal_column(f"'{phase}'") for phase in phases]
    return tasks.c.phase == values[0] if len(values) == 1 else tasks.c.phase.in_(values)


@functools.cache
def is_in(column: ColumnElement[Any], param: str) -> ColumnElement[bool]:
    """``column IN (...)`` of the values the statement is run with as ``{param: values}``
    (an expanding parameter), built once per column and name.

    SQLAlchemy's ``in_`` leaves a reference cycle among the objects it makes each time it
    is called (the parameter and what it memoizes), a few hundred a second on the engine's
    claims and outcomes, all left to the cyclic collector; a full collection then stopped
    every thread for as long as it took to walk them (docs/ratelimit.md, "The collector").
    Built once, the clause is only reused. ``column`` must live as long as the process (a
    table's column, :class:`Unindexed`): the cache keeps it.
    """
    return column.in_(bindparam(param, expanding=True))


def in_active_phase() -> ColumnElement[bool]:
    """A task with work left (:data:`ACTIVE_PHASES`), in :func:`in_phases`' literals."""
    return in_phases(ACTIVE_PHASES)


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``, for ``IN (...)`` clauses."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def task_values(mapping: Mapping[Any, Any], names: Iterable[str]) -> dict[str, Any]:
    """The named task columns of a row, with status, phase and flags as domain values."""
    values = {name: mapping[name] for name in names}
    values["status"] = TaskStatus(values["status"])
    values["phase"] = Phase(values["phase"])
    values["track_only"] = bool(values["track_only"])
    return values


_TASK_FIELDS = tuple(f.name for f in fields(Task))


def row_to_task(row: Row[Any]) -> Task:
    return Task(**task_values(row._mapping, _TASK_FIELDS))


EVENT_COLUMNS = ("task_id", "at", "event", "from_status", "to_status", "detail")
"""The keys of an :func:`event_row`, in the order of its columns."""


def event_row(
    task_id: int,
    at: datetime,
    event: str,
    from_status: TaskStatus | None,
    to_status: TaskStatus | None,
    detail: str | None = None,
) -> dict[str, Any]:
    """A ``task_events`` row."""
    return {
        "task_id": task_id,
        "at": at,
        "event": event,
        "from_status": from_status.value if from_status else None,
        "to_status": to_status.value if to_status else None,
        "detail": detail,
    }


def change_status(
    conn: Connection,
    task: Task,
    to_status: TaskStatus,
    *,
    now: datetime,
    event: str,
    detail: str | None = None,
    **fields: Any,
) -> bool:
    """Move ``task`` to ``to_status`` with its event, if nobody changed it meanwhile.

    Returns False when the row's status is no longer ``task.status`` (a concurrent
    change won); raises IllegalTransition when the move itself is not allowed.
    """
    if to_status != task.status and not can_transition(task.status, to_status):
        raise errors.IllegalTransition(
            f"task {task.id}: {task.status.value} -> {to_status.value} is not allowed"
        )
    result = conn.execute(
        update(tasks)
        .where(and_(tasks.c.id == task.id, tasks.c.status == task.status.value))
        .values(status=to_status.value, updated_at=now, **fields)
    )
    if result.rowcount != 1:
        return False
    conn.execute(insert(events), [event_row(task.id, now, event, task.status, to_status, detail)])
    return True


def encode_cursor(last_id: int) -> str:
    """An opaque keyset cursor: the last id of a page."""
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id in a cursor :func:`encode_cursor` made; InvalidTask for anything else."""
    refused = errors.InvalidTask(f"cursor {cursor!r} is not a cursor this API returned")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, value = base64.urlsafe_b64decode(padded.encode()).decode().split(":", 1)
    except (ValueError, UnicodeDecodeError) as exc:
        raise refused from exc
    # int() also reads ' 3', '+3', '3_0' and other scripts' digits: none is a cursor.
    if not (value.isascii() and value.isdigit()):
        raise refused
    last_id = int(value)
    if kind != "id" or not 0 <= last_id <= MAX_ID:  # a larger id overflowed SQLite (a 500)
        raise refused
    return last_id
