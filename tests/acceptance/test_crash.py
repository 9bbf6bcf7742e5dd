"""The crash benchmark's scenario (``python -m bench.crash``), shortened for CI: workers
SIGKILLed and restarted while synchronous creates go out at the limit."""

from __future__ import annotations

import pytest

from bench.crash import Scenario, faults_seen, quota_faults, run_repeat
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


@pytest.mark.timeout(420)  # two settles and a full restart of three workers on a busy host
def test_killed_workers_never_spend_a_quota_twice() -> None:
    """The same with a write quota of 100 a day for 150 creates, the sandbox enforcing
    it too: at most 100 go out and none is refused, the other 50 wait for the reset
    without failing, and once they do, every worker killed at once and started again sends
    no more than the database had left."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)

    run = run_repeat(
        # A day (UTC): the run waits for the next window only within minutes of midnight.
        Scenario(
            tasks=150,
            kills=3,
            quota=100,
            quota_window_s=86_400,
            final_timeout_s=60.0,
            after_restart_s=5.0,
        ),
        seed=4,
    )

    seen = {**faults_seen(run), "quota": run["quota"]}
    assert quota_faults(run) == [], (seen, run["_logs"])
    assert (run["lost"], run["duplicates"], run["refused"]) == (0, 0, 0), (seen, run["_logs"])
    quota = run["quota"]
    # Under-use is bounded by what killed workers held; the rest of the 100 went out.
    assert 0 < quota["sent"] <= 100, seen
    assert run["statuses"]["Completed"] == run["objects_created"] == quota["sent"], seen
    assert quota["waiting_for_reset"] == 150 - quota["sent"], seen
    assert run["kills"] == 3
