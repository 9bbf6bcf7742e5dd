"""One contract for the task store, run against SQLite (a temp file) and real PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select, text

from sluice import errors
from sluice.clock import FakeClock, SystemClock
from sluice.domain import LOCAL_ACTOR, Outcome, Phase, Submission, Task, TaskStatus
from sluice.store import db, repository
from sluice.store.bulkjobs import BulkJobs
from sluice.store.chains import release_children
from sluice.store.filters import TaskFilter
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository
from sluice.store.rows import IN_CHUNK, change_status, events, tasks

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Store:
    """A repository on a fresh database, its fake clock, and the backend's name."""

    repo: TaskRepository
    clock: FakeClock
    backend: str

    def written(self) -> tuple[int, int]:
        """(tasks, events) currently stored."""
        with self.repo.engine.connect() as conn:
            return (
                conn.execute(select(func.count()).select_from(tasks)).scalar_one(),
                conn.execute(select(func.count()).select_from(events)).scalar_one(),
            )

    def move(self, task_id: int, status: TaskStatus, **fields: object) -> bool:
        """Change a task's status the way the engine does."""
        task = self.repo.get(task_id)
        with self.repo.engine.begin() as conn:
            return change_status(conn, task, status, now=self.clock.now(), event="test", **fields)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated store with a fake clock."""
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    clock = FakeClock(START)
    yield Store(TaskRepository(engine, clock), clock, engine.dialect.name)
    engine.dispose()


def submission(**fields: object) -> Submission:
    values: dict[str, object] = {
        "provider": "sandbox",
        "kind": "campaign",
        "payload": {"name": "Spring sale", "budget_cents": 250_000, "geo": ["FR", "DE"]},
    }
    values.update(fields)
    return Submission(**values)  # type: ignore[arg-type]


def create(store: Store, spec: Submission) -> Task:
    task, created = store.repo.create(spec)
    assert created
    return task


# -- creating and reading ----------------------------------------------------------------


def test_created_submission_reads_back(store: Store) -> None:
    """A created submission reads back with its payload, a client ref, Not Started and ready."""
    task = create(store, submission(payload={"name": "Été ☀", "nested": {"a": [1, 2.5, None]}}))

    again = store.repo.get(task.id)
    assert again == task
    assert again.payload == {"name": "Été ☀", "nested": {"a": [1, 2.5, None]}}
    assert again.status is TaskStatus.NOT_STARTED
    assert again.phase is Phase.READY
    assert again.client_ref is not None
    assert not again.track_only


def test_tracked_task_keeps_its_id_as_external_id(store: Store) -> None:
    """The prototype's tracked task keeps the given id and status and is polled by that id."""
    task = create(store, Submission(provider="sandbox", id=3, status=TaskStatus.IN_PROGRESS))

    assert task.id == 3
    assert task.status is TaskStatus.IN_PROGRESS
    assert task.external_id == "3"
    assert task.phase is Phase.POLLING
    assert task.track_only


def test_auto_numbered_tracked_task_is_polled_by_its_own_id(store: Store) -> None:
    """A tracked task created without an id gets its new id as the id to poll."""
    task = create(store, Submission(provider="sandbox"))

    assert task.external_id == str(task.id)


def test_unknown_id_raises_not_found(store: Store) -> None:
    """Reading or acting on an id nobody created raises TaskNotFound."""
    for action in (store.repo.get, store.repo.events, store.repo.cancel, store.repo.retry):
        with pytest.raises(errors.TaskNotFound):
            action(77)


def test_existing_id_conflicts_and_writes_nothing(store: Store) -> None:
    """Creating a task with an id already used raises TaskConflict and changes nothing."""
    create(store, Submission(provider="sandbox", id=1))
    before = store.written()

    with pytest.raises(errors.TaskConflict, match="task 1 already exists"):
        store.repo.create(Submission(provider="sandbox", id=1, status=TaskStatus.COMPLETED))

    assert store.written() == before
    assert store.repo.get(1).status is TaskStatus.NOT_STARTED


# -- explicit ids and auto-numbering -----------------------------------------------------


def test_explicit_id_never_breaks_auto_numbering(store: Store) -> None:
    """After a task is created with explicit id 5, auto-numbered creates all succeed elsewhere."""
    create(store, Submission(provider="sandbox", id=5))

    auto_ids = [create(store, submission()).id for _ in range(10)]

    assert 5 not in auto_ids
    assert len(set(auto_ids)) == 10
    assert store.written()[0] == 11


def test_auto_numbering_continues_above_a_far_explicit_id(store: Store) -> None:
    """After explicit id 1,000,000 the next auto-numbered tasks come after it."""
    create(store, submission())
    create(store, Submission(provider="sandbox", id=1_000_000))

    later = [create(store, submission()).id for _ in range(3)]

    assert all(task_id > 1_000_000 for task_id in later)


