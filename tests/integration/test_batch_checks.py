"""A bulk batch is checked a part at a time while the store writes the part before
(``submissions.create_batch`` over ``TaskRepository.create_in_parts``): whatever the part
size, it answers what checking every item before writing answers, and a refused batch
leaves nothing behind. SQLite and real PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from sluice import errors, submissions
from sluice.catalog import Catalog, ProviderInfo
from sluice.clock import FakeClock
from sluice.domain import Actor, Submission
from sluice.store import db
from sluice.store.repository import TaskRepository
from sluice.store.rows import events, tasks

CATALOG = Catalog(
    {"sandbox": ProviderInfo(frozenset({"campaign", "ad_group"}), can_track=True)},
    default_provider="sandbox",
)
HELD_KEY = "held"
"""An idempotency key a stored task of every tenant holds already."""


@pytest.fixture
def repo(engine: Engine) -> TaskRepository:
    """A repository on a fresh, migrated database of each backend (conftest's ``engine``)."""
    return TaskRepository(engine, FakeClock(datetime(2026, 3, 1, tzinfo=UTC)))


@st.composite
def _items(draw: st.DrawFn) -> list[dict[str, object]]:
    """A batch's items as Submission fields (less the tenant), a few of them wrong: a
    missing payload, a parent_index that is not earlier, an unknown kind, an idempotency
    key given twice or held by a stored task."""
    items: list[dict[str, object]] = []
    for index in range(draw(st.integers(1, 12))):
        item: dict[str, object] = {
            "kind": "campaign",
            "payload": {"name": draw(st.sampled_from(["a", "b"]))},
        }
        if index and draw(st.booleans()):
            item.update(kind="ad_group", parent_index=draw(st.integers(0, index - 1)))
        item["idempotency_key"] = draw(st.sampled_from([None, f"k{index}", "k0", HELD_KEY]))
        wrong = draw(st.sampled_from([None] * 12 + ["payload", "parent_index", "kind"]))
        if wrong == "payload":
            item["payload"] = None
        elif wrong == "parent_index":
            item["parent_index"] = index
        elif wrong == "kind":
            item["kind"] = "billboard"
        items.append(item)
    return items


def _answer(
    repo: TaskRepository,
    items: list[dict[str, object]],
    tenant: str,
    create: Callable[..., submissions.Batch] = submissions.create_batch,
) -> object:
    """What ``create`` (create_batch) answers for ``items`` as ``tenant``'s: the error (its
    type and problems or message) or the stored rows, without ids; and what it wrote."""
    before = _written(repo)
    batch = [Submission(tenant=tenant, **item) for item in items]  # type: ignore[arg-type]
    try:
        created = create(repo, CATALOG, batch)
    except submissions.SubmissionInvalid as exc:
        assert _written(repo) == before, "a refused batch wrote something"
        return ("invalid", exc.problems)
    except errors.TaskConflict as exc:
        assert _written(repo) == before, "a conflicting batch wrote something"
        return ("conflict", re.sub(r"task \d+", "task #", str(exc)))  # its own tenant's
    with repo.engine.connect() as conn:
        rows = conn.execute(
            select(tasks.c.kind, tasks.c.payload, tasks.c.parent_id, tasks.c.status, tasks.c.phase)
            .where(tasks.c.id.in_(created.ids))
            .order_by(tasks.c.id)
        ).all()
    first = min(created.ids)
    return (
        "created",
        created.replayed,
        [(*row[:2], row[2] and row[2] - first, *row[3:]) for row in rows],
    )


def _written(repo: TaskRepository) -> tuple[int, int]:
    with repo.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(tasks)).scalar_one(),
            conn.execute(select(func.count()).select_from(events)).scalar_one(),
        )


def _as_before(
    repo: TaskRepository,
    catalog: Catalog,
    items: Sequence[Submission],
    actor: Actor | None = None,
) -> submissions.Batch:
    """create_batch as it was before parts (2a5b416): every item checked, then
    ``create_many``; on a conflict, the replay or the 409."""
    checks = submissions._BatchChecks(items, catalog)
    checks.check_to(len(items))
    if checks.problems:
        raise submissions.SubmissionInvalid(checks.problems)
    try:
        return submissions.Batch(repo.create_many(checks.specs, actor))
    except errors.TaskConflict:
        ids = submissions._replayed(repo, checks.specs) if checks.seen_keys else None
        if ids is None:
            raise
        return submissions.Batch(ids, replayed=True)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=_items(), part=st.integers(1, 4))
def test_a_batch_checked_in_parts_answers_what_checking_it_whole_answers(
    repo: TaskRepository,
    monkeypatch: pytest.MonkeyPatch,
    items: list[dict[str, object]],
    part: int,
) -> None:
    """Parts of 1 to 4 items against one part of everything (every item checked before the
    first row is written) and against the code before parts (check every item, then
    ``create_many``, whose problems-first and replay handling the new code does not share):
    the same problems in the same order, the same conflict, or the same tasks; a refused
    batch writes nothing even when its first parts were written before a later one failed
    its checks. Each side is its own tenant, so none sees the others' tasks or keys; each
    holds ``HELD_KEY`` already."""
    run = repo.clock.now().timestamp()
    sides = (f"parts-{run}-{part}", f"whole-{run}-{part}", f"before-{run}-{part}")
    repo.clock.advance(1)  # type: ignore[attr-defined]
    for tenant in sides:
        submissions.create_batch(
            repo,
            CATALOG,
            [Submission(tenant=tenant, kind="campaign", payload={}, idempotency_key=HELD_KEY)],
        )

    monkeypatch.setattr(submissions, "COPY_PART", part)
    in_parts = _answer(repo, items, sides[0])
    monkeypatch.setattr(submissions, "COPY_PART", 10_000)
    whole = _answer(repo, items, sides[1])
    before = _answer(repo, items, sides[2], _as_before)

    assert in_parts == whole == before


