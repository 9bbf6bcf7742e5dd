"""Tenants in the store, on SQLite and real PostgreSQL: each sees only its own tasks, an
other tenant's task reads exactly like a missing one, and actions leave audit records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from sluice import errors
from sluice.clock import FakeClock
from sluice.domain import Actor, Submission, TaskStatus
from sluice.store.audit import AuditLog, audit
from sluice.store.repository import TaskRepository
from sluice.store.rows import change_status, events, tasks

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BOT = Actor("key", "k1", "ci-bot")


@dataclass
class Store:
    repo: TaskRepository
    audit: AuditLog
    clock: FakeClock

    def written(self) -> tuple[int, int, int]:
        """(tasks, events, audit records) currently stored."""
        with self.repo.engine.connect() as conn:
            return tuple(  # type: ignore[return-value]
                conn.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (tasks, events, audit)
            )

    def fail(self, task_id: int) -> None:
        task = self.repo.get(task_id)
        with self.repo.engine.begin() as conn:
            assert change_status(conn, task, TaskStatus.ERROR, now=self.clock.now(), event="t")


@pytest.fixture
def store(engine: Engine) -> Store:
    """A migrated store of each backend (tests/integration/conftest.py) with a fake clock."""
    clock = FakeClock(START)
    return Store(TaskRepository(engine, clock), AuditLog(engine), clock)


def campaign(tenant: str, **fields: object) -> Submission:
    values: dict[str, object] = {
        "provider": "sandbox",
        "kind": "campaign",
        "payload": {"name": "Spring sale", "budget_cents": 250_000},
        "tenant": tenant,
    }
    values.update(fields)
    return Submission(**values)  # type: ignore[arg-type]


def test_tasks_without_a_tenant_belong_to_default(store: Store) -> None:
    """A submission that names no tenant lands in tenant 'default'."""
    task, _ = store.repo.create(Submission(provider="sandbox", kind="campaign", payload={}))

    assert task.tenant == "default"
    assert store.repo.get(task.id, tenant="default") == task


def test_another_tenants_task_reads_exactly_like_a_missing_one(store: Store) -> None:
    """get, events, cancel and retry of another tenant's task raise the very error a missing
    id raises, and change nothing."""
    task, _ = store.repo.create(campaign("acme"))
    store.fail(task.id)
    missing_id = task.id + 1000
    before = store.written()

    for action in (store.repo.get, store.repo.events, store.repo.cancel, store.repo.retry):
        with pytest.raises(errors.TaskNotFound) as foreign:
            action(task.id, tenant="globex")
        with pytest.raises(errors.TaskNotFound) as missing:
            action(missing_id, tenant="globex")
        assert str(foreign.value) == str(missing.value).replace(str(missing_id), str(task.id))

    assert store.written() == before
    assert store.repo.get(task.id, tenant="acme").status is TaskStatus.ERROR


def test_listing_shows_only_the_tenants_tasks(store: Store) -> None:
    """A tenant's listing holds its own tasks only; no tenant filter lists every tenant."""
    ids = store.repo.create_many([campaign("acme"), campaign("globex"), campaign("acme")])

    acme = store.repo.list_tasks(tenant="acme").items
    everyone = store.repo.list_tasks().items

    assert [t.id for t in acme] == [ids[0], ids[2]]
    assert {t.tenant for t in everyone} == {"acme", "globex"}
    assert store.repo.list_tasks(tenant="initech").items == []


def test_idempotency_keys_are_scoped_per_tenant(store: Store) -> None:
    """The same Idempotency-Key in two tenants makes two tasks; within one it replays."""
    first, created_a = store.repo.create(campaign("acme", idempotency_key="k", request_hash="h"))
    other, created_b = store.repo.create(campaign("globex", idempotency_key="k", request_hash="x"))
    replay, created_again = store.repo.create(
        campaign("acme", idempotency_key="k", request_hash="h")
    )

    assert (created_a, created_b, created_again) == (True, True, False)
    assert other.id != first.id
    assert replay == first