def test_explicit_ids_in_a_batch_with_auto_ids(store: Store) -> None:
    """A batch mixing explicit and automatic ids gives every item a distinct id, in order."""
    create(store, submission())
    ids = store.repo.create_many(
        [submission(), Submission(provider="sandbox", id=3), submission(), submission()]
    )

    assert ids[1] == 3
    assert len(set(ids)) == 4
    assert [store.repo.get(i).id for i in ids] == ids
    assert store.repo.get(3).external_id == "3"
    assert create(store, submission()).id not in {1, *ids}


def test_explicit_id_child_of_auto_numbered_item(store: Store) -> None:
    """An item with an explicit id may name an earlier, auto-numbered item as its parent."""
    ids = store.repo.create_many([submission(), submission(id=50, parent_index=0)])

    assert ids[1] == 50
    assert store.repo.get(50).parent_id == ids[0]
    assert store.repo.get(50).phase is Phase.WAITING_PARENT


@pytest.mark.postgres
def test_explicit_id_while_another_create_is_in_flight(postgres_url: str) -> None:
    """An explicit-id create committing while auto-numbered rows are uncommitted elsewhere
    must not rewind the id sequence into them."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock(START))
    try:
        gap = create_store_gap(repo)
        with engine.connect() as other:
            in_flight = other.begin()
            row = {
                "provider": "sandbox",
                "status": "Not Started",
                "phase": "ready",
                "track_only": False,
                "attempts": 0,
                "polls": 0,
                "created_at": START,
                "updated_at": START,
            }
            in_flight_ids = (
                other.execute(insert(tasks).returning(tasks.c.id), [row, row]).scalars().all()
            )
            repo.create(Submission(provider="sandbox", id=gap))
            in_flight.commit()

        later = [repo.create(submission())[0].id for _ in range(3)]
        assert not set(later) & set(in_flight_ids)
    finally:
        engine.dispose()


def complete_while(repo: TaskRepository, parent_id: int, action: Callable[[], None]) -> None:
    """Complete the In Progress ``parent_id`` and release its children in a transaction of
    its own, left uncommitted while ``action`` runs in a thread (half a second: time to
    read the parent), then committed; ``action`` must end within 30 s."""
    running = repo.get(parent_id)
    worker = threading.Thread(target=action)
    with repo.engine.connect() as other:
        completing = other.begin()
        assert change_status(
            other, running, TaskStatus.COMPLETED, now=START, event="test", phase="done"
        )
        release_children(other, [parent_id], START)
        worker.start()
        worker.join(timeout=0.5)
        completing.commit()
    worker.join(timeout=30)
    assert not worker.is_alive()


@pytest.mark.postgres
@pytest.mark.parametrize("batch", [False, True], ids=["single", "bulk"])
def test_child_created_while_its_parent_completes_is_released(
    postgres_url: str, batch: bool
) -> None:
    """A child created while its parent's completion is uncommitted in another transaction
    starts ready once that completion commits, never waiting for a release that has passed.

    Under READ COMMITTED the create used to read the parent as Running, the completion's
    release saw no uncommitted child, and the child waited for ever."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock(START))
    made: list[int] = []

    def create_child() -> None:
        child = submission(kind="ad_group", parent_id=parent.id)
        made.extend(repo.create_many([child]) if batch else [repo.create(child)[0].id])

    try:
        parent = repo.create(submission())[0]
        with engine.begin() as conn:
            assert change_status(conn, parent, TaskStatus.IN_PROGRESS, now=START, event="test")
        complete_while(repo, parent.id, create_child)

        assert repo.get(made[0]).phase is Phase.READY
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("how", ["retry", "bulk job"])
def test_child_retried_while_its_parent_completes_is_released(postgres_url: str, how: str) -> None:
    """A cancelled child retried while its parent's completion is uncommitted elsewhere
    comes back ready once that completion commits (it used to wait for ever)."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock(START))
    jobs = BulkJobs(repo, FakeClock(START))

    def retry_child() -> None:
        if how == "retry":
            repo.retry(child.id)
            return
        wanted = TaskFilter(kind="ad_group")
        job = jobs.start("retry", wanted, None, jobs.preview("retry", wanted, None), LOCAL_ACTOR)
        assert jobs.claim("test", 60.0) is not None
        while not jobs.run_batch(job.id, "test"):
            pass

    try:
        parent = repo.create(submission())[0]
        child = repo.create(submission(kind="ad_group", parent_id=parent.id))[0]
        with engine.begin() as conn:
            assert change_status(conn, parent, TaskStatus.IN_PROGRESS, now=START, event="test")
        repo.cancel(child.id)
        complete_while(repo, parent.id, retry_child)

        assert repo.get(child.id).phase is Phase.READY
    finally:
        engine.dispose()


def create_grandchild_while(
    repo: TaskRepository, parent_id: int, action: Callable[[], None]
) -> int:
    """Insert a child of ``parent_id`` as a create does (the parent read under its shared
    lock), left uncommitted while ``action`` runs in a thread, which must wait for it;
    then committed. Returns the child's id."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=run)
    with repo.engine.connect() as conn:
        creating = conn.begin()
        [child] = repo._insert_batch(conn, [submission(kind="ad", parent_id=parent_id)], START)
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive(), "the action did not wait for the new child's lock"
        creating.commit()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert not failed, failed
    return child