def test_a_batch_sent_again_is_replayed_from_its_parts(
    repo: TaskRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of keyed items created in parts, sent again: the first call's ids, replayed,
    and nothing more written; with a wrong item added at the end, its problem instead."""
    monkeypatch.setattr(submissions, "COPY_PART", 2)
    items = [
        Submission(kind="campaign", payload={"n": n}, idempotency_key=f"k{n}") for n in range(5)
    ]
    first = submissions.create_batch(repo, CATALOG, items)
    before = _written(repo)

    again = submissions.create_batch(repo, CATALOG, items)
    with pytest.raises(submissions.SubmissionInvalid, match="a campaign task needs a payload"):
        submissions.create_batch(repo, CATALOG, [*items, Submission(kind="campaign")])

    assert (again.ids, again.replayed) == (first.ids, True)
    assert _written(repo) == before


def _two_batches_at_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, wrong_last: bool
) -> dict[str, object]:
    """What create_batch answers two batches sent at once on PostgreSQL whose idempotency
    keys overlap in opposite orders (a: k1 then k2, b: k2 then k1), each with a wrong last
    item when ``wrong_last``. Parts of one item; the fourth item of each is checked only
    once both COPYs have stored three rows, so each holds its first key while it goes on
    to insert the other's (PostgreSQL ends one of them as a deadlock)."""
    import threading
    import time

    from sqlalchemy import create_engine, text

    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine, FakeClock(datetime(2026, 3, 1, tzinfo=UTC)))
    watcher = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    big = "x" * 100_000  # a row past psycopg's 32 KiB buffer and the server's 64 KiB batch
    real_check = submissions.check

    def both_copies_wrote(rows: int) -> None:
        """Wait until both COPYs have stored ``rows`` rows or more (keys now held)."""
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            with watcher.connect() as conn:
                done = conn.execute(
                    text(
                        "SELECT tuples_processed FROM pg_stat_progress_copy p "
                        "JOIN pg_database d ON d.oid = p.datid "
                        "WHERE d.datname = current_database()"
                    )
                ).scalars()
                copies = sorted(done)
                if len(copies) >= 2 and copies[-2] >= rows:
                    return
            time.sleep(0.01)

    def check(item: Submission, index: int | None, catalog: Catalog) -> object:
        if index == 3:  # rows 0-2 sent; the third holds this side's first key
            both_copies_wrote(3)
        return real_check(item, index, catalog)

    monkeypatch.setattr(submissions, "check", check)
    monkeypatch.setattr(submissions, "COPY_PART", 1)

    def batch(first: str, second: str) -> list[Submission]:
        keys = [None, None, first, None, second, None]
        items = [Submission(kind="campaign", payload={"big": big}, idempotency_key=k) for k in keys]
        if wrong_last:
            items.append(Submission(kind="campaign"))  # no payload: item 6 is wrong
        return items

    answers: dict[str, object] = {}

    def send(name: str, items: list[Submission]) -> None:
        try:
            created = submissions.create_batch(repo, CATALOG, items)
            answers[name] = "replayed" if created.replayed else "created"
        except submissions.SubmissionInvalid as exc:
            answers[name] = ("invalid", [(p.index, p.field) for p in exc.problems])
        except Exception as exc:  # the answer under test
            answers[name] = type(exc).__name__

    threads = [
        threading.Thread(target=send, args=("a", batch("k1", "k2"))),
        threading.Thread(target=send, args=("b", batch("k2", "k1"))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    watcher.dispose()
    engine.dispose()
    return answers


@pytest.mark.postgres
def test_two_batches_each_with_a_wrong_item_are_refused_though_their_keys_deadlock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two bulk calls at once whose idempotency keys overlap in opposite orders, each with
    a wrong last item: checked before writing, both answered 422 and never reached the
    store. Checked while their parts are written, each holds a key the other inserts next
    (PostgreSQL ends one by a deadlock): still both must answer their problems, not the
    driver's DeadlockDetected (a 500 from the API)."""
    answers = _two_batches_at_once(postgres_url, monkeypatch, wrong_last=True)

    assert answers == {"a": ("invalid", [(6, "payload")]), "b": ("invalid", [(6, "payload")])}


@pytest.mark.postgres
def test_two_batches_whose_keys_deadlock_answer_what_one_after_the_other_would(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same two calls, every item right: one is created; the other answers what it would
    had it come second, a 409 (part of it created before): PostgreSQL ends it as a
    deadlock, and create_batch writes it again once (a second deadlock would be a 503, try
    again). Not the driver's DeadlockDetected, a 500 with a traceback. The deadlock is not
    new (a COPY of several parts could meet it before), but checking each part while
    holding the keys of the parts before keeps the window open for the whole check."""
    answers = _two_batches_at_once(postgres_url, monkeypatch, wrong_last=False)

    assert sorted(map(str, answers.values())) == ["TaskConflict", "created"]
