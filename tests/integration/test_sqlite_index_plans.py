"""On SQLite as Sluice runs it (never ANALYZEd), the partial indexes of 0017 still serve
their reads: ``ix_tasks_parent_id`` holds only tasks with a parent and
``ix_tasks_external_id`` only answered creates, and a comparison with a value implies
``IS NOT NULL`` (sqlite.org/partialindex.html, "Queries Using Partial Indexes")."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from sluice.clock import FakeClock
from sluice.domain import Submission
from sluice.store import db
from sluice.store.chains import descendant_ids, release_children
from sluice.store.repository import TaskRepository
from sluice.store.retention import prune_batch
from tests.integration.captured_sql import Captured

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TREES = 300


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """``TREES`` campaigns, each with two ad groups waiting for it."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock(START))
    for _ in range(TREES):
        repo.create_many(
            [
                Submission(provider="sandbox", kind="campaign"),
                Submission(provider="sandbox", kind="ad_group", parent_index=0),
                Submission(provider="sandbox", kind="ad_group", parent_index=0),
            ]
        )
    yield engine
    engine.dispose()


def _query_plan(engine: Engine, statement: str, params: Any) -> str:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
        return "\n".join(str(row[-1]) for row in rows)


def test_a_parents_children_are_read_along_the_parent_index(engine: Engine) -> None:
    """The console's tree, the API's list by parent, a tree's descendants (cancel, prune)
    and the children's release when their parent completes."""
    repo = TaskRepository(engine, FakeClock(START))
    parent = 3 * (TREES // 2) + 1
    with Captured(engine) as captured:
        assert [t.id for t in repo.children(parent)] == [parent + 1, parent + 2]
        listed = repo.list_tasks(limit=10, parent_id=parent).items
        assert [t.id for t in listed] == [parent + 1, parent + 2]
        with engine.connect() as conn:
            assert descendant_ids(conn, [parent]) == [parent + 1, parent + 2]
            # Several parents at once (a writer's batch): without statistics SQLite read
            # every Not Started task through ix_tasks_status for an IN of two or more.
            release_children(conn, [parent, parent + 3, parent + 6], START)
            conn.rollback()
    statements = captured.statements
    reads = [(s, p) for s, p in statements if "tasks.parent_id =" in s or "parent_id IN" in s]
    assert len(reads) == 5, statements
    for statement, params in reads:
        plan = _query_plan(engine, statement, params)
        assert "ix_tasks_parent_id" in plan, (statement, plan)


def test_the_parent_key_check_of_a_delete_opens_the_parent_index(engine: Engine) -> None:
    """SQLite checks ``ON DELETE RESTRICT`` by looking the deleted id up among the
    children's ``parent_id``: the delete's program opens the partial index for it."""
    with engine.connect() as conn:
        (root_page,) = conn.exec_driver_sql(
            "SELECT rootpage FROM sqlite_master WHERE name = 'ix_tasks_parent_id'"
        ).one()
        program = conn.exec_driver_sql("EXPLAIN DELETE FROM tasks WHERE id = 1").all()
    opened = {row[3] for row in program if row[1] == "OpenRead"}
    assert root_page in opened, program


def test_a_task_is_found_by_its_providers_id_through_the_partial_index(engine: Engine) -> None:
    plan = _query_plan(
        engine,
        "SELECT id FROM tasks WHERE provider = ? AND external_id = ?",
        ("sandbox", "cmp-42"),
    )
    assert "ix_tasks_external_id" in plan, plan


def test_the_prunes_read_of_roots_walks_the_ids_in_order(engine: Engine) -> None:
    """``sluice db prune`` reads roots after a cursor in id order, a batch at a time. Over
    the full ``ix_tasks_parent_id`` SQLite walked the roots' NULL entries in id order;
    once that index held no NULLs (0017) it took ``ix_tasks_due`` (every task in phase
    ``done``) and sorted them all for each batch: a million pruned tasks read a million
    entries a batch. The read walks the primary key from the cursor and stops."""
    with Captured(engine) as captured, engine.connect() as conn:
        prune_batch(conn, START - timedelta(days=30), START, after_id=10)
        conn.rollback()
    (root_read, params), *_ = [
        (s, p) for s, p in captured.touching_tasks("SELECT") if "parent_id IS NULL" in s
    ]
    plan = _query_plan(engine, root_read, params)
    assert "SEARCH tasks USING INTEGER PRIMARY KEY (rowid>?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