def in_progress_with_a_waiting_child(repo: TaskRepository) -> tuple[int, int]:
    parent = repo.create(submission())[0]
    with repo.engine.begin() as conn:
        assert change_status(conn, parent, TaskStatus.IN_PROGRESS, now=START, event="test")
    child = repo.create(submission(kind="ad_group", parent_id=parent.id))[0]
    assert child.phase is Phase.WAITING_PARENT
    return parent.id, child.id


@pytest.mark.postgres
@pytest.mark.parametrize("end", ["cancel", "error outcome"])
def test_grandchild_created_while_an_ancestor_ends_is_ended(postgres_url: str, end: str) -> None:
    """A grandchild committed while its grandparent's end walks the tree ends with it (it
    used to wait for ever under an ended parent): the walk reads the tree again."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock(START))
    try:
        root, child = in_progress_with_a_waiting_child(repo)
        failed = Outcome(
            task_id=root,
            from_status=TaskStatus.IN_PROGRESS,
            to_status=TaskStatus.ERROR,
            phase=Phase.DONE,
            event="failed",
            fields={"last_error": "boom"},
            end_descendants=(TaskStatus.ERROR, f"parent task {root} failed: boom"),
        )
        action = (
            (lambda: repo.cancel(root))
            if end == "cancel"
            else (lambda: WorkQueue(engine).apply([failed], START))
        )
        grandchild = create_grandchild_while(repo, child, action)

        ended = TaskStatus.CANCELLED if end == "cancel" else TaskStatus.ERROR
        assert repo.get(child).status is ended
        assert (repo.get(grandchild).status, repo.get(grandchild).phase) == (ended, Phase.DONE)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_grandchild_created_while_an_ancestor_is_retried_is_retried(postgres_url: str) -> None:
    """A grandchild committed (Cancelled, under a Cancelled parent) while its grandparent's
    retry walks the tree comes back with the tree."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock(START))
    try:
        root, child = in_progress_with_a_waiting_child(repo)
        repo.cancel(root)
        grandchild = create_grandchild_while(repo, child, lambda: repo.retry(root))

        assert repo.get(child).status is TaskStatus.NOT_STARTED
        got = repo.get(grandchild)
        assert (got.status, got.phase) == (TaskStatus.NOT_STARTED, Phase.WAITING_PARENT)
    finally:
        engine.dispose()


def test_retry_readies_a_descendant_whose_parent_stays_completed(store: Store) -> None:
    """A retried tree's descendant under a Completed tracked task is ready at once: that
    parent will not complete again to release it."""
    root = create(store, submission())
    tracked = create(
        store, Submission(provider="sandbox", parent_id=root.id, status=TaskStatus.COMPLETED)
    )
    assert tracked.track_only
    assert tracked.status is TaskStatus.COMPLETED
    leaf = create(store, submission(kind="ad", parent_id=tracked.id))
    store.repo.cancel(root.id)
    assert store.repo.get(leaf.id).status is TaskStatus.CANCELLED

    store.repo.retry(root.id)

    assert store.repo.get(leaf.id).phase is Phase.READY


