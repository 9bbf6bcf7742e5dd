"""Upgrading a populated database from the previous release's schema keeps every task and event.

The previous release is the revision before Alembic's head. While only one revision exists
(the first release), the data goes in at that revision and "upgrading" is the step from it
to head; the test then still checks that rows written by plain SQL of that schema are read
back whole by today's code, and it starts guarding the first real upgrade as soon as a new
revision is added.

Rows are written with plain SQL against the tables *as reflected at that revision*, not
through today's models, so a later revision that renames, drops or retypes a column has to
carry the data over for this test to pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from sluice.domain import Phase, Submission, TaskStatus
from sluice.store import db
from sluice.store.repository import TaskRepository
from sluice.store.tables import UTCDateTime

T0 = datetime(2026, 11, 30, 9, 15, 30, 123456, tzinfo=UTC)
FIRST = "0001"
"""The first release's revision (the only one until 2026-12-02)."""


def previous_and_head() -> tuple[str, str]:
    """(the previous release's revision, head); the same revision twice while only one exists."""
    config = db.alembic_config(sa.create_engine("sqlite://"))
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None
    before = script.get_revision(head).down_revision
    assert not isinstance(before, tuple), "a merge revision: pick the release to upgrade from"
    return (before or head), head


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh, empty database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'upgrade.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    built = db.make_engine(url)
    yield built
    built.dispose()


@dataclass
class Written:
    """What was written at the old revision: task rows by id and their events in order."""

    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


