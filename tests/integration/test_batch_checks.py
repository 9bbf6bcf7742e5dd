"""A bulk batch is checked a part at a time while the store writes the part before
(``submissions.create_batch`` over ``TaskRepository.create_in_parts``): whatever the part
size, it answers what checking every item before writing answers, and a refused batch
leaves nothing behind. SQLite and real PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from sluice import errors, submissions
from sluice.catalog import Catalog, ProviderInfo
from sluice.clock import FakeClock
from sluice.domain import Submission
from sluice.store import db
from sluice.store.repository import TaskRepository
from sluice.store.rows import events, tasks

CATALOG = Catalog(
    {"sandbox": ProviderInfo(frozenset({"campaign", "ad_group"}), can_track=True)},
    default_provider="sandbox",
)
HELD_KEY = "held"
"""An idempotency key a stored task of every tenant holds already."""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskRepository]:
    """A repository on a fresh, migrated database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    yield TaskRepository(engine, FakeClock(datetime(2026, 3, 1, tzinfo=UTC)))
    engine.dispose()


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


def _answer(repo: TaskRepository, items: list[dict[str, object]], tenant: str) -> object:
    """What create_batch answers for ``items`` as ``tenant``'s: the error (its type and
    problems or message) or the stored rows, without ids; and what it wrote."""
    before = _written(repo)
    batch = [Submission(tenant=tenant, **item) for item in items]  # type: ignore[arg-type]
    try:
        created = submissions.create_batch(repo, CATALOG, batch)
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
    first row is written): the same problems in the same order, the same conflict, or the
    same tasks; a refused batch writes nothing even when its first parts were written
    before a later one failed its checks. Each side is its own tenant, so neither sees the
    other's tasks or keys; each holds ``HELD_KEY`` already."""
    run = repo.clock.now().timestamp()
    sides = (f"parts-{run}-{part}", f"whole-{run}-{part}")
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

    assert in_parts == whole


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