@pytest.mark.postgres
def test_child_of_a_parent_locked_too_long_is_refused_unwritten(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent another transaction keeps changing past the wait: 503's error, naming the
    parent, and nothing written."""
    monkeypatch.setattr(repository, "PARENT_BUSY_S", 0.3)
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock(START))
    try:
        parent = repo.create(submission())[0]
        with engine.connect() as other:
            holding = other.begin()
            other.execute(tasks.update().where(tasks.c.id == parent.id).values(priority=1))
            with pytest.raises(errors.StoreUnavailable, match=f"parent task\\(s\\) {parent.id} "):
                repo.create(submission(parent_id=parent.id))
            holding.rollback()
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(tasks)).scalar_one() == 1
    finally:
        engine.dispose()


def create_store_gap(repo: TaskRepository) -> int:
    """Use up sequence numbers without rows (a rolled-back create) and return a free id."""
    repo.create(submission())
    with pytest.raises(errors.TaskConflict):
        repo.create_many([submission(idempotency_key="dup"), submission(idempotency_key="dup")])
    return 2


# -- atomic batches ----------------------------------------------------------------------


@st.composite
def _batches(draw: st.DrawFn, *, stored_parents: bool = True) -> list[dict[str, object]]:
    """A batch's items as fields of a Submission; ``parent`` is ("item", index of an earlier
    item), ("task", which of the three stored parents) or None. Without ``stored_parents``
    no item names a stored parent, and some are tracked (no kind, no parent)."""
    items: list[dict[str, object]] = []
    for index in range(draw(st.integers(1, 11))):
        parent = draw(
            st.one_of(
                st.none(),
                *([st.tuples(st.just("task"), st.integers(0, 2))] if stored_parents else []),
                *([st.tuples(st.just("item"), st.integers(0, index - 1))] if index else []),
            )
        )
        kinds = ["campaign", "ad_group", "creative"]
        if not stored_parents and parent is None:
            kinds.append(None)  # type: ignore[arg-type]
        items.append(
            {
                "kind": draw(st.sampled_from(kinds)),
                # Few distinct values: a column is often the same in one part and not the next.
                "payload": {"name": draw(st.sampled_from(["a", "b"]))},
                "priority": draw(st.sampled_from([0, 0, 5])),
                "fairness_key": draw(st.sampled_from([None, None, "adv-1"])),
                "parent": parent,
            }
        )
    return items


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=_batches())
def test_a_batch_written_in_parts_stores_what_one_part_stores(
    store: Store, monkeypatch: pytest.MonkeyPatch, items: list[dict[str, object]]
) -> None:
    """PostgreSQL builds and sends a large batch a part at a time (``COPY_PART`` rows, the
    server indexing one part while the next is built): with parts of 3 rows, every column
    of every row and its created event are what one part writes, parents named by index
    across parts included."""
    parents = store.repo.create_many([submission(), submission(), submission()])
    store.move(parents[1], TaskStatus.COMPLETED)
    store.move(parents[2], TaskStatus.ERROR, last_error="rejected")

    def specs() -> list[Submission]:
        return [_item_submission(item, parents) for item in items]

    monkeypatch.setattr(repository, "COPY_PART", 3)
    in_parts = store.repo.create_many(specs())
    monkeypatch.setattr(repository, "COPY_PART", 10_000)
    in_one = store.repo.create_many(specs())

    assert stored(store, in_parts) == stored(store, in_one)
    with store.repo.engine.connect() as conn:
        refs = conn.execute(select(tasks.c.client_ref).where(tasks.c.id.in_(in_parts + in_one)))
        assert len(set(refs.scalars())) == 2 * len(items)


def stored(store: Store, ids: list[int], *, but: tuple[str, ...] = ()) -> list[tuple[object, ...]]:
    """Every column of the tasks ``ids`` (less ``but``) and their created events, in id
    order: parents among ``ids`` by their place, client references checked for shape."""
    position = {task_id: n for n, task_id in enumerate(ids)}
    with store.repo.engine.connect() as conn:
        rows = conn.execute(select(tasks).where(tasks.c.id.in_(ids)).order_by(tasks.c.id))
        created = {
            task_id: note
            for task_id, note in conn.execute(
                select(
                    events.c.task_id,
                    events.c.to_status + "|" + func.coalesce(events.c.detail, ""),
                ).where(events.c.task_id.in_(ids), events.c.event == "created")
            )
        }
        seen = []
        for row in rows:
            values = row._asdict()
            task_id = values.pop("id")
            reference = values.pop("client_ref")
            if values["track_only"]:  # a tracked task: its own id, no request to send
                assert (values.pop("external_id"), reference) == (str(task_id), None)
            else:
                assert str(reference).startswith("sl-")
            parent = values.pop("parent_id")
            values["parent"] = ("item", position[parent]) if parent in position else parent
            values["created"] = created[task_id]
            for name in but:
                values.pop(name)
            seen.append(tuple(sorted(values.items())))
    return seen


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=_batches(stored_parents=False), sizes=st.lists(st.integers(1, 4), min_size=1))
def test_a_batch_given_in_parts_stores_what_create_many_stores(
    store: Store, items: list[dict[str, object]], sizes: list[int]
) -> None:
    """``create_in_parts`` (the bulk API's path when no item names an id or a parent_id:
    each part is checked while the store writes the one before) writes what
    ``create_many`` writes of the same items, in parts of any sizes, tracked tasks and
    parents named by index across parts included."""
    specs = [_item_submission(item, []) for item in items]
    parts: list[list[Submission]] = []
    while sum(map(len, parts)) < len(specs):
        start = sum(map(len, parts))
        parts.append(specs[start : start + sizes[len(parts) % len(sizes)]])

    in_parts = store.repo.create_in_parts(len(specs), iter(parts))
    in_one = store.repo.create_many(specs)

    assert stored(store, in_parts) == stored(store, in_one)


def _item_submission(item: dict[str, object], parents: list[int]) -> Submission:
    """The submission ``_batches`` describes (its parent one of ``parents``, or an item)."""
    fields = {k: v for k, v in item.items() if k != "parent"}
    match item["parent"]:
        case ("item", int(index)):
            fields["parent_index"] = index
        case ("task", int(which)):
            fields["parent_id"] = parents[which]
    if fields["kind"] is None:
        fields.update(payload=None, provider="sandbox")
    return submission(**fields)


def test_a_batch_given_short_of_its_count_writes_nothing(store: Store) -> None:
    """Parts that end before the count announced, run past it, name a parent_id or raise
    leave the store as it was: the whole batch is one transaction."""
    parent = create(store, submission())
    before = store.written()

    def failing() -> Iterator[list[Submission]]:
        # Past the two parts bulk.insert_column_parts reads before it starts: the COPY is
        # open (PostgreSQL: psycopg sends CopyFail) when the fourth part cannot be made.
        for _ in range(3):
            yield [submission()]
        raise RuntimeError("a part could not be made")

    with pytest.raises(errors.InvalidTask, match="4 tasks given of the 5 announced"):
        store.repo.create_in_parts(5, iter([[submission()] * 3, [submission()]]))
    with pytest.raises(errors.InvalidTask, match="more than the 2 tasks announced"):
        store.repo.create_in_parts(2, iter([[submission()] * 3]))
    with pytest.raises(errors.InvalidTask, match="cannot name ids or parent_ids"):
        store.repo.create_in_parts(2, iter([[submission(), submission(parent_id=parent.id)]]))
    with pytest.raises(RuntimeError, match="could not be made"):
        store.repo.create_in_parts(6, failing())

    assert store.written() == before


def test_batch_links_items_by_parent_index(store: Store) -> None:
    """Items naming an earlier item by parent_index become its children and wait for it."""
    ids = store.repo.create_many(
        [submission(), submission(kind="creative", parent_index=0), submission(parent_index=1)]
    )

    assert store.repo.get(ids[1]).parent_id == ids[0]
    assert store.repo.get(ids[2]).parent_id == ids[1]
    assert store.repo.get(ids[2]).phase is Phase.WAITING_PARENT
    assert store.repo.get(ids[0]).phase is Phase.READY


def test_batch_with_unknown_parent_writes_nothing(store: Store) -> None:
    """A batch where one item names a missing parent raises InvalidTask and writes nothing."""
    create(store, submission())
    before = store.written()

    with pytest.raises(errors.InvalidTask, match="999"):
        store.repo.create_many([submission()] * 50 + [submission(parent_id=999)])

    assert store.written() == before


def test_batch_conflicting_late_writes_nothing(store: Store) -> None:
    """A batch whose last item's id is taken raises TaskConflict; no earlier item is kept."""
    create(store, Submission(provider="sandbox", id=40))
    before = store.written()

    with pytest.raises(errors.TaskConflict):
        store.repo.create_many([submission() for _ in range(100)] + [Submission("sandbox", id=40)])

    assert store.written() == before


