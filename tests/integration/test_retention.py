"""Pruning final task families (sluice.store.retention) on SQLite and the real PostgreSQL.

The invariant (a Hypothesis property over random forests of tasks, in small batches):
pruning never deletes a task that is not final, recent or claimed, nor any ancestor of
one, never leaves a child without its parent, and deletes every family that is entirely
prunable, events included.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, insert, select

from sluice.clock import FakeClock
from sluice.domain import LOCAL_ACTOR, Phase, TaskStatus
from sluice.engine.retention import Pruner
from sluice.store import db
from sluice.store.audit import audit
from sluice.store.retention import prune
from sluice.store.rows import event_row, events, tasks
from tests.conftest import PG_ADMIN_URL, require_service

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=1)

# (status, phase) of final and unfinished tasks.
FINAL = [
    (TaskStatus.COMPLETED, Phase.DONE),
    (TaskStatus.ERROR, Phase.DONE),
    (TaskStatus.CANCELLED, Phase.DONE),
]
UNFINISHED = [
    (TaskStatus.NOT_STARTED, Phase.READY),
    (TaskStatus.NOT_STARTED, Phase.WAITING_PARENT),
    (TaskStatus.IN_PROGRESS, Phase.POLLING),
    (TaskStatus.NOT_STARTED, Phase.UNCERTAIN),
]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One database of each backend for the module, emptied by each test."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("retention") / "sluice.db"
        made = db.make_engine(f"sqlite:///{path}")
        db.upgrade(made)
        yield made
        made.dispose()
        return
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"sluice_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    made = db.make_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    db.upgrade(made)
    try:
        yield made
    finally:
        made.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def empty(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(audit.delete())
        conn.execute(events.delete())
        # Children first (parent_id is ON DELETE RESTRICT).
        while conn.execute(select(func.count()).select_from(tasks)).scalar_one():
            conn.execute(
                tasks.delete().where(
                    tasks.c.id.not_in(
                        select(tasks.c.parent_id).where(tasks.c.parent_id.is_not(None))
                    )
                )
            )


# One task: its parent (an index into the tasks before it, or None), final or not, old or
# recent, claimed or not.
TaskSpec = tuple[int | None, bool, bool, bool]


@st.composite
def forests(draw: st.DrawFn) -> list[TaskSpec]:
    count = draw(st.integers(min_value=1, max_value=25))
    specs: list[TaskSpec] = []
    for index in range(count):
        parent = draw(st.none() | st.integers(min_value=0, max_value=index - 1)) if index else None
        final = draw(st.booleans() | st.just(True))  # mostly final: families get pruned
        old = draw(st.booleans() | st.just(True))
        claimed = draw(st.integers(min_value=0, max_value=9)) == 0
        specs.append((parent, final, old, claimed))
    return specs


def load(engine: Engine, specs: list[TaskSpec]) -> list[int]:
    """Insert the forest (each task with two events); returns the ids in spec order."""
    ids: list[int] = []
    with engine.begin() as conn:
        for index, (parent, final, old, claimed) in enumerate(specs):
            status, phase = FINAL[index % 3] if final else UNFINISHED[index % 4]
            when = OLD if old else RECENT
            row: dict[str, Any] = {
                "provider": "sandbox",
                "kind": "campaign",
                "payload": {"n": index},
                "parent_id": None if parent is None else ids[parent],
                "status": status.value,
                "phase": phase.value,
                "track_only": False,
                "attempts": 0,
                "polls": 0,
                "next_attempt_at": None if final else when,
                "client_ref": f"sl-ret-{uuid.uuid4().hex}",
                "claimed_by": "w/1" if claimed else None,
                "claimed_until": NOW + timedelta(seconds=60) if claimed else None,
                "created_at": when,
                "updated_at": when,
            }
            task_id = conn.execute(insert(tasks).values(**row).returning(tasks.c.id)).scalar_one()
            ids.append(task_id)
            conn.execute(
                insert(events),
                [
                    event_row(task_id, when, "created", None, status, None),
                    event_row(task_id, when, "status", None, status, None),
                ],
            )
    return ids


def prunable_families(specs: list[TaskSpec]) -> set[int]:
    """Spec indexes that pruning must delete: members of families entirely prunable."""

    def root(index: int) -> int:
        parent = specs[index][0]
        return index if parent is None else root(parent)

    spoiled = {
        root(i)
        for i, (_, final, old, claimed) in enumerate(specs)
        if not (final and old and not claimed)
    }
    return {i for i in range(len(specs)) if root(i) not in spoiled}


def surviving(engine: Engine) -> tuple[set[int], int]:
    with engine.connect() as conn:
        ids = set(conn.execute(select(tasks.c.id)).scalars())
        event_count = conn.execute(select(func.count()).select_from(events)).scalar_one()
    return ids, int(event_count)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=forests(), batch=st.integers(min_value=1, max_value=8))
def test_prune_deletes_exactly_the_whole_prunable_families(
    engine: Engine, specs: list[TaskSpec], batch: int
) -> None:
    empty(engine)
    ids = load(engine, specs)
    expected_gone = prunable_families(specs)

    done = prune(engine, CUTOFF, NOW, batch=batch)

    left, event_count = surviving(engine)
    gone = {i for i, task_id in enumerate(ids) if task_id not in left}
    assert gone == expected_gone
    for index, (parent, final, old, claimed) in enumerate(specs):
        if not (final and old and not claimed):
            assert ids[index] in left  # never a task that is not prunable
        if parent is not None and ids[index] in left:
            assert ids[parent] in left  # never a parent of a task that stays
    assert done.tasks == len(expected_gone)
    assert done.events == 2 * len(expected_gone)
    assert event_count == 2 * (len(specs) - len(expected_gone))
    # Each batch that deleted anything is audited, in its own transaction.
    records = pruned_records(engine)
    assert sum(r.detail["tasks"] for r in records) == done.tasks
    assert sum(r.detail["events"] for r in records) == done.events
    assert {r.actor for r in records} <= {"system:retention"}


def pruned_records(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(audit).where(audit.c.action == "tasks.prune")))


def test_a_prune_by_an_operator_is_audited_as_theirs(engine: Engine) -> None:
    """Pruning deleted tasks and their events with no audit record: `sluice db prune` and
    the retention thread were the only deletions the audit trail did not show."""
    empty(engine)
    ids = load(
        engine, [(None, True, True, False), (0, True, True, False), (None, False, True, False)]
    )

    done = prune(engine, CUTOFF, NOW, actor=LOCAL_ACTOR)

    assert done.tasks == 2
    (record,) = pruned_records(engine)
    assert record.actor == "cli"
    assert record.tenant is None
    assert record.target == f"tasks:{ids[0]}-{ids[0]}"  # the roots deleted
    assert record.detail == {"tasks": 2, "events": 4, "cutoff": CUTOFF.isoformat()}


def test_prune_keeps_a_family_whose_child_was_retried_meanwhile(engine: Engine) -> None:
    """A family prunable when found but changed before its batch ran stays whole."""
    empty(engine)
    ids = load(engine, [(None, True, True, False), (0, True, True, False)])
    with engine.begin() as conn:  # the child is retried: Not Started again
        conn.execute(
            tasks.update()
            .where(tasks.c.id == ids[1])
            .values(status=TaskStatus.NOT_STARTED.value, phase=Phase.READY.value, updated_at=NOW)
        )
    assert prune(engine, CUTOFF, NOW).tasks == 0
    assert surviving(engine)[0] == set(ids)


def test_pruner_runs_in_its_own_thread_at_most_every_interval(engine: Engine) -> None:
    """The dispatcher's call only starts a thread; a second call within the interval does
    nothing; the thread deletes what is due."""
    empty(engine)
    ids = load(engine, [(None, True, True, False), (None, False, True, False)])
    clock = FakeClock(NOW)
    pruner = Pruner(engine, clock, period_s=30 * 86400, batch=5000, every_s=600)
    assert pruner.run_if_due()
    assert pruner._thread is not None
    pruner._thread.join(10)
    assert not pruner.run_if_due()  # within every_s
    assert surviving(engine)[0] == {ids[1]}
    assert pruner.total.tasks == 1
    clock.advance(601)
    assert pruner.run_if_due()
    pruner.stop()


def test_a_stopped_prune_ends_between_batches(engine: Engine) -> None:
    empty(engine)
    load(engine, [(None, True, True, False)] * 5)
    stop = threading.Event()
    stop.set()
    assert prune(engine, CUTOFF, NOW, batch=1, stop=stop).tasks == 0
