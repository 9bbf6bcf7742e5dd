"""The engine's and the API's hot queries use indexes on a table large enough for the
planner to prefer a full scan (or a full sort) without them.

50,000 tasks are loaded with one ``INSERT ... SELECT`` and ANALYZEd. Each query is the
real one: the store's method runs, its SQL and parameters are captured as they reach the
driver, and PostgreSQL EXPLAINs exactly that.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine

from sluice.domain import Outcome, Phase, TaskStatus
from sluice.store import db
from sluice.store.chains import descendant_ids, release_children
from sluice.store.filters import TaskFilter
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository
from sluice.store.retention import prune_batch
from sluice.store.rows import encode_cursor
from tests.conftest import PG_ADMIN_URL, require_service
from tests.integration.captured_sql import Captured

pytestmark = pytest.mark.postgres

ROWS = 50_000
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CREATED = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)

# 2% final (no next_attempt_at), 1% of those Error; 10% for a second provider; 10% ad groups
# whose parent is an earlier campaign; the rest Not Started and due. Created one a second in
# id order from CREATED (as ids and creation times go together in a real table).
LOAD = f"""
INSERT INTO tasks (tenant, provider, fairness_key, kind, payload, parent_id, status, phase,
                   track_only, attempts, polls, next_attempt_at, client_ref, maybe_created,
                   created_at, updated_at)
SELECT CASE WHEN mod(g, 7) = 0 THEN 'acme' ELSE 'default' END,
       CASE WHEN mod(g, 10) = 0 THEN 'other' ELSE 'sandbox' END,
       CASE WHEN mod(g, 30) = 0 THEN 'adv-2' ELSE 'default' END,
       CASE WHEN mod(g, 10) = 5 THEN 'ad_group' ELSE 'campaign' END,
       '{{"name": "x"}}'::jsonb,
       CASE WHEN mod(g, 10) = 5 THEN g - 1 END,
       CASE WHEN mod(g, 100) = 0 THEN 'Error' WHEN mod(g, 50) = 0 THEN 'Completed'
            ELSE 'Not Started' END,
       CASE WHEN mod(g, 50) = 0 THEN 'done' ELSE 'ready' END,
       false, 0, 0,
       CASE WHEN mod(g, 50) <> 0
            THEN TIMESTAMPTZ '2026-06-01 11:00:00+00' + g * INTERVAL '1 ms' END,
       'sl-plan-' || g, false, TIMESTAMPTZ '2026-06-01 10:00:00+00' + g * INTERVAL '1 s',
       TIMESTAMPTZ '2026-06-01 10:00:00+00'
FROM generate_series(1, {ROWS}) AS g
"""


@pytest.fixture(scope="module")
def loaded(postgres_url_module: str) -> Iterator[Engine]:
    engine = db.make_engine(postgres_url_module)
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(LOAD)
        conn.exec_driver_sql("ANALYZE tasks")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def postgres_url_module() -> Iterator[str]:
    """One fresh database for the module (the load takes a few seconds), dropped after."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"sluice_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def plan(engine: Engine, statement: str, params: Any) -> str:
    with engine.connect() as conn:
        lines = conn.exec_driver_sql("EXPLAIN " + statement, params).scalars().all()
        conn.rollback()
    return "\n".join(lines)


def assert_indexed(text: str) -> None:
    assert "Seq Scan on tasks" not in text, text
    assert "Bitmap Heap Scan on tasks" not in text or "Sort" not in text, text


def test_claim_reads_the_due_index_in_order_without_sorting(loaded: Engine) -> None:
    queue = WorkQueue(loaded)
    with Captured(loaded) as captured:
        claimed = queue.claim_due(NOW, 50, "plan-test", 60.0, providers=["sandbox"])
    assert len(claimed) == 50
    (select_sql, params), *_ = captured.touching_tasks("SELECT")
    text = plan(loaded, select_sql, params)
    assert "ix_tasks_claim" in text, text
    assert "Sort" not in text, text  # reads 50 rows in due order and stops
    for update_sql, update_params in captured.touching_tasks("UPDATE"):
        assert_indexed(plan(loaded, update_sql, update_params))