def test_large_batch_is_created_with_one_event_each(store: Store) -> None:
    """A 10,000-task batch stores every task with its 'created' event."""
    ids = store.repo.create_many([submission(payload={"n": i}) for i in range(10_000)])

    assert len(set(ids)) == 10_000
    assert store.written() == (10_000, 10_000)
    assert store.repo.get(ids[-1]).payload == {"n": 9_999}


@pytest.mark.parametrize("part", [2, 10_000])
def test_a_batch_stores_each_payload_as_sent_when_python_calls_them_equal(
    store: Store, monkeypatch: pytest.MonkeyPatch, part: int
) -> None:
    """``true``, ``1`` and ``1.0`` are one value to Python's ``==`` but three to JSON and to a
    provider: payloads (or a part's payloads) that all compare equal are still stored each as
    sent, not as the first item's (a review: the bulk path wrote ``{"on": 1}`` for all
    three)."""
    monkeypatch.setattr(repository, "COPY_PART", part)
    sent = [{"on": 1}, {"on": True}, {"on": 1.0}, {"on": [1, 0]}, {"on": [True, False]}]
    batches = [sent[:3], sent[3:]]
    assert all(batch.count(batch[0]) == len(batch) for batch in batches)

    ids = [
        task_id
        for batch in batches
        for task_id in store.repo.create_many([submission(payload=p) for p in batch])
    ]

    stored = [store.repo.get(task_id).payload for task_id in ids]
    assert [json.dumps(payload) for payload in stored] == [json.dumps(p) for p in sent]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"priority": 7, "tenant": "acme", "fairness_key": "adv-3", "idempotency_key": "k1"},
        {"payload": {"name": "\\u0000 is text", "n": [1, 2.5, None]}, "request_hash": "h"},
    ],
)
def test_single_create_writes_what_a_batch_writes(store: Store, fields: dict[str, object]) -> None:
    """A single create (its own statements on PostgreSQL) stores the same row and the same
    'created' event as the bulk path, apart from id and client ref."""
    single = create(store, submission(**fields))
    [batched_id] = store.repo.create_many([submission(**{**fields, "idempotency_key": None})])
    batched = store.repo.get(batched_id)

    def comparable(task: Task) -> dict[str, object]:
        return {
            **task.__dict__,
            "id": None,
            "client_ref": None,
            "idempotency_key": None,
        }

    assert comparable(single) == comparable(batched)
    single_events = store.repo.events(single.id)
    batched_events = store.repo.events(batched_id)
    assert [(e.event, e.from_status, e.to_status, e.detail, e.at) for e in single_events] == [
        (e.event, e.from_status, e.to_status, e.detail, e.at) for e in batched_events
    ]
    assert [e.event for e in single_events] == ["created"]


