"""The outcome writer's fallback after a batch the database refused for good (each outcome
written alone) keeps to the batch's time: a database that then goes away does not hold the
writer for ``WRITE_RETRY_S`` per outcome (a batch holds up to ``WRITE_BATCH`` of them,
so closing, or any outcome after, could wait for hours)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from sluice import errors
from sluice.domain import Outcome, Phase, TaskStatus
from sluice.drivers import executor as executor_module
from sluice.drivers.executor import ThreadExecutor
from sluice.ratelimit.memory import MemoryLimiter


class RefusingThenGone:
    """A work queue whose database refuses a batch for good (one value it cannot store),
    then becomes unreachable for every outcome written alone."""

    def __init__(self) -> None:
        self.singles = 0

    def apply(self, outcomes: list[Outcome], now: datetime) -> int:
        if len(outcomes) > 1:
            raise ValueError("a value the database cannot store")
        self.singles += 1
        raise errors.StoreUnavailable("connection refused", "postgresql://db")


def outcome(task_id: int) -> Outcome:
    return Outcome(
        task_id=task_id,
        from_status=TaskStatus.NOT_STARTED,
        to_status=TaskStatus.IN_PROGRESS,
        phase=Phase.POLLING,
        claim="w",
    )


def test_outcomes_written_alone_give_up_together_when_the_database_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(executor_module, "WRITE_RETRY_S", 0.0)  # each try is the last
    work_queue: Any = RefusingThenGone()
    executor = ThreadExecutor(work_queue, {}, {}, MemoryLimiter(cold_start=False), threads=1)
    try:
        executor._write([outcome(task_id) for task_id in range(1, 51)])
    finally:
        executor.close()
    assert work_queue.singles == 1
    assert executor.stats.outcomes == 0
