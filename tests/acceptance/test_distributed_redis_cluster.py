"""Distributed mode on a Redis Cluster limiter (``SLUICE_REDIS_URL=redis+cluster://...``):
``sluice worker`` processes on PostgreSQL ride out the loss of the master serving their
provider's slot, its replica promoted, without a restart and without exceeding the limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from harness.cluster import Broker
from harness.redis_cluster import RedisCluster
from harness.servers import ServerUnavailable
from sluice.domain import TaskStatus
from tests.acceptance.conftest import Cluster, bad_campaign, campaigns, cluster_on
from tests.conftest import service_missing

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.redis_cluster,
    pytest.mark.slow,
    pytest.mark.timeout(400),
]


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[RedisCluster]:
    """Three masters with a replica each, a failure noticed after 2 s (killed at the end)."""
    try:
        nodes = RedisCluster(tmp_path / "redis", replicas=1, node_timeout_ms=2000)
    except ServerUnavailable as exc:
        service_missing(str(exc))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_url: str,
    broker: Broker,
    replicated: RedisCluster,
) -> Iterator[Cluster]:
    yield from cluster_on(
        request,
        tmp_path,
        postgres_url,
        broker.url,
        redis_url=replicated.url,
    )


@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_workers_ride_out_a_failover_of_their_providers_master(
    cluster: Cluster, replicated: RedisCluster
) -> None:
    """The master holding the provider's limiter keys is killed mid-dispatch: its replica
    is promoted, the old master comes back as a replica, and the same three workers finish
    every task with none sent twice and no sliding second over the limit at the sandbox."""
    # The sandbox counts requests in a sliding window: judged as such (a loaded host stamps
    # sends late, which a spacing judge's send window would refuse, not the count).
    cluster.start(sandbox={}, provider={"judges": "window"})
    ids = cluster.create([*campaigns(300), bad_campaign()])
    workers = [cluster.worker("worker-1", beat=True), cluster.worker("worker-2")]
    workers.append(cluster.worker("worker-3"))

    def submitted() -> int:
        return int(cluster.sandbox_stats()["requests"].get("POST /v1/campaigns", {}).get("202", 0))

    cluster.wait_until(lambda: submitted() >= 60, timeout_s=120, what="60 creates")
    master, replicas = replicated.serving(key_slot(b"sandbox"))
    assert replicas, "the provider's master has no replica"
    replicated.kill(master)
    cluster.wait_until(
        lambda: replicated.serving(key_slot(b"sandbox"))[0] in replicas,
        timeout_s=60,
        what="the replica promoted",
    )
    at_failover = submitted()
    replicated.restart(master)

    cluster.wait_until_final(timeout_s=240)

    assert cluster.counts() == {TaskStatus.COMPLETED.value: 300, TaskStatus.ERROR.value: 1}
    assert cluster.runtime.repo.get(ids[-1]).status is TaskStatus.ERROR
    stats = cluster.sandbox_stats()
    cluster.assert_limit_held(stats)
    assert stats["duplicate_count"] == 0, stats["duplicates"]
    assert stats["refused_total"] == 0, stats
    assert stats["objects"]["campaigns"] == {"active": 300, "rejected": 1}
    assert at_failover < 301, "the failover came after the work was done"
    assert all(worker.alive() for worker in workers), cluster.logs()