def test_child_of_failed_parent_starts_as_error(store: Store) -> None:
    """A submission under a parent that already failed is created as Error, saying why."""
    parent = create(store, submission())
    store.move(parent.id, TaskStatus.ERROR)

    child = create(store, submission(parent_id=parent.id))

    assert child.status is TaskStatus.ERROR
    assert child.last_error is not None
    assert str(parent.id) in child.last_error


# -- idempotency -------------------------------------------------------------------------


def test_idempotent_replay_returns_the_original(store: Store) -> None:
    """The same key and body hash returns the first task, not created, and writes nothing."""
    first = create(store, submission(idempotency_key="k", request_hash="h1"))
    before = store.written()

    again, created = store.repo.create(submission(idempotency_key="k", request_hash="h1"))

    assert not created
    assert again == first
    assert store.written() == before


def test_idempotency_key_with_other_body_conflicts(store: Store) -> None:
    """The same key with another body hash raises TaskConflict naming the key."""
    create(store, submission(idempotency_key="k", request_hash="h1"))

    with pytest.raises(errors.TaskConflict, match="'k'"):
        store.repo.create(submission(idempotency_key="k", request_hash="h2"))


# -- status changes and history ----------------------------------------------------------


def test_every_status_change_leaves_an_event(store: Store) -> None:
    """created, then each status change, appear in order with from/to statuses and times."""
    task = create(store, submission())
    store.clock.advance(5)
    assert store.move(task.id, TaskStatus.IN_PROGRESS)
    store.clock.advance(5)
    assert store.move(task.id, TaskStatus.COMPLETED)

    history = store.repo.events(task.id)

    assert [(e.event, e.from_status, e.to_status) for e in history] == [
        ("created", None, TaskStatus.NOT_STARTED),
        ("test", TaskStatus.NOT_STARTED, TaskStatus.IN_PROGRESS),
        ("test", TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED),
    ]
    assert [e.at for e in history] == [
        START,
        START + timedelta(seconds=5),
        START + timedelta(seconds=10),
    ]


def test_completed_cannot_go_back_to_not_started(store: Store) -> None:
    """Completed -> Not Started raises IllegalTransition; the task and history are unchanged."""
    task = create(store, submission())
    store.move(task.id, TaskStatus.COMPLETED)
    before = store.written()

    with pytest.raises(errors.IllegalTransition, match="Completed -> Not Started"):
        store.move(task.id, TaskStatus.NOT_STARTED)

    assert store.repo.get(task.id).status is TaskStatus.COMPLETED
    assert store.written() == before


def test_stale_status_change_is_refused(store: Store) -> None:
    """A change based on a status someone else already changed does nothing."""
    task = create(store, submission())
    store.move(task.id, TaskStatus.IN_PROGRESS)
    before = store.written()

    with store.repo.engine.begin() as conn:
        changed = change_status(conn, task, TaskStatus.CANCELLED, now=START, event="late")

    assert not changed
    assert store.repo.get(task.id).status is TaskStatus.IN_PROGRESS
    assert store.written() == before


# -- timestamps and the clock -----------------------------------------------------------