def test_outcomes_and_releases_use_indexes(loaded: Engine) -> None:
    queue = WorkQueue(loaded)
    claimed = queue.claim_due(NOW, 5, "plan-test", 60.0, providers=["other"])
    outcomes = [
        Outcome(
            task_id=t.id,
            from_status=t.status,
            to_status=TaskStatus.COMPLETED,
            phase=Phase.DONE,
            fields={"next_attempt_at": None},
            claim=t.claimed_by,
            release_children=True,
        )
        for t in claimed
    ]
    with Captured(loaded) as captured:
        assert queue.apply(outcomes, NOW) == len(outcomes)
        queue.release(queue.claim_due(NOW, 5, "plan-test", 60.0, providers=["other"]))
    updates = captured.touching_tasks("UPDATE")
    assert len(updates) >= 3  # the outcome, the children's release, the release
    for statement, params in updates:
        assert_indexed(plan(loaded, statement, params))


def test_the_reconciler_reads_only_claimed_rows(loaded: Engine) -> None:
    queue = WorkQueue(loaded)
    with Captured(loaded) as captured:
        queue.recover_stuck(NOW)
    updates = captured.touching_tasks("UPDATE")
    assert len(updates) == 2  # lapsed submissions, other lapsed claims
    for statement, params in updates:
        assert_indexed(plan(loaded, statement, params))


