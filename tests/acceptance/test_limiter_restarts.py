"""The limiter's Redis flushed or restarted under running workers (a private ``redis-server``
of the test's own, never the shared one): the limit holds at the provider across the loss,
nothing is sent while Redis is down, a known pause is not forgotten, nothing is lost.

The clusters run at the default margin: window holds keep the sliding window at the sandbox
through its own stalls (docs/ratelimit.md); that the cold start lets no grant come early is
proved exactly, on both backends, by the limiter's contract and property tests."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from harness.redis_server import RedisServer, redis_server
from sluice.domain import TaskStatus
from tests.acceptance.conftest import Cluster, campaigns

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]

TASKS = 300
IN_FLIGHT_SETTLE_S = 0.5
"""Requests granted before an event still land for a moment after it."""
CREATE = "POST /v1/campaigns"


@pytest.fixture
def limiter_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own on a spare port, for the limiter only."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with redis_server(tmp_path / "limiter-redis") as server:
        yield server


def creates(cluster: Cluster) -> int:
    stats = cluster.sandbox_stats()
    return sum(stats["requests"].get(CREATE, {}).values())


def create_arrivals(cluster: Cluster) -> list[float]:
    """When each create reached the sandbox, on its clock (POSIX seconds)."""
    log = httpx.get(f"{cluster.sandbox_url}/_sandbox/arrivals", timeout=10).json()
    assert log["dropped"] == 0, "the sandbox's arrival log overflowed"
    return [t for _seq, t, route, _status, _outcome in log["arrivals"] if route == CREATE]


def assert_every_task_once(cluster: Cluster, count: int) -> None:
    assert cluster.counts() == {TaskStatus.COMPLETED.value: count}
    stats = cluster.sandbox_stats()
    cluster.assert_limit_held(stats)
    assert stats["refused_total"] == 0, stats
    assert stats["duplicate_count"] == 0, stats["duplicates"]
    assert stats["objects"]["campaigns"] == {"active": count}


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_the_limit_holds_across_a_redis_flush_and_a_restart(
    limiter_redis: RedisServer, cluster: Cluster
) -> None:
    """Two workers at 20/s while the limiter's Redis is flushed, then shut down for 2 s and
    started empty: the DSP never sees more than 20 in any second and refuses nothing,
    nothing reaches it while Redis is down, and every task is created once."""
    cluster.redis_url = limiter_redis.url
    cluster.start(sandbox={})
    cluster.create(campaigns(TASKS))
    cluster.worker("worker-1", beat=True)
    cluster.worker("worker-2")

    cluster.wait_until(lambda: creates(cluster) >= 60, timeout_s=60, what="60 creates")
    limiter_redis.flushall()
    flushed_at = creates(cluster)
    cluster.wait_until(
        lambda: creates(cluster) >= flushed_at + 60, timeout_s=60, what="60 more creates"
    )
    limiter_redis.stop()
    time.sleep(IN_FLIGHT_SETTLE_S)
    before = creates(cluster)
    time.sleep(2.0)
    during = creates(cluster) - before
    limiter_redis.start()

    cluster.wait_until_final(timeout_s=90)
    assert during == 0, f"{during} creates reached the DSP while the limiter was down"
    assert_every_task_once(cluster, TASKS)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_pause_survives_a_redis_flush(limiter_redis: RedisServer, cluster: Cluster) -> None:
    """A provider pause (written as a 429 would write it: to the limiter and the database) is
    not forgotten when the limiter's Redis is flushed during it: nothing reaches the DSP
    until it ends, and then every task completes."""
    cluster.redis_url = limiter_redis.url
    cluster.start(sandbox={})
    cluster.create(campaigns(120))
    cluster.worker("worker-1", beat=True)
    cluster.worker("worker-2")
    cluster.wait_until(lambda: creates(cluster) >= 20, timeout_s=60, what="20 creates")

    runtime = cluster.runtime
    pause_s = 8.0
    until = datetime.now(UTC) + timedelta(seconds=pause_s)
    runtime.pauses.record("sandbox", until)
    runtime.limiter.pause("sandbox", pause_s)
    time.sleep(IN_FLIGHT_SETTLE_S)
    flushed_at = time.time()
    limiter_redis.flushall()

    cluster.wait_until_final(timeout_s=90)
    # Judged after the fact on the sandbox's own record of when each create arrived: a
    # test that runs late can neither stretch the interval past the pause's end nor
    # miss it, as counts taken around a sleep could (from the flush to the end: 7.5 s).
    during = [t for t in create_arrivals(cluster) if flushed_at <= t < until.timestamp()]
    assert flushed_at < until.timestamp() - 2.0, "the flush came too late to mean anything"
    assert during == [], f"{len(during)} creates reached the DSP during the pause"
    assert_every_task_once(cluster, 120)
