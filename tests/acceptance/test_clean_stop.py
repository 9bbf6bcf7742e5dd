"""SIGTERM drains: ``sluice worker`` and ``sluice up`` stopped mid-run finish the requests in
flight, write their outcomes and give back their other claims, so nothing is left
``submitting`` or ``uncertain`` and nothing needs recovering (real processes, slow DSP)."""

from __future__ import annotations

import signal
import subprocess

import pytest
from sqlalchemy import func, select

from harness.cluster import free_port
from sluice.domain import Phase, TaskStatus
from sluice.store.rows import tasks
from tests.acceptance.conftest import Cluster, campaigns

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]

# Every answer comes 0.5 s late, so several requests are in flight when the signal lands.
SLOW_DSP = {"faults": {"slow": 1.0, "slow_s": 0.5}}
TASKS = 120


def created(cluster: Cluster) -> int:
    """Creates the DSP answered so far."""
    stats = cluster.sandbox_stats()
    return sum(stats["requests"].get("POST /v1/campaigns", {}).values())


def assert_left_clean(cluster: Cluster) -> None:
    """No claim held, nothing mid-submission or uncertain, and every object the DSP created
    is recorded on its task."""
    with cluster.runtime.repo.engine.connect() as conn:
        claimed = conn.scalar(select(func.count()).where(tasks.c.claimed_by.is_not(None)))
        with_ids = conn.scalar(select(func.count()).where(tasks.c.external_id.is_not(None)))
    phases = cluster.phases()
    assert claimed == 0, phases
    assert phases.get(Phase.SUBMITTING.value, 0) == 0, phases
    assert phases.get(Phase.UNCERTAIN.value, 0) == 0, phases
    objects = cluster.sandbox_stats()["objects"]["campaigns"]
    assert with_ids == sum(objects.values()), (with_ids, objects)


def assert_finished_once(cluster: Cluster) -> None:
    assert cluster.counts() == {TaskStatus.COMPLETED.value: TASKS}
    stats = cluster.sandbox_stats()
    assert stats["duplicate_count"] == 0, stats["duplicates"]
    assert sum(stats["objects"]["campaigns"].values()) == TASKS
    assert cluster.event_counts().get("recovered", 0) == 0


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_sigterm_drains_a_worker(cluster: Cluster) -> None:
    """Workers stopped with SIGTERM mid-run leave every task clean; a new worker finishes the
    rest, creating each object once and recovering nothing."""
    cluster.start(sandbox=SLOW_DSP)
    cluster.create(campaigns(TASKS))
    workers = [cluster.worker("worker-1", beat=True), cluster.worker("worker-2")]
    cluster.wait_until(lambda: created(cluster) >= 30, timeout_s=60, what="30 creates")

    for worker in workers:
        worker.terminate()
    for worker in workers:
        assert worker.popen.wait(timeout=60) == 0, worker.output()[-3000:]

    assert created(cluster) < TASKS
    assert_left_clean(cluster)
    cluster.worker("worker-3", beat=True)
    cluster.wait_until_final(timeout_s=90)
    assert_finished_once(cluster)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_sigterm_drains_sluice_up(cluster: Cluster) -> None:
    """``sluice up`` stopped with SIGTERM mid-run exits 0 and leaves every task clean; started
    again, it finishes the rest, creating each object once and recovering nothing."""
    cluster.start(sandbox=SLOW_DSP)
    cluster.create(campaigns(TASKS))
    up = cluster.spawn("up-1", ["up", "--port", str(free_port())])
    cluster.wait_until(lambda: created(cluster) >= 30, timeout_s=60, what="30 creates")

    up.popen.send_signal(signal.SIGTERM)
    try:
        assert up.popen.wait(timeout=60) == 0, up.output()[-3000:]
    except subprocess.TimeoutExpired:
        pytest.fail(f"sluice up did not stop:\n{up.output()[-3000:]}")

    assert created(cluster) < TASKS
    assert_left_clean(cluster)
    cluster.spawn("up-2", ["up", "--port", str(free_port())])
    cluster.wait_until_final(timeout_s=90)
    assert_finished_once(cluster)
