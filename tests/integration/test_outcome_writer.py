"""The outcome writer on the real PostgreSQL: a batch the database refuses for good (a
value it cannot store) is written again one outcome at a time, so only the outcome at fault
is lost, not every other task's in the batch."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from sluice.domain import Submission, TaskStatus
from sluice.drivers.executor import ThreadExecutor
from sluice.engine import decide
from sluice.providers.base import Accepted
from sluice.ratelimit.memory import MemoryLimiter
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository
from tests.integration.conftest import POLICY


@pytest.mark.postgres
@pytest.mark.parametrize("refused", [[2], [0, 1, 2, 3, 4]], ids=["one", "all"])
def test_one_outcome_the_database_refuses_loses_only_itself(
    postgres_url: str, refused: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """Only the refused outcomes are lost, and the refusal is one log line saying how many
    and whose (not a traceback per outcome: when every outcome is refused, the cause is no
    one outcome's)."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    repo = TaskRepository(engine)
    queue = WorkQueue(engine)
    ids = repo.create_many(
        [Submission(provider="sandbox", kind="campaign", payload={"n": i}) for i in range(5)]
    )
    now = datetime.now(UTC)
    due = {d.id: d for d in queue.claim_due(now, 10, "w", 120.0)}
    # An id longer than the column holds: PostgreSQL refuses it (the provider layer
    # refuses such answers first; this stands for any value the database will not store).
    outcomes = [
        decide.after_submit(
            due[task_id],
            Accepted("x" * 300 if i in refused else f"x-{task_id}", completed=False),
            POLICY,
            now,
        )
        for i, task_id in enumerate(ids)
    ]
    caplog.set_level(logging.INFO, logger="sluice")
    executor = ThreadExecutor(queue, {}, {}, MemoryLimiter(cold_start=False), threads=1)
    try:
        executor._write(outcomes)
    finally:
        executor.close()
    for i, task_id in enumerate(ids):
        task = repo.get(task_id)
        if i in refused:
            assert task.status is TaskStatus.NOT_STARTED
        else:
            assert (task.status, task.external_id) == (TaskStatus.IN_PROGRESS, f"x-{task_id}")
    assert executor.stats.outcomes == len(ids) - len(refused)
    said = [r for r in caplog.records if r.getMessage().startswith("outcomes.")]
    assert [r.getMessage() for r in said] == ["outcomes.write_one_by_one"]
    assert said[0].__dict__["refused"] == len(refused)
    assert said[0].__dict__["task_ids"] == [ids[i] for i in refused]
    engine.dispose()
