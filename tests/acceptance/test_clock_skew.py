"""Hosts whose clocks disagree: the beat on one host, workers on another.

Each skewed process runs with ``harness/skewed_clock`` (its ``time.time`` and
``datetime.now`` read off by a fixed amount; the monotonic clock untouched), as if it ran on
a host whose clock is wrong. Before, beat's pumps expired at an absolute time on beat's
clock and each worker judged that time on its own: with beat's clock 5 s behind the
workers', every pump was discarded as expired ("Discarding revoked task" at INFO), nothing
was ever sent, and every worker looked healthy (200 tasks Not Started after 5 minutes).
"""

from __future__ import annotations

import pytest

from harness.cluster import skewed_clock_env
from sluice.domain import TaskStatus
from tests.acceptance.conftest import Cluster, campaigns

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(240)]

TASKS = 40
SKEW_S = 30.0


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_work_flows_when_beats_clock_is_behind_the_workers(cluster: Cluster) -> None:
    cluster.start(sandbox={})
    cluster.create(campaigns(TASKS))
    workers = [cluster.worker("worker-1"), cluster.worker("worker-2")]
    cluster.wait_ready(workers)
    cluster.beat(env=skewed_clock_env(-SKEW_S))

    cluster.wait_until_final(timeout_s=150)

    assert cluster.counts() == {TaskStatus.COMPLETED.value: TASKS}
    stats = cluster.sandbox_stats()
    cluster.assert_limit_held(stats)
    assert stats["duplicate_count"] == 0, stats


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_work_flows_when_a_workers_clock_is_ahead_of_beats(cluster: Cluster) -> None:
    cluster.start(sandbox={})
    cluster.create(campaigns(TASKS))
    worker = cluster.spawn(
        "worker-1",
        ["worker", "--hostname", "worker-1@%h", "--concurrency", "2", "--loglevel", "INFO"],
        env=skewed_clock_env(SKEW_S),
    )
    cluster.wait_ready([worker])
    cluster.beat()

    cluster.wait_until_final(timeout_s=150)

    assert cluster.counts() == {TaskStatus.COMPLETED.value: TASKS}