@pytest.mark.parametrize(
    "filters",
    [
        {"status": TaskStatus.ERROR},
        {"status": TaskStatus.COMPLETED, "provider": "other"},
        {"kind": "ad_group", "tenant": "acme"},
        {"kind": "ad_set"},  # matches nothing: a scan in id order would read every row
        {"parent_id": 4},
        {"status": TaskStatus.NOT_STARTED, "tenant": "default"},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_filtered_listings_use_indexes(loaded: Engine, filters: dict[str, Any]) -> None:
    repo = TaskRepository(loaded)
    with Captured(loaded) as captured:
        repo.list_tasks(limit=100, **filters)
    ((statement, params),) = captured.touching_tasks("SELECT")
    assert_indexed(plan(loaded, statement, params))


def created(seconds: int) -> datetime:
    """The creation time of the task with id ``seconds`` in the loaded table."""
    return CREATED + timedelta(seconds=seconds)


MIDDLE = {"created_from": created(20_000), "created_to": created(20_600)}
RECENT = {"created_from": created(49_000)}
EARLY = {"created_to": created(1_000)}


@pytest.mark.parametrize(
    "filters",
    [
        MIDDLE,
        RECENT,
        EARLY,
        {"created_from": created(60_000)},  # after every task: matches nothing
        {**MIDDLE, "cursor": encode_cursor(20_300)},
        {**MIDDLE, "status": TaskStatus.ERROR},
        {**MIDDLE, "provider": "other"},
        {**RECENT, "status": TaskStatus.COMPLETED, "provider": "other"},
        {**RECENT, "tenant": "acme"},
        {**EARLY, "status": TaskStatus.NOT_STARTED, "tenant": "default"},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_a_created_range_is_read_through_its_index(loaded: Engine, filters: dict[str, Any]) -> None:
    """A range of creation times (a few percent of the table: 600 to 1,000 of the 50,000
    tasks), alone or with other filters, through the API's list and the console's filter:
    ``ix_tasks_created_at`` reads the range, never the table. No index gives a range of
    creation times in id order, so its matches are sorted (a page is the first 100 of the
    range by id)."""
    repo = TaskRepository(loaded)
    console = {k: v for k, v in filters.items() if k not in ("cursor", "tenant")}
    with Captured(loaded) as captured:
        repo.list_tasks(limit=100, **filters)
        repo.find(TaskFilter(**console), tenant=filters.get("tenant"))
    selects = captured.touching_tasks("SELECT")
    assert len(selects) == 2
    for statement, params in selects:
        text = plan(loaded, statement, params)
        assert "Seq Scan on tasks" not in text, text
        assert "ix_tasks_created_at" in text, text


@pytest.mark.xfail(
    strict=True,
    reason="a range of more than a few percent of the table, alone, is read along pk_tasks "
    "with created_at as a Filter: PostgreSQL costs the walk as if the range's tasks were "
    "spread over every id, so its first page reads every task created before the range "
    "(45,000 rows here; the whole table less the range at any size). Fixing it needs an "
    "index or a query the planner cannot misjudge: not done without a migration plan",
)
def test_a_wide_recent_range_reads_only_the_range(loaded: Engine) -> None:
    """The last 10% of the tasks (``created_from`` only): the first page should read the
    range, not walk the ids before it."""
    repo = TaskRepository(loaded)
    with Captured(loaded) as captured:
        repo.list_tasks(limit=100, created_from=created(45_000))
    ((statement, params),) = captured.touching_tasks("SELECT")
    text = plan(loaded, "(ANALYZE, TIMING OFF) " + statement, params)
    removed = [int(line.split(":")[1]) for line in text.splitlines() if "Removed by Filter" in line]
    assert sum(removed) <= 5_000, text


@pytest.mark.parametrize("status", [TaskStatus.ERROR, TaskStatus.COMPLETED])
def test_a_tenants_tasks_in_one_status_are_read_in_id_order(
    loaded: Engine, status: TaskStatus
) -> None:
    """A tenant's (one row in seven here) tasks in a rare status, through the API's list
    and the console's filter: both filters lead the index and id follows, so a page reads
    its own rows in order: no other tenant's rows are fetched and dropped, and nothing is
    sorted (at a million tasks a tenant's failed tasks read 715 pages through
    ``ix_tasks_status`` for 100 rows)."""
    repo = TaskRepository(loaded)
    with Captured(loaded) as captured:
        repo.list_tasks(limit=100, cursor=encode_cursor(ROWS // 2), status=status, tenant="acme")
        repo.find(TaskFilter(status=status), tenant="acme")
    selects = captured.touching_tasks("SELECT")
    assert len(selects) == 2
    for statement, params in selects:
        text = plan(loaded, statement, params)
        assert "ix_tasks_tenant_status" in text, text
        assert "Filter:" not in text, text
        assert "Sort" not in text, text


@pytest.mark.parametrize("provider", ["sandbox", "other"])
def test_a_fair_claim_reads_each_key_in_order_and_stops_at_its_share(
    loaded: Engine, provider: str
) -> None:
    """The keys with work are found one seek each in each stream's index, and each key's
    read walks its stream's index in claim order and stops: no statement reads or sorts
    the provider's whole backlog. ``sandbox`` has one fairness key (read once, under the
    lock), ``other`` two (the candidates of each, then the share of each again under the
    lock)."""
    queue = WorkQueue(loaded)
    with Captured(loaded) as captured:
        claimed = queue.claim_fair(NOW, 50, "plan-test", 60.0, provider, {"adv-2": 2.0})
    assert len(claimed) == 50
    (ready_sql, ready_params), (polls_sql, polls_params) = captured.touching_tasks("WITH")
    for sql, params, index in (
        (ready_sql, ready_params, "ix_tasks_fair_order"),
        (polls_sql, polls_params, "ix_tasks_due_polls"),
    ):
        keys_plan = plan(loaded, sql, params)
        assert index in keys_plan, keys_plan
        assert_indexed(keys_plan)
    reads = [(s, p) for s, p in captured.touching_tasks("SELECT") if "tasks.fairness_key =" in s]
    assert reads, captured.statements
    for statement, params in reads:
        text = plan(loaded, statement, params)
        if "phase = 'ready'" in statement:
            assert "ix_tasks_fair_order" in text, text
        if "phase IN ('polling', 'uncertain')" in statement:  # a key's polls (none here)
            assert "ix_tasks_due_polls" in text, text
        assert "Sort" not in text.split("Limit")[-1], text  # read in order, stopped early
        assert_indexed(text)


IN_FLIGHT = 20_000
"""Polls in flight not due yet per key of the providers ``polled-K`` and ``treed-K``."""

# Beside the load: for provider polled-K (K = 1, 2), K keys, each with 300 due roots, 10
# due polls and IN_FLIGHT polls not due for an hour (objects in flight at the provider);
# treed-K the same, its polls the children of one Completed parent per key.
_POLLS = """
INSERT INTO tasks (tenant, provider, fairness_key, kind, payload, parent_id, status, phase,
                   track_only, attempts, polls, next_attempt_at, client_ref, maybe_created,
                   created_at, updated_at)
SELECT 'default', p || '-' || k, 'key-' || n, 'campaign', '{{"name": "x"}}'::jsonb,
       CASE WHEN p = 'treed' AND g > 300 THEN
           (SELECT id FROM tasks WHERE client_ref = 'sl-poll-treed-' || k || '-' || n || '-0')
       END,
       CASE WHEN g = 0 THEN 'Completed' WHEN g <= 300 THEN 'Not Started'
            ELSE 'In Progress' END,
       CASE WHEN g = 0 THEN 'done' WHEN g <= 300 THEN 'ready' ELSE 'polling' END,
       false, 0, 0,
       CASE WHEN g <= 310 THEN TIMESTAMPTZ '2026-06-01 11:00:00+00' + g * INTERVAL '1 ms'
            ELSE TIMESTAMPTZ '2026-06-01 13:00:00+00' + g * INTERVAL '1 ms' END,
       'sl-poll-' || p || '-' || k || '-' || n || '-' || g, false,
       TIMESTAMPTZ '2026-06-01 10:00:00+00', TIMESTAMPTZ '2026-06-01 10:00:00+00'
FROM unnest(ARRAY['polled', 'treed']) AS p, generate_series(1, 2) AS k,
     generate_series(1, 2) AS n, generate_series({first}, {last}) AS g
WHERE n <= k
"""
# Each key's parent first (g = 0), then its tasks, the children naming it.
POLLS = [
    _POLLS.format(first=0, last=0),
    _POLLS.format(first=1, last=310 + IN_FLIGHT),
]
POLLED = ("polled-1", "polled-2", "treed-1", "treed-2")


@pytest.fixture
def polled(loaded: Engine) -> Iterator[Engine]:
    """The load with :data:`POLLS` beside it, removed after the test."""
    with loaded.begin() as conn:
        for statement in POLLS:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("ANALYZE tasks")
    yield loaded
    with loaded.begin() as conn:
        for table in ("tasks", "fair_shares"):
            conn.execute(
                sa.text(f"DELETE FROM {table} WHERE provider IN :providers").bindparams(
                    sa.bindparam("providers", POLLED, expanding=True)
                )
            )
        conn.exec_driver_sql("ANALYZE tasks")


def walked(engine: Engine, statement: str, params: Any) -> tuple[str, int]:
    """The plan ``statement`` ran with (EXPLAIN ANALYZE, rolled back), and how many rows
    its scans read and dropped ("Rows Removed by Filter")."""
    with engine.connect() as conn:
        lines = (
            conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + statement, params
            )
            .scalars()
            .all()
        )
        conn.rollback()
    removed = sum(int(line.rsplit(":", 1)[1]) for line in lines if "Rows Removed by Filter" in line)
    return "\n".join(lines), removed


@pytest.mark.parametrize("provider", POLLED)
def test_a_fair_claim_reads_a_keys_polls_along_their_index_and_stops_at_those_due(
    polled: Engine, provider: str
) -> None:
    """A key's polls are read along ix_tasks_due_polls up to the first poll not due (the
    due time is in the index condition) and its creates along ix_tasks_fair_order, which
    holds only ready tasks: with 20,000 polls in flight per key not due yet, of roots or of
    a tree's children, no read of the claim (has_due, the one key's locked reads, the
    candidates, their locked re-read) walks past them. (Children sort before every root in
    the fair order: while it held polls too, each read of a key's roots read past every
    child in flight; the SQLite test counts that work, here an index condition on the due
    time skips those entries unreported.)"""
    queue = WorkQueue(polled)
    keys = int(provider[-1])
    with Captured(polled) as captured:
        claimed = queue.claim_fair(NOW, 50, "plan-test", 60.0, provider)
    assert len(claimed) == 50
    assert sum(t.phase is Phase.POLLING for t in claimed) == 10 * keys
    with polled.connect() as conn:
        fair_order = conn.exec_driver_sql(
            "SELECT pg_get_indexdef('ix_tasks_fair_order'::regclass)"
        ).scalar_one()
    assert fair_order.endswith("WHERE ((phase)::text = 'ready'::text)"), fair_order
    reads = [(s, p) for s, p in captured.touching_tasks("SELECT") if "ORDER BY" in s]
    assert any("'polling'" in s.split("ORDER BY")[0] for s, _ in reads), reads
    for statement, params in reads:
        text, removed = walked(polled, statement, params)
        assert removed < 200, text  # the 50 claimed meanwhile, not the polls in flight
        assert_indexed(text)
        if "tasks.id IN" in statement:  # the candidates' re-read: a seek by id each
            continue
        assert "Sort" not in text.split("Limit")[-1], text  # read in order, stopped early
        if "phase = 'ready'" in statement:
            assert "ix_tasks_fair_order" in text, text
        if "phase IN ('polling', 'uncertain')" in statement:
            assert "Index Scan using ix_tasks_due_polls" in text, text
            assert "next_attempt_at <=" in text.split("ix_tasks_due_polls")[1], text


def test_the_events_downgrade_finds_orphans_by_one_join_not_a_lookup_per_event(
    loaded: Engine,
) -> None:
    """Downgrading 0015 deletes the events whose task is gone before the foreign key comes
    back. ``task_id NOT IN (SELECT id FROM tasks)`` is planned as a subquery scanned again
    for every event once the task ids outgrow ``work_mem`` (EXPLAIN costed it at 10^10 for
    500,000 tasks and 1,000,000 events: hours); the delete must be an anti-join. Run in a
    transaction rolled back, so the module's database stays at head."""
    with loaded.connect() as conn:
        conn.begin()
        config = db.alembic_config(loaded)
        config.attributes["connection"] = conn
        with Captured(loaded) as captured:
            command.downgrade(config, "0014_fair_share_units")
        deletes = [
            (s, p) for s, p in captured.statements if s.lstrip().upper().startswith("DELETE")
        ]
        assert len(deletes) == 1, captured.statements
        ((statement, params),) = deletes
        conn.exec_driver_sql("SET LOCAL work_mem = '64kB'")
        text = "\n".join(conn.exec_driver_sql("EXPLAIN " + statement, params).scalars())
        conn.rollback()
    assert "SubPlan" not in text, text
    assert "Anti Join" in text, text


def test_a_parents_children_and_its_key_check_read_the_partial_parent_index(
    loaded: Engine,
) -> None:
    """``ix_tasks_parent_id`` holds only tasks with a parent (0017): a parent's children
    (the console's tree, a tree's descendants when it is cancelled or pruned) and the
    foreign key's check when a task is deleted (PostgreSQL's own ``$1 = parent_id`` query,
    planned once for any value) still read it, as a comparison with a value implies
    ``IS NOT NULL``."""
    repo = TaskRepository(loaded)
    with Captured(loaded) as captured:
        assert [t.id for t in repo.children(4)] == [5]
        with loaded.connect() as conn:
            release_children(conn, [4, 14], NOW)
            assert descendant_ids(conn, [4, 14]) == [5, 15]
            conn.rollback()
    reads = captured.touching_tasks("SELECT")
    assert len(reads) == 3  # the children, then two levels of descendants
    for statement, params in reads:
        text = plan(loaded, statement, params)
        assert "ix_tasks_parent_id" in text, text
    # No task here waits for its parent: the release reads the one-row waiting phase instead.
    ((statement, params),) = captured.touching_tasks("UPDATE")
    assert_indexed(plan(loaded, statement, params))
    with loaded.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(
            "PREPARE key_check (bigint) AS "
            "SELECT 1 FROM ONLY tasks x WHERE $1 OPERATOR(pg_catalog.=) parent_id "
            "FOR KEY SHARE OF x"
        )
        text = "\n".join(conn.exec_driver_sql("EXPLAIN EXECUTE key_check (4)").scalars())
        conn.rollback()
    assert "ix_tasks_parent_id" in text, text


def test_a_task_is_found_by_its_providers_id_through_the_partial_index(loaded: Engine) -> None:
    """``ix_tasks_external_id`` holds only answered creates (0017); a lookup of the task
    behind a provider's object (an operator's, by hand) still reads it."""
    text = plan(
        loaded,
        "SELECT id FROM tasks WHERE provider = %(provider)s AND external_id = %(external_id)s",
        {"provider": "sandbox", "external_id": "cmp-42"},
    )
    assert "ix_tasks_external_id" in text, text


def test_the_prunes_read_of_roots_uses_an_index(loaded: Engine) -> None:
    """``sluice db prune``'s read of the next roots after its cursor (the status and the
    phase are ``+column`` on SQLite only: PostgreSQL plans the same SQL as before). Here
    2% of the tasks are final, so it reads them through the phase and status indexes and
    sorts the few it finds. With most of the table final it walks the primary key
    instead (seen by hand: 200,000 tasks, 90% of them final)."""
    with Captured(loaded) as captured, loaded.connect() as conn:
        prune_batch(conn, NOW, NOW, after_id=10)
        conn.rollback()
    (statement, params), *_ = [
        (s, p) for s, p in captured.touching_tasks("SELECT") if "parent_id IS NULL" in s
    ]
    text = plan(loaded, statement, params)
    assert "Seq Scan on tasks" not in text, text
    assert "+" not in statement.split("WHERE")[1], statement
