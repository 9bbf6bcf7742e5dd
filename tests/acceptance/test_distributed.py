"""Distributed mode end to end: ``sluice sandbox``, ``sluice db upgrade`` and several
``sluice worker`` processes on PostgreSQL, a Redis limiter and each broker."""

from __future__ import annotations

import socket

import pytest

from sluice.domain import TaskStatus
from sluice.settings import Settings
from tests.acceptance.conftest import Cluster, bad_campaign, campaigns

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(150)]

PUMPS = Settings.model_fields["pumps"].default


def test_three_workers_share_one_limit(cluster: Cluster) -> None:
    """Three worker processes finish every task and the DSP never sees more than 20/s."""
    cluster.start(sandbox={})
    ids = cluster.create([*campaigns(150), bad_campaign()])
    cluster.worker("worker-1", beat=True)
    cluster.worker("worker-2")
    cluster.worker("worker-3")

    cluster.wait_until_final(timeout_s=50)

    counts = cluster.counts()
    assert counts == {TaskStatus.COMPLETED.value: 150, TaskStatus.ERROR.value: 1}
    bad = cluster.runtime.repo.get(ids[-1])
    assert bad.status is TaskStatus.ERROR
    assert "budget" in (bad.validation_error or "")
    stats = cluster.sandbox_stats()
    cluster.assert_limit_held(stats)
    assert stats["refused_total"] == 0, stats
    assert stats["duplicate_count"] == 0, stats
    assert stats["objects"]["campaigns"] == {"active": 150, "rejected": 1}
    assert stats["max_in_window"]["app:anonymous"]["max_seen"] >= 15


@pytest.mark.slow
def test_killed_workers_lose_nothing_and_duplicate_nothing(cluster: Cluster) -> None:
    """Workers SIGKILLed mid-submission: a replacement finishes every task, none created twice."""
    cluster.settings.update(SLUICE_CLAIM_LEASE_S="5", SLUICE_RECONCILE_EVERY_S="2")
    cluster.start(
        sandbox={"faults": {"commit_then_timeout": 0.04, "hang_s": 2.0}},
        provider={"timeout": "1s"},
    )
    ids = cluster.create([*campaigns(300), bad_campaign()])
    cluster.worker("worker-1", beat=True)
    victims = [cluster.worker("worker-2"), cluster.worker("worker-3")]

    def submitted() -> int:
        return int(cluster.sandbox_stats()["requests"].get("POST /v1/campaigns", {}).get("202", 0))

    cluster.wait_until(lambda: submitted() >= 80, timeout_s=30, what="80 creates")
    for victim in victims:
        victim.kill()
    cluster.worker("worker-4")

    cluster.wait_until_final(timeout_s=90)

    assert cluster.counts() == {TaskStatus.COMPLETED.value: 300, TaskStatus.ERROR.value: 1}
    assert cluster.runtime.repo.get(ids[-1]).status is TaskStatus.ERROR
    stats = cluster.sandbox_stats()
    cluster.assert_limit_held(stats)
    assert stats["duplicate_count"] == 0, stats["duplicates"]
    assert stats["objects"]["campaigns"] == {"active": 300, "rejected": 1}
    assert stats["faults"].get("commit_then_timeout", 0) > 0, stats["faults"]
    assert stats["refused_total"] == 0, stats
    events = cluster.event_counts()
    # The victims' claimed tasks came back as uncertain, and lookups found the timed-out
    # creates that the DSP had committed instead of sending them again.
    assert events.get("recovered", 0) > 0, events
    assert events.get("found", 0) > 0, events


@pytest.mark.rabbitmq
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_two_sluice_workers_on_one_host(cluster: Cluster) -> None:
    """Two unnamed ``sluice worker`` commands on one host both come up on RabbitMQ.

    Both used to be ``celery@<host>``; the second died on RabbitMQ's exclusive pidbox queue.
    """
    cluster.start(sandbox={})
    workers = [
        cluster.spawn(f"sluice-worker-{n}", ["worker", "--concurrency", "1"]) for n in (1, 2)
    ]

    def settled() -> bool:
        return all(" ready." in w.log.read_text() or not w.alive() for w in workers)

    cluster.wait_until(settled, timeout_s=30, what="both workers ready or dead")
    assert all(w.alive() for w in workers)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_worker_starts_while_the_broker_still_holds_its_old_connection(
    cluster: Cluster,
) -> None:
    """After a partition RabbitMQ holds a worker's old connection (and anything exclusive
    to it) until its heartbeats time out, while the worker has already given it up and
    connects again. Here another connection holds the exclusive queue that Celery's remote
    control declares for the worker's name (``NAME.celery.pidbox``), as the dead one did:
    the worker still takes its pumps and finishes the work. Before, its connection failed
    with RESOURCE_LOCKED and Celery ended the worker ("Unrecoverable error"): after a 75 s
    partition of the broker's host, every worker was gone once it healed."""
    from kombu import Connection

    cluster.start(sandbox={})
    cluster.create(campaigns(20))
    with Connection(cluster.broker_url, connect_timeout=10) as old:
        channel = old.channel()
        channel.queue_declare(f"w1@{socket.gethostname()}.celery.pidbox", exclusive=True)
        worker = cluster.worker("w1", beat=True)
        cluster.wait_until_final(timeout_s=90)
        assert worker.alive(), worker.output()[-3000:]
    assert cluster.counts() == {TaskStatus.COMPLETED.value: 20}


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_beat_without_workers_leaves_at_most_one_round_of_pumps(cluster: Cluster) -> None:
    """With no worker to take them, beat stops sending once SLUICE_PUMPS pumps wait in the
    queue (before, its pumps expired only when a worker took them: they piled up, 4 a
    second, for as long as the workers were away)."""
    assert cluster.broker is not None
    cluster.start(sandbox={})
    beat = cluster.beat(loglevel="DEBUG")
    cluster.wait_until(
        lambda: beat.output().count("beat.pump_skipped") >= 8, 120, "beat to skip pumps"
    )
    assert cluster.broker.queue_length() <= PUMPS