def test_timestamps_come_from_the_injected_clock(store: Store) -> None:
    """created_at/updated_at are the injected clock's aware-UTC time, set per row."""
    first = create(store, submission())
    store.clock.advance(90)
    second = create(store, submission())
    store.clock.advance(30)
    store.move(first.id, TaskStatus.IN_PROGRESS)

    first = store.repo.get(first.id)
    assert first.created_at == START
    assert first.updated_at == START + timedelta(seconds=120)
    assert second.created_at == second.updated_at == START + timedelta(seconds=90)
    for stamp in (first.created_at, first.updated_at, second.created_at):
        assert stamp.utcoffset() == timedelta(0)


def test_system_clock_stamps_each_row_when_written(database_url: str) -> None:
    """With the real clock, each row's created_at is the time of its own write, not import."""
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, SystemClock())
    try:
        before = datetime.now(UTC)
        first, _ = repo.create(submission())
        second, _ = repo.create(submission())
        after = datetime.now(UTC)
    finally:
        engine.dispose()

    assert before <= first.created_at <= second.created_at <= after
    assert first.created_at.tzinfo is not None
    assert second.updated_at.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused(store: Store) -> None:
    """The store refuses naive datetimes rather than guessing their zone."""
    task = create(store, submission())

    with pytest.raises(Exception, match="naive"), store.repo.engine.begin() as conn:
        change_status(conn, task, TaskStatus.IN_PROGRESS, now=datetime(2026, 1, 1), event="naive")


# -- listing -----------------------------------------------------------------------------


def test_listing_filters_and_pages(store: Store) -> None:
    """Filters select matching tasks; cursor pages cover them all once, in id order."""
    ids = store.repo.create_many(
        [submission(provider="acme" if i % 3 == 0 else "sandbox") for i in range(30)]
    )
    acme = [task_id for i, task_id in enumerate(ids) if i % 3 == 0]

    seen: list[int] = []
    cursor = None
    while True:
        page = store.repo.list_tasks(provider="acme", cursor=cursor, limit=4)
        seen.extend(t.id for t in page.items)
        store.repo.create(submission(provider="acme"))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen[: len(acme)] == acme
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    assert store.repo.list_tasks(status=TaskStatus.ERROR).items == []
    assert store.repo.counts() == {"Not Started": store.written()[0]}


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    made=st.lists(
        st.tuples(st.integers(-2000, 2000), st.sampled_from(["sandbox", "acme"])),
        min_size=1,
        max_size=8,
    ),
    provider=st.sampled_from([None, "acme"]),
    limit=st.integers(1, 4),
    data=st.data(),
)
def test_a_created_range_lists_what_the_full_listing_holds_in_it(
    store: Store,
    made: list[tuple[int, str]],
    provider: str | None,
    limit: int,
    data: st.DataObject,
) -> None:
    """For any creation times (ties, a clock stepped back), bounds (none, on a creation
    time, a microsecond either side), another filter or none, and page size: the filtered
    listing walked by cursor to its end is the full listing's tasks with created_from <=
    created_at < created_to (and the provider), in id order."""
    with store.repo.engine.begin() as conn:
        conn.execute(events.delete())
        conn.execute(tasks.delete())
    for step_ms, task_provider in made:
        store.clock.step_wall(step_ms / 1000)
        create(store, submission(provider=task_provider))
    full = store.repo.list_tasks(limit=1000).items
    micro = timedelta(microseconds=1)
    bound = st.none() | st.builds(
        lambda moment, shift: moment + shift,
        st.sampled_from(sorted({task.created_at for task in full})),
        st.sampled_from([-micro, timedelta(0), micro]),
    )
    low, high = data.draw(bound, label="created_from"), data.draw(bound, label="created_to")

    seen: list[int] = []
    cursor = None
    while True:
        page = store.repo.list_tasks(
            provider=provider, created_from=low, created_to=high, cursor=cursor, limit=limit
        )
        seen.extend(task.id for task in page.items)
        if page.next_cursor is None:
            break
        assert len(page.items) == limit
        cursor = page.next_cursor

    assert seen == [
        task.id
        for task in full
        if (low is None or low <= task.created_at)
        and (high is None or task.created_at < high)
        and provider in (None, task.provider)
    ]


def test_bad_cursor_is_invalid(store: Store) -> None:
    """A cursor the store never issued raises InvalidTask."""
    with pytest.raises(errors.InvalidTask, match="cursor"):
        store.repo.list_tasks(cursor="Zm9vOmJhcg")


# -- cancel and retry --------------------------------------------------------------------