def test_idempotency_key_of_another_tenant_reveals_nothing(store: Store) -> None:
    """Reusing another tenant's key with a different body creates a task, not a 409."""
    store.repo.create(campaign("acme", idempotency_key="secret-plan", request_hash="h"))

    task, created = store.repo.create(
        campaign("globex", idempotency_key="secret-plan", request_hash="other")
    )

    assert created
    assert task.tenant == "globex"


def test_a_parent_of_another_tenant_does_not_exist(store: Store) -> None:
    """A child naming another tenant's task as parent is refused as if the parent were
    missing, and nothing is written."""
    parent, _ = store.repo.create(campaign("acme"))
    before = store.written()

    with pytest.raises(errors.InvalidTask, match=f"parent task\\(s\\) {parent.id} do not exist"):
        store.repo.create_many([campaign("globex", parent_id=parent.id)])

    assert store.written() == before
    child, _ = store.repo.create(campaign("acme", parent_id=parent.id))
    assert child.parent_id == parent.id


def test_cancel_and_retry_leave_audit_records(store: Store) -> None:
    """Cancel and retry each write one audit record naming the actor, tenant and task."""
    parent, _ = store.repo.create(campaign("acme"))
    store.repo.create(campaign("acme", parent_id=parent.id))

    store.repo.cancel(parent.id, tenant="acme", actor=BOT)
    store.clock.advance(5)
    store.repo.retry(parent.id, tenant="acme", actor=BOT)

    records = store.audit.list().items
    assert [(r.action, r.target, r.tenant, r.key_name, r.actor) for r in records] == [
        ("task.retry", f"task:{parent.id}", "acme", "ci-bot", "key"),
        ("task.cancel", f"task:{parent.id}", "acme", "ci-bot", "key"),
    ]
    assert records[1].detail == {"from_status": "Not Started", "descendants_cancelled": 1}
    assert records[0].detail == {"from_status": "Cancelled", "descendants_retried": 1}
    assert records[0].at == START + timedelta(seconds=5)


def test_a_refused_action_leaves_no_audit_record(store: Store) -> None:
    """Cancelling a final task or retrying an unfinished one writes no record at all."""
    task, _ = store.repo.create(campaign("acme"))
    store.repo.cancel(task.id, actor=BOT)
    before = store.written()

    with pytest.raises(errors.IllegalTransition):
        store.repo.cancel(task.id, actor=BOT)
    other, _ = store.repo.create(campaign("acme"))
    after_create = store.written()
    with pytest.raises(errors.IllegalTransition):
        store.repo.retry(other.id, actor=BOT)

    assert before[2] == after_create[2] == store.written()[2] == 1


def test_audit_listing_filters_and_pages_newest_first(store: Store) -> None:
    """Filters select matching records; cursor pages cover them all once, newest first."""
    ids = store.repo.create_many([campaign("acme") for _ in range(5)] + [campaign("globex")])
    for task_id in ids:
        store.repo.cancel(task_id, actor=BOT)
        store.clock.advance(1)

    seen: list[str] = []
    cursor = None
    while True:
        page = store.audit.list(tenant="acme", cursor=cursor, limit=2)
        seen.extend(r.target for r in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == [f"task:{i}" for i in reversed(ids[:5])]
    assert [r.tenant for r in store.audit.list(action="task.").items] == ["globex"] + ["acme"] * 5
    assert store.audit.list(action="task.retry").items == []
    assert len(store.audit.list(since=START + timedelta(seconds=4)).items) == 2
    assert len(store.audit.list(until=START + timedelta(seconds=1)).items) == 1
    assert len(store.audit.list(key_id="k1").items) == 6
    with pytest.raises(errors.InvalidTask, match="cursor"):
        store.audit.list(cursor="bm9wZTox")
