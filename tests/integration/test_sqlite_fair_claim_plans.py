"""The fair claim on SQLite as Sluice runs it (never ANALYZEd) and with statistics: which
index each statement uses, and that ``+column`` (NoIndexOnSqlite) changes no result."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, event, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sluice.clock import FakeClock
from sluice.domain import Phase, Submission
from sluice.store import db
from sluice.store.queue import WorkQueue, due_now
from sluice.store.repository import TaskRepository, tasks
from sluice.store.rows import NoIndexOnSqlite
from sluice.store.tables import ACTIVE_PHASES

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


POLLED = 1_000_000
"""The first id of the tracked tasks (polled) that :func:`_load` adds."""


def _load(
    engine: Engine,
    keys: int,
    per_key: int,
    polls: tuple[int, int] = (0, 0),
    children: bool = False,
) -> FakeClock:
    """``per_key`` due roots in each of ``keys`` fairness keys, and ``polls``: (due, not
    due for an hour) tracked tasks in each (objects in flight, polled); ``children``: each
    key's polls are children of one of its trees, whose parent is Completed."""
    db.ensure_schema(engine)
    clock = FakeClock(START)
    repo = TaskRepository(engine, clock)
    due, later = polls
    for n in range(keys):
        first = POLLED + n * (due + later + 1)
        parent = first + due + later
        repo.create_many(
            [
                Submission(provider="sandbox", id=first + i, tenant=f"t{n}")
                for i in range(due + later + 1)
            ]
        )
        with engine.begin() as conn:
            conn.execute(
                update(tasks)
                .where(tasks.c.id >= first + due, tasks.c.id < parent)
                .values(next_attempt_at=START + timedelta(hours=1))
            )
            conn.execute(
                update(tasks).where(tasks.c.id == parent).values(status="Completed", phase="done")
            )
            if children:
                conn.execute(
                    update(tasks)
                    .where(tasks.c.id >= first, tasks.c.id < parent)
                    .values(parent_id=parent)
                )
    for n in range(keys):
        repo.create_many(
            [
                Submission(provider="sandbox", kind="campaign", tenant=f"t{n}")
                for _ in range(per_key)
            ]
        )
    clock.advance(1)
    return clock


def _plans(
    engine: Engine,
    keys: int,
    per_key: int,
    limit: int,
    analyze: bool,
    polls: tuple[int, int] = (0, 0),
) -> list[Any]:
    """(statement, plan lines) of every SELECT/UPDATE of one fair claim of ``limit``."""
    clock = _load(engine, keys, per_key, polls)
    if analyze:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        statements.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    claimed = WorkQueue(engine).claim_fair(clock.now(), limit, "w", 60.0, "sandbox")
    event.remove(engine, "before_cursor_execute", record)
    assert len(claimed) == limit
    out = []
    with engine.connect() as conn:
        for statement, params in statements:
            if (
                statement.startswith("SELECT") and "FROM tasks" in statement
            ) or statement.startswith("UPDATE tasks"):
                plan = [
                    r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                ]
                out.append((statement, plan))
    return out


@pytest.mark.parametrize("keys", [1, 2])
def test_a_fair_claim_on_sqlite_reads_each_key_along_the_fair_index(
    tmp_path: Path, keys: int
) -> None:
    """On SQLite as Sluice runs it (never ANALYZEd: no sqlite_stat1), each key's read of a
    fair claim (``has_due``, the one key's claim, the candidates, the locked re-read) walks
    ix_tasks_fair_order in claim order and stops, and the claim's UPDATE finds its tasks by
    id. Without statistics SQLite chose ix_tasks_claim or ix_tasks_due (every due task of
    the provider) and a temporary B-tree to sort them, and the UPDATE walked ix_tasks_due
    over every active task: a claim of 50 took 60 times the VM steps with 20,000 due roots
    as with 200, where PostgreSQL reads the same 50 entries (test_query_plans)."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    try:
        plans = _plans(engine, keys, 300, 50, analyze=False)
    finally:
        engine.dispose()
    reads = [(s, "\n".join(p)) for s, p in plans if s.startswith("SELECT") and "ORDER BY" in s]
    claims = [(s, "\n".join(p)) for s, p in plans if s.startswith("UPDATE tasks")]
    assert reads, plans
    assert claims, plans
    for statement, plan in reads:
        if "tasks.id IN" in statement:  # the candidates re-read: a few ids, sorted
            assert "SEARCH tasks USING INTEGER PRIMARY KEY" in plan, (statement, plan)
        else:
            assert _stream_index(statement) in plan, (statement, plan)
            assert "USE TEMP B-TREE FOR ORDER BY" not in plan, (statement, plan)
    for statement, plan in claims:
        assert "SEARCH tasks USING INTEGER PRIMARY KEY" in plan, (statement, plan)


POLL_READ = "(provider=? AND fairness_key=? AND next_attempt_at<?)"
"""How SQLite shows a read of a key's poll stream that ends at the polls not due yet."""