def test_cancel_ends_unfinished_descendants_only(store: Store) -> None:
    """Cancel ends the task and unfinished descendants; finished ones keep their status."""
    root, child, grandchild, done_child = store.repo.create_many(
        [
            submission(),
            submission(parent_index=0),
            submission(parent_index=1),
            submission(parent_index=0),
        ]
    )
    store.move(done_child, TaskStatus.COMPLETED)

    task, count = store.repo.cancel(root)

    assert task.status is TaskStatus.CANCELLED
    assert count == 2
    assert store.repo.get(child).status is TaskStatus.CANCELLED
    assert store.repo.get(grandchild).status is TaskStatus.CANCELLED
    assert store.repo.get(done_child).status is TaskStatus.COMPLETED
    assert store.repo.events(grandchild)[-1].event == "parent_ended"


def test_cancel_completed_is_illegal(store: Store) -> None:
    """Cancelling a Completed task raises IllegalTransition and writes nothing."""
    task = create(store, submission())
    store.move(task.id, TaskStatus.COMPLETED)
    before = store.written()

    with pytest.raises(errors.IllegalTransition):
        store.repo.cancel(task.id)

    assert store.written() == before


def test_retry_resets_attempts_and_descendants(store: Store) -> None:
    """Retry puts an Error task and its ended descendants back to Not Started with events."""
    root, child = store.repo.create_many([submission(), submission(parent_index=0)])
    store.move(root, TaskStatus.ERROR, attempts=4, last_error="HTTP 500", phase="done")
    store.move(child, TaskStatus.CANCELLED, phase="done")
    store.clock.advance(10)

    task = store.repo.retry(root)

    assert task.status is TaskStatus.NOT_STARTED
    assert task.attempts == 0
    assert task.last_error is None
    assert task.phase is Phase.READY
    assert task.next_attempt_at == START + timedelta(seconds=10)
    assert store.repo.get(child).status is TaskStatus.NOT_STARTED
    assert store.repo.get(child).phase is Phase.WAITING_PARENT
    last = store.repo.events(root)[-1]
    assert (last.event, last.from_status, last.to_status) == (
        "retried",
        TaskStatus.ERROR,
        TaskStatus.NOT_STARTED,
    )


def test_retry_of_a_possibly_created_task_looks_it_up_first(store: Store) -> None:
    """A task whose create may have reached the provider comes back uncertain (looked up
    before any create) and keeps its client reference."""
    task = create(store, submission())
    store.move(task.id, TaskStatus.CANCELLED, maybe_created=True, phase="done")

    retried = store.repo.retry(task.id)

    assert retried.phase is Phase.UNCERTAIN
    assert retried.maybe_created
    assert retried.client_ref == task.client_ref


def test_retry_of_a_child_whose_parent_ended_is_illegal(store: Store) -> None:
    """A child cannot be retried while its parent is Error or Cancelled; nothing changes."""
    root, child = store.repo.create_many([submission(), submission(parent_index=0)])
    store.move(root, TaskStatus.ERROR, phase="done")
    store.move(child, TaskStatus.ERROR, phase="done")
    before = store.written()

    with pytest.raises(errors.IllegalTransition, match=f"parent task {root} is Error"):
        store.repo.retry(child)

    assert store.repo.get(child).status is TaskStatus.ERROR
    assert store.written() == before


def test_retry_of_unfinished_task_is_illegal(store: Store) -> None:
    """Only Error or Cancelled tasks can be retried."""
    task = create(store, submission())

    with pytest.raises(errors.IllegalTransition):
        store.repo.retry(task.id)


def test_database_answers(store: Store) -> None:
    """The readiness query works on both backends."""
    with store.repo.engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


@pytest.mark.parametrize(("count", "spread"), [(5, 1), (5, 2), (2 * IN_CHUNK + 3, 2)])
def test_a_run_summary_counts_only_the_runs_own_tasks(
    store: Store, count: int, spread: int
) -> None:
    """A run's tasks with another run's between them (PostgreSQL draws both from one
    sequence): the summary counts, lists the errors of and sums the events of its own
    only, whether its ids are contiguous, interleaved, or more than one IN chunk. (It read
    the range from the first id to the last, and counted the other run's too.)"""
    ours = [1000 + n * spread for n in range(count)]
    theirs = [i + 1 for i in ours[:-1]] if spread > 1 else []
    store.repo.create_many([submission(id=task_id) for task_id in ours + theirs])
    for task_id in [ours[0], ours[-1], *theirs[:3]]:
        assert store.move(task_id, TaskStatus.ERROR, last_error=f"failed {task_id}")

    summary = repository.summarize(store.repo.engine, ours)

    assert summary.total == count
    assert summary.by_status == {"Error": 2, "Not Started": count - 2}
    assert summary.errors == [
        (ours[0], "campaign", f"failed {ours[0]}"),
        (ours[-1], "campaign", f"failed {ours[-1]}"),
    ]
    assert sum(summary.by_event.values()) == count + 2  # each created, two moved
