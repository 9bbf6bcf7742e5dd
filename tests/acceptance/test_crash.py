"""The crash benchmark's scenario (``python -m bench.crash``), shortened for CI: workers
SIGKILLed and restarted while synchronous creates go out at the limit."""

from __future__ import annotations

import pytest

from bench.crash import Scenario, faults_seen, run_repeat
from tests.conftest import require_service

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]


def test_killed_workers_lose_nothing_duplicate_nothing_and_stay_under_the_limit() -> None:
    """150 creates at 40/s, 1 in 25 answers dropped after the create, 3 worker kills: every
    task ends final, no object is created twice, the DSP refuses nothing."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)

    run = run_repeat(Scenario(tasks=150, kills=3, final_timeout_s=60.0), seed=3)

    seen = faults_seen(run)
    assert (run["lost"], run["duplicates"], run["refused"]) == (0, 0, 0), (seen, run["_logs"])
    assert run["statuses"] == {"Completed": 150}, seen
    assert run["objects_created"] == 150, seen
    assert run["max_in_sliding_s"] <= run["limit"], seen
    assert run["kills"] == 3
    # The faults struck: answers dropped after a create, or claims of killed workers recovered.
    assert run["dropped_answers"] + run["events"].get("recovered", 0) > 0, seen
