"""The features-together soak (``python -m bench.soak_features``), shortened for CI: two
DSPs of the bench's own, trees, polls, lookups, a limit per advertiser, an hourly quota,
tenants with their own credentials and weights, an adaptive rate, a pin, pauses, a bulk
cancel and retry, retention, and the API, one worker and every worker killed, judged from
what the DSPs recorded and the task table."""

from __future__ import annotations

import os
from contextlib import ExitStack

import pytest

from bench.soak_features import A_LIMIT, A_PER_ADV, QUOTA_PER_ADV, Run
from harness.cluster import redis_database
from tests.conftest import require_service

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(900)]


def test_the_features_together_under_kills_keep_every_invariant() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)

    with ExitStack() as stack:
        # SLUICE_TEST_SOAK_REDIS_DBS="11,12" pins the two Redis databases (else claimed).
        wanted = [int(n) for n in os.environ.get("SLUICE_TEST_SOAK_REDIS_DBS", "").split(",") if n]
        broker, limiter = (
            stack.enter_context(redis_database(numbers=wanted[i : i + 1])) for i in range(2)
        )
        run = Run(1.5, (broker, limiter), "sluice_soakf")
        run.start(stack)
        try:
            r = run.go()
        except BaseException:
            print(run.cluster.logs(3000))
            raise
        logs = run.cluster.logs(2000)

    seen = {k: r[k] for k in ("statuses", "stuck", "kills", "controls", "dspa", "dspb")}
    # Every task final, or waiting for the quota's reset (the advertiser that spends it).
    assert r["stuck_count"] == 0, (seen, logs)
    assert r["pruned_unfinished"] == [], seen
    # Each object once, each Completed task's object the one it names, no child first.
    assert r["duplicates"] == {}, seen
    assert r["object_problem_count"] == 0, r["object_problems"]
    assert r["objects_without_task"] == [], seen
    assert r["child_before_parent_count"] == {"dspa": 0, "dspb": 0}, r["child_before_parent"]
    assert r["account_mismatch"] == 0, seen
    # The limits at the DSP that counts a strict sliding second, and the quota.
    dspa = r["dspa"]
    assert dspa["max_calls_in_sliding_s"] <= A_LIMIT, dspa
    assert max(dspa["max_creates_per_adv_in_sliding_s"].values()) <= A_PER_ADV, dspa
    assert "refused" not in dspa["outcomes"], dspa
    assert r["dspb"]["quota_over"] == {}, r["dspb"]
    assert r["dspb"]["writes_per_adv_hour_max"] <= QUOTA_PER_ADV, r["dspb"]
    # Nothing sent while paused (after the second a control takes to reach every worker).
    assert dspa["calls_while_paused"] == 0, dspa
    assert r["dspb"]["calls_while_paused"] == 0, r["dspb"]
    # Each control audited, each bulk job done.
    audit = r["audit"]
    for action in (
        "limit.pin key:dspa:write:advertiser_id=a1",
        "limit.pause provider:dspb",
        "limit.resume provider:dspb",
        "limit.pause provider:dspa",
        "limit.pin provider:dspb",
        "limit.unpin provider:dspb",
    ):
        assert audit.get(action) == 1, audit
    # (tasks.bulk_create, one per bulk create, and tasks.prune are audited too.)
    jobs = ("tasks.bulk_cancel ", "tasks.bulk_retry ")
    assert sum(n for a, n in audit.items() if a.startswith(jobs)) == 2, audit
    assert [job["state"] for job in r["bulk_jobs"]] == ["done", "done"], r["bulk_jobs"]
    assert [k["what"] for k in r["kills"]].count("all workers") == 1, r["kills"]