def _stream_index(statement: str) -> str:
    """The index a read of one of a key's streams must walk: the fair order for the ready
    stream, the polls' for the other."""
    return "ix_tasks_fair_order" if "= 'ready'" in statement else "ix_tasks_due_polls"


def _stream_reads(plans: list[Any]) -> list[tuple[str, str]]:
    """The reads of a fair claim that walk a key's streams in order (not the ids' re-read)."""
    return [
        (s, "\n".join(p))
        for s, p in plans
        if s.startswith("SELECT") and "ORDER BY" in s and "tasks.id IN" not in s
    ]


@pytest.mark.parametrize("analyze", [False, True], ids=["no_stat1", "analyzed"])
@pytest.mark.parametrize("keys", [1, 2])
def test_each_stream_of_a_key_is_read_along_its_own_index_on_sqlite(
    tmp_path: Path, keys: int, analyze: bool
) -> None:
    """With polls due and many more in flight not due yet, every read of a fair claim walks
    its stream's index in order with no sort: the polls along ix_tasks_due_polls with the
    due time as the range that ends the read (no walk past the polls not due), the rest
    along ix_tasks_fair_order."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    try:
        plans = _plans(engine, keys, 300, 50, analyze, polls=(10, 2000))
    finally:
        engine.dispose()
    reads = _stream_reads(plans)
    assert any("ix_tasks_due_polls" in plan for _, plan in reads), reads
    for statement, plan in reads:
        if "UNION ALL" in statement:  # the candidates: each key's streams, each in order
            assert plan.count(POLL_READ) == keys, plan
            assert plan.count("ix_tasks_fair_order (provider=? AND fairness_key=?)") == keys
        elif _stream_index(statement) == "ix_tasks_due_polls":
            assert f"ix_tasks_due_polls {POLL_READ}" in plan, (statement, plan)
        else:
            assert "ix_tasks_fair_order (provider=? AND fairness_key=?)" in plan, plan
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, (statement, plan)


def _claim_steps(path: Path, keys: int, later: int, children: bool = False) -> int:
    """The SQLite VM steps (in thousands) of one fair claim of 50 over ``keys`` keys, each
    with 300 due roots, 10 due polls and ``later`` polls in flight not due yet (children of
    a tree: ``children``)."""
    engine = db.make_engine(f"sqlite:///{path}")
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    def watch(conn: Any, *rest: Any) -> None:
        conn.connection.dbapi_connection.set_progress_handler(count, 1000)

    try:
        clock = _load(engine, keys, 300, (10, later), children)
        event.listen(engine, "before_cursor_execute", watch)
        assert len(WorkQueue(engine).claim_fair(clock.now(), 50, "w", 60.0, "sandbox")) == 50
    finally:
        engine.dispose()
    return steps[0]


@pytest.mark.parametrize("children", [False, True], ids=["roots", "children"])
@pytest.mark.parametrize("keys", [1, 2])
def test_polls_in_flight_not_due_cost_a_fair_claim_nothing_on_sqlite(
    tmp_path: Path, keys: int, children: bool
) -> None:
    """A claim does the same work beside 100 or 5,000 polls in flight not due yet, of roots
    or of a tree's children: no read walks past them (the poll stream's reads stop at the
    first poll not due). Counted in SQLite VM steps, not time. Children sort before every
    root in the fair order (trees first): while it held polls too, each read of a key's
    roots walked past every child in flight."""
    few = _claim_steps(tmp_path / "few.db", keys, 100, children)
    many = _claim_steps(tmp_path / "many.db", keys, 5000, children)
    assert many <= few * 1.2 + 5, (few, many)


@pytest.mark.parametrize("analyze", [False, True], ids=["no_stat1", "analyzed"])
@pytest.mark.parametrize("keys", [2, 5])
def test_a_fair_claim_of_several_keys_locks_its_candidates_by_id_on_sqlite(
    tmp_path: Path, keys: int, analyze: bool
) -> None:
    """The locked re-read of a fair claim's candidates (``_locked_due``: ``tasks.id IN
    (...)`` and due) must find its rows by id. Without sqlite_stat1, once a key has more
    than about 30 candidates (8 slots at 4 per slot) SQLite walks ix_tasks_due over
    ``phase IN (...)`` (every active task, due or not: the due time is ``+``'d now) and
    sorts."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    try:
        plans = _plans(engine, keys, 300, 50, analyze)
    finally:
        engine.dispose()
    locked = [(s, p) for s, p in plans if s.startswith("SELECT") and "tasks.id IN" in s]
    assert locked, plans
    for statement, plan in locked:
        assert any(line.startswith("SEARCH tasks USING INTEGER PRIMARY KEY") for line in plan), (
            statement,
            plan,
        )
        assert not any("ix_tasks_due" in line for line in plan), plan


@pytest.mark.parametrize("analyze", [False, True], ids=["no_stat1", "analyzed"])
def test_a_fair_claim_of_one_key_walks_the_fair_index_with_or_without_statistics(
    tmp_path: Path, analyze: bool
) -> None:
    """One key: has_due and the locked read walk ix_tasks_fair_order with no sort; the
    UPDATE goes by id; with sqlite_stat1 (a user ran ANALYZE) as without."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    try:
        plans = _plans(engine, 1, 300, 50, analyze)
    finally:
        engine.dispose()
    for statement, plan in plans:
        if statement.startswith("UPDATE"):
            assert plan == ["SEARCH tasks USING INTEGER PRIMARY KEY (rowid=?)"], plan
        elif "ORDER BY" in statement:
            index = _stream_index(statement)
            assert any(f"{index} (provider=? AND fairness_key=?" in p for p in plan), plan
            assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan


@pytest.fixture(scope="module")
def plain_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path_factory.mktemp('plus') / 'plus.db'}")
    db.ensure_schema(engine)
    yield engine
    engine.dispose()


moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            st.none() | moments, st.sampled_from([p.value for p in Phase]), st.none() | moments
        ),
        max_size=15,
    ),
    now=moments,
)
def test_the_unary_plus_changes_no_comparison_on_sqlite(
    plain_sqlite: Engine, rows: list[tuple[datetime | None, str, datetime | None]], now: datetime
) -> None:
    """``+next_attempt_at <= :now`` and ``+phase IN (...)`` select exactly the rows the
    plain comparisons do, and what a Python model says (timestamps stored as text by
    UTCDateTime; the column's NUMERIC affinity is dropped by the plus)."""
    with plain_sqlite.begin() as conn:
        conn.execute(delete(tasks))
        for n, (due_at, phase, claimed_until) in enumerate(rows, start=1):
            conn.execute(
                insert(tasks).values(
                    id=n,
                    provider="p",
                    status="Not Started",
                    phase=phase,
                    next_attempt_at=due_at,
                    claimed_until=claimed_until,
                    created_at=START,
                    updated_at=START,
                )
            )
        plain = set(conn.execute(select(tasks.c.id).where(due_now(now))).scalars())
        plus = set(conn.execute(select(tasks.c.id).where(due_now(now, fair_order=True))).scalars())
        phase_plain = set(
            conn.execute(select(tasks.c.id).where(tasks.c.phase.in_(ACTIVE_PHASES))).scalars()
        )
        phase_plus = set(
            conn.execute(
                select(tasks.c.id).where(NoIndexOnSqlite(tasks.c.phase).in_(ACTIVE_PHASES))
            ).scalars()
        )
    model = {
        n
        for n, (due_at, phase, claimed_until) in enumerate(rows, start=1)
        if phase in ACTIVE_PHASES
        and due_at is not None
        and due_at <= now
        and (claimed_until is None or claimed_until < now)
    }
    assert plain == plus == model
    assert (
        phase_plain
        == phase_plus
        == {n for n, r in enumerate(rows, start=1) if r[1] in ACTIVE_PHASES}
    )


def test_no_index_on_sqlite_compiles_and_caches_per_column() -> None:
    """``+column`` on SQLite only; the same SQL as the bare column on PostgreSQL (bind names
    aside); two wrapped columns never share a cache key, nor a wrapped and a bare one."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    wrapped = select(tasks.c.id).where(NoIndexOnSqlite(tasks.c.next_attempt_at) <= now)
    other = select(tasks.c.id).where(NoIndexOnSqlite(tasks.c.claimed_until) <= now)
    bare = select(tasks.c.id).where(tasks.c.next_attempt_at <= now)
    assert "+tasks.next_attempt_at <=" in str(wrapped.compile(dialect=sqlite.dialect()))
    pg = str(wrapped.compile(dialect=postgresql.dialect()))
    assert "+" not in pg
    assert "tasks.next_attempt_at <=" in pg
    found = [s._generate_cache_key() for s in (wrapped, other, bare)]
    assert len({k.key for k in found if k is not None}) == 3
    again = select(tasks.c.id).where(NoIndexOnSqlite(tasks.c.next_attempt_at) <= now)
    assert wrapped._generate_cache_key() == again._generate_cache_key()
