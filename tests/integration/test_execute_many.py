"""``execute_many`` writes what ``Connection.execute(statement, rows)`` writes, on SQLite and
the real PostgreSQL: the outcome writer's guarded UPDATEs (every shape of fields an outcome
may set: timestamps, numbers, flags, text, NULLs) and its event INSERTs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    bindparam,
    delete,
    event,
    insert,
    select,
    update,
)

from sluice import errors
from sluice.domain import Submission
from sluice.store.bulk import execute_many
from sluice.store.queue import _INSERT_EVENTS, _outcome_update
from sluice.store.repository import TaskRepository
from sluice.store.rows import EVENT_COLUMNS, events, tasks

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TASKS = 6
CLAIM = "worker-1"

TEXT = st.text(max_size=40) | st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy"])
"""Any text, with what the columns' type replaces (U+0000, lone surrogates): its bind
processor must run either way."""

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "external_id": st.none() | TEXT.filter(bool),
    "attempts": st.integers(0, 1000),
    "polls": st.integers(0, 1000),
    "poll_interval_s": st.none() | st.floats(0.001, 3600.0),
    "next_attempt_at": st.none()
    | st.integers(-86_400_000_000, 86_400_000_000).map(
        lambda us: START + timedelta(microseconds=us)
    ),
    "maybe_created": st.booleans(),
    "validation_error": st.none() | TEXT,
    "last_error": st.none() | TEXT,
}


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    """The shared migrated database (tests/integration/conftest.py) with TASKS tasks."""
    ids = TaskRepository(engine).create_many(
        [Submission(provider="sandbox", payload={"n": 1}) for _ in range(TASKS)]
    )
    assert ids == list(range(1, TASKS + 1))
    with engine.begin() as conn:  # odd tasks claimed: the guard and the SET of claimed_by
        conn.execute(update(tasks).where(tasks.c.id % 2 == 1).values(claimed_by=CLAIM))
    return engine


def _rows(conn: Connection) -> list[tuple[Any, ...]]:
    """Every row of both tables as the driver returns it: what was stored, not what
    SQLAlchemy's result types would make of it (they read a timestamp stored in another
    format back as the same datetime)."""
    table = conn.exec_driver_sql("SELECT * FROM tasks ORDER BY id").all()
    history = conn.exec_driver_sql(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM task_events ORDER BY id"
    ).all()
    return [tuple(r) for r in [*table, *history]]


def batches() -> st.SearchStrategy[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    """A shape (the fields an outcome sets) and outcomes of that shape, one per task."""
    return st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=5).flatmap(
        lambda names: st.tuples(
            st.just(tuple(sorted(names))),
            st.lists(
                st.fixed_dictionaries(
                    {
                        "task": st.integers(1, TASKS),
                        "holds": st.booleans(),
                        "claim": st.sampled_from([None, CLAIM]),
                        "fields": st.fixed_dictionaries({n: FIELDS[n] for n in names}),
                    }
                ),
                min_size=1,
                max_size=TASKS,
                unique_by=lambda o: o["task"],
            ),
        )
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(drawn=batches(), shared=st.booleans())
def test_execute_many_writes_what_execute_writes(
    seeded: Engine, drawn: tuple[tuple[str, ...], list[dict[str, Any]]], shared: bool
) -> None:
    """The same rows through ``Connection.execute`` and through ``execute_many``, each in a
    transaction rolled back afterwards, leave the same tables and the same row count;
    guards that fail (a status the task does not have) change nothing either way.
    ``shared``: every row's timestamp is one object, as the writer's batch ``now`` is
    (``execute_many`` converts a value repeated from the row before once)."""
    shape, batch = drawn
    stamps = [START if shared else START + timedelta(seconds=i) for i in range(len(batch))]
    rows = [
        {
            **{f"v_{name}": value for name, value in o["fields"].items()},
            "w_id": o["task"],
            "w_status": "Not Started" if o["holds"] else "Completed",
            "w_claim": o["claim"],
            "v_status": "In Progress",
            "v_phase": "polling",
            "v_updated_at": stamps[i],
        }
        for i, o in enumerate(batch)
    ]
    history = [
        {
            "task_id": o["task"],
            "at": stamps[i],
            "event": "submitted",
            "from_status": "Not Started",
            "to_status": None if i % 2 else "In Progress",
            "detail": o["fields"].get("last_error"),
        }
        for i, o in enumerate(batch)
    ]
    seen: dict[str, tuple[int, list[tuple[Any, ...]]]] = {}
    for way in ("execute", "execute_many"):
        with seeded.connect() as conn, conn.begin() as transaction:
            conn.execute(delete(events))
            if way == "execute":
                count = conn.execute(_outcome_update(shape), rows).rowcount
                conn.execute(insert(events), history)
            else:
                count = execute_many(conn, _outcome_update(shape), rows)
                execute_many(conn, _INSERT_EVENTS, history, columns=EVENT_COLUMNS)
            seen[way] = (count, _rows(conn))
            transaction.rollback()
    assert seen["execute_many"] == seen["execute"]
    assert seen["execute"][0] == sum(
        1 for o in batch if o["holds"] and o["claim"] == (CLAIM if o["task"] % 2 else None)
    )


def _sent(engine: Engine, run: Any) -> list[tuple[str, bool]]:
    """The statements ``run(conn)`` hands the driver (and whether as an executemany), in a
    transaction rolled back afterwards."""
    sent: list[tuple[str, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        sent.append((statement, many))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.connect() as conn, conn.begin() as transaction:
            run(conn)
            transaction.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return sent


def test_execute_many_sends_the_statement_execute_sends(engine: Engine) -> None:
    """Not only the rows stored but the statement: an INSERT compiled for one row asks
    PostgreSQL for the new id (``RETURNING task_events.id``), which an executemany of
    events does not want (SQLAlchemy compiles it for many rows)."""
    history = [
        {"task_id": t, "at": START, "event": "e", "from_status": None, "to_status": None}
        | {"detail": "d"}
        for t in (1, 2)
    ]
    rows = [
        {"w_id": t, "w_status": "Not Started", "w_claim": None, "v_status": "In Progress"}
        | {"v_phase": "polling", "v_updated_at": START, "v_attempts": 1}
        for t in (1, 2)
    ]
    by_execute = _sent(
        engine,
        lambda conn: (
            conn.execute(_outcome_update(("attempts",)), rows),
            conn.execute(insert(events), history),
        ),
    )
    by_execute_many = _sent(
        engine,
        lambda conn: (
            execute_many(conn, _outcome_update(("attempts",)), rows),
            execute_many(conn, _INSERT_EVENTS, history, columns=EVENT_COLUMNS),
        ),
    )
    assert [s for s in by_execute_many if not s[0].startswith("BEGIN")] == [
        s for s in by_execute if not s[0].startswith("BEGIN")
    ]


def test_execute_many_refuses_a_statement_with_python_side_defaults(engine: Engine) -> None:
    """A column default computed in Python (``default=``, ``onupdate=``) is filled in by
    SQLAlchemy per row; execute_many does not compute it and must not write NULL instead."""
    table = Table(
        "r36_defaults",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("n", Integer, default=7, onupdate=8),
    )
    table.create(engine)
    for statement, columns in (
        (insert(table), ("id",)),
        (update(table).values(id=bindparam("v")), None),
    ):
        with (
            engine.connect() as conn,
            conn.begin(),
            pytest.raises(errors.InvalidValue, match="default"),
        ):
            execute_many(conn, statement, [{"id": 1, "v": 1}], columns=columns)


def test_execute_many_names_parameters_as_the_statement_does(engine: Engine) -> None:
    """A bind name the dialect escapes in the SQL (a column named with a space) is sent
    under its escaped name, as Connection.execute sends it."""
    table = Table(
        "r36_escaped", MetaData(), Column("id", Integer, primary_key=True), Column("x y", Integer)
    )
    table.create(engine)
    statement = insert(table)
    with engine.connect() as conn, conn.begin():
        execute_many(
            conn, statement, [{"id": 1, "x y": 2}, {"id": 2, "x y": 3}], columns=("id", "x y")
        )
        assert conn.execute(select(table).order_by(table.c.id)).all() == [(1, 2), (2, 3)]