class OldSchema:
    """Plain SQL inserts into the tables as they are at the old revision."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        metadata = sa.MetaData()
        with warnings.catch_warnings():
            # SQLite cannot reflect an expression index (ix_tasks_fair_order, from 0012);
            # inserts need only the columns.
            warnings.filterwarnings(
                "ignore",
                "Skipped unsupported reflection of expression-based index",
                sa.exc.SAWarning,
            )
            metadata.reflect(conn, only=["tasks", "task_events"])
        self.tables = {name: self._with_utc_times(table) for name, table in metadata.tables.items()}

    @staticmethod
    def _with_utc_times(table: sa.Table) -> sa.TableClause:
        """The table with its timestamp columns bound the way Sluice writes them."""
        columns = [
            sa.column(c.name, UTCDateTime() if isinstance(c.type, sa.DateTime) else c.type)
            for c in table.columns
        ]
        return sa.table(table.name, *columns)

    def insert(self, name: str, row: dict[str, Any]) -> int:
        """Insert ``row`` (only columns of the old schema) and return its new id."""
        table = self.tables[name]
        missing = set(row) - set(table.c.keys())
        assert not missing, f"{name} has no column(s) {missing} at this revision: update the test"
        new_id = self.conn.execute(sa.insert(table).values(row).returning(table.c.id)).scalar_one()
        return int(new_id)


def populate(conn: sa.Connection) -> Written:
    """Tasks in every status and phase, a parent chain, idempotency keys, and their events."""
    old = OldSchema(conn)
    written = Written()
    at = iter(T0 + timedelta(seconds=n) for n in range(1000))

    def task(**fields: Any) -> int:
        created = next(at)
        row: dict[str, Any] = {
            "provider": "sandbox",
            "kind": "campaign",
            "payload": {"name": "Été \u2013 50% off", "budget": 1250.5, "tags": ["a", "b"]},
            "external_id": None,
            "parent_id": None,
            "status": TaskStatus.NOT_STARTED.value,
            "phase": Phase.READY.value,
            "track_only": False,
            "validation_error": None,
            "last_error": None,
            "attempts": 0,
            "polls": 0,
            "poll_interval_s": None,
            "next_attempt_at": None,
            "deadline_at": None,
            "idempotency_key": None,
            "request_hash": None,
            "client_ref": None,
            "claimed_by": None,
            "claimed_until": None,
            "created_at": created,
            "updated_at": created,
            **fields,
        }
        task_id = old.insert("tasks", row)
        written.tasks[task_id] = row
        written.events[task_id] = []
        event(task_id, "created", None, row["status"], None)
        return task_id

    def event(
        task_id: int, name: str, before: str | None, after: str | None, detail: str | None
    ) -> None:
        row = {
            "task_id": task_id,
            "at": next(at),
            "event": name,
            "from_status": before,
            "to_status": after,
            "detail": detail,
        }
        old.insert("task_events", row)
        written.events[task_id].append(row)

    not_started, in_progress = TaskStatus.NOT_STARTED.value, TaskStatus.IN_PROGRESS.value
    completed, error = TaskStatus.COMPLETED.value, TaskStatus.ERROR.value

    campaign = task(
        status=completed,
        phase=Phase.DONE.value,
        external_id="cmp-1",
        client_ref="sl-0001",
        idempotency_key="winter-campaign-1",
        request_hash="ab" * 32,
        attempts=1,
    )
    event(campaign, "submitted", not_started, in_progress, "external id cmp-1")
    event(campaign, "completed", in_progress, completed, None)
    ad_group = task(
        kind="ad_group",
        payload={"name": "UK", "bid": 1.5, "campaign_id": "cmp-1"},
        parent_id=campaign,
        status=in_progress,
        phase=Phase.POLLING.value,
        external_id="grp-1",
        client_ref="sl-0002",
        polls=3,
        poll_interval_s=3.0,
        next_attempt_at=T0 + timedelta(minutes=5),
        deadline_at=T0 + timedelta(hours=1),
    )
    event(ad_group, "submitted", not_started, in_progress, "external id grp-1")
    task(kind="ad", payload={"name": "Banner"}, parent_id=ad_group, phase="waiting_parent")
    failed = task(
        kind="audience",
        payload={"name": "bad", "include": ["192.168.1.256"]},
        status=error,
        phase=Phase.DONE.value,
        validation_error="Invalid IP range: 192.168.1.256",
        client_ref="sl-0004",
        attempts=1,
    )
    event(failed, "failed", not_started, error, "Invalid IP range: 192.168.1.256")
    cancelled = task(status=TaskStatus.CANCELLED.value, phase=Phase.DONE.value)
    event(cancelled, "cancelled", not_started, TaskStatus.CANCELLED.value, "by operator")
    task(
        phase=Phase.SUBMITTING.value,
        client_ref="sl-0006",
        claimed_by="worker-a:123",
        claimed_until=T0 + timedelta(minutes=2),
        attempts=1,
    )
    uncertain = task(
        phase=Phase.UNCERTAIN.value,
        client_ref="sl-0007",
        attempts=2,
        last_error="timeout after sending",
        next_attempt_at=T0 + timedelta(seconds=30),
    )
    event(uncertain, "attempt_failed", None, None, "timeout after sending")
    task(kind=None, payload=None, provider="sandbox", track_only=True, phase=Phase.POLLING.value)
    return written


def assert_task_intact(repo: TaskRepository, task_id: int, row: dict[str, Any]) -> None:
    task = repo.get(task_id)
    for name in (
        "provider",
        "kind",
        "payload",
        "external_id",
        "parent_id",
        "track_only",
        "validation_error",
        "last_error",
        "attempts",
        "polls",
        "next_attempt_at",
        "idempotency_key",
        "client_ref",
        "created_at",
        "updated_at",
    ):
        assert getattr(task, name) == row[name], f"task {task_id}.{name}"
    assert task.status.value == row["status"]
    assert task.phase.value == row["phase"]


@pytest.mark.parametrize("start", ["previous", "first"])
def test_upgrade_from_an_earlier_release_keeps_every_task_and_event(
    engine: Engine, start: str
) -> None:
    """Tasks (parents, every status and phase, keys) and events written at the previous
    revision, or at the first (a database left since the first release, upgraded through
    every revision at once), read back unchanged at head, and the upgraded store keeps
    working."""
    previous, head = previous_and_head()
    db.upgrade(engine, previous if start == "previous" else FIRST)
    with engine.begin() as conn:
        written = populate(conn)

    db.upgrade(engine, "head")

    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head
    repo = TaskRepository(engine)
    for task_id, row in written.tasks.items():
        assert_task_intact(repo, task_id, row)
        events = repo.events(task_id)
        assert [(e.event, e.at, e.detail) for e in events] == [
            (e["event"], e["at"], e["detail"]) for e in written.events[task_id]
        ]
        assert [(e.from_status, e.to_status) for e in events] == [
            (e["from_status"], e["to_status"]) for e in written.events[task_id]
        ]
    statuses = [row["status"] for row in written.tasks.values()]
    assert repo.counts() == {status: statuses.count(status) for status in set(statuses)}
    assert set(statuses) == {status.value for status in TaskStatus}

    # The upgraded store goes on: an old idempotency key replays, new ids do not collide.
    replay, created = repo.create(
        Submission(
            provider="sandbox",
            kind="campaign",
            payload={"name": "again"},
            idempotency_key="winter-campaign-1",
            request_hash="ab" * 32,
        )
    )
    assert (replay.id, created) == (min(written.tasks), False)
    fresh, created = repo.create(Submission(provider="sandbox", kind="ad", payload={"n": 1}))
    assert created
    assert fresh.id > max(written.tasks)
