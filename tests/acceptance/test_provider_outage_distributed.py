"""A provider that goes away under Celery workers: its tasks wait for it instead of failing.

The distributed counterpart of ``tests/integration/test_provider_outage.py`` (embedded):
real ``sluice worker`` processes on PostgreSQL, a Redis broker and a Redis limiter (the
suite's :class:`~tests.acceptance.conftest.Cluster`). The sandbox DSP runs in this process
(:class:`SandboxServer`), so that it can stop listening and listen again on the same port
with the objects it made before the outage still there; while it is away a socket bound
to its port (never listening) keeps the port ours, and every connection to it is refused.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from harness.cluster import postgres_database, redis_database, write_toml
from sluice.domain import TaskStatus
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer
from sluice.store.rows import events
from tests.acceptance.conftest import Cluster, campaigns, cluster_on
from tests.conftest import require_service

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(600)]

TASKS = 10
RATE = 4
"""Creates per second: most tasks are still waiting to be created when the outage begins."""
MAX_ATTEMPTS = 2
CREATED_BEFORE = 3
"""Creates the sandbox answers before it goes away (their tasks are then polled)."""
WAIT_S = 120.0
"""Bound on each wait (generous: a loaded 2-core host); never a sleep for correctness."""
OUTAGE_WAIT_S = 300.0
"""Bound on the outage: every failed connect takes a grant (4/s), and they do not go to the
waiting tasks evenly (on a loaded host one task of 16 failed 3 times while the others failed
22-34 times, 93 s into the outage)."""
REDIS_DBS = (15, 14, 13, 12, 11, 10)
"""The Redis databases this test may claim (broker and limiter)."""


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster on a database of its own and two Redis databases of 10-15 (the broker's
    and the limiter's): nothing shared with other checkouts' tests."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)
    with (
        postgres_database(prefix="sluice_outage_dist") as database_url,
        redis_database(numbers=REDIS_DBS) as broker_url,
        redis_database(numbers=REDIS_DBS) as limiter_url,
    ):
        yield from cluster_on(request, tmp_path, database_url, broker_url, redis_url=limiter_url)


def _unreachable_events(cluster: Cluster) -> dict[int, int]:
    with cluster.runtime.repo.engine.connect() as conn:
        rows = conn.execute(
            select(events.c.task_id, func.count())
            .where(events.c.event == "unreachable")
            .group_by(events.c.task_id)
        )
        return {task_id: count for task_id, count in rows}


def _failures(cluster: Cluster) -> dict[int, list[str]]:
    """The details of every ``attempt_failed`` event, by task: the attempts spent."""
    with cluster.runtime.repo.engine.connect() as conn:
        rows = conn.execute(
            select(events.c.task_id, events.c.detail).where(events.c.event == "attempt_failed")
        )
        found: dict[int, list[str]] = {}
        for task_id, detail in rows:
            found.setdefault(task_id, []).append(detail or "")
        return found


def _creates(stats: dict[str, Any]) -> int:
    return int(stats["requests"].get("POST /v1/campaigns", {}).get("202", 0))


def test_workers_wait_out_a_provider_outage_without_spending_attempts(cluster: Cluster) -> None:
    """The sandbox stops listening while tasks wait to be created or polled, and stays away
    until every waiting task has failed to connect more often than ``max_attempts``
    allows; none ends in Error, and none spent an attempt on it. Back on the same port, it
    sees every object created once, and every task completes."""
    sandbox = SandboxServer(
        SandboxConfig.from_settings(
            {
                "profile": "standard",
                "limits": [{"name": "app", "limit": RATE, "window_s": 1.0}],
                "accept_delay_s": [0.0, 0.0],
                # Created objects stay in processing a while: their tasks are polled
                # during the outage.
                "process_delay_s": [1.0, 1.0],
            }
        ),
        port=0,
    )
    cluster.sandbox_url = sandbox.start()
    port = sandbox.port
    placeholder: socket.socket | None = None
    try:
        write_toml(
            cluster.config,
            {
                "sluice": {"default_provider": "sandbox"},
                "providers.sandbox": {
                    "preset": "sandbox-standard",
                    "base_url": cluster.sandbox_url,
                    "rate_limit": f"{RATE}/s",
                    "max_attempts": MAX_ATTEMPTS,
                    "retry_base": "50ms",
                    "retry_max": "200ms",
                    "poll": {"interval": "100ms"},
                },
            },
        )
        cluster.upgrade_database()
        ids = cluster.create(campaigns(TASKS, prefix=f"outage-{uuid.uuid4().hex[:6]}-"))
        workers = [cluster.worker("worker-1", beat=True), cluster.worker("worker-2")]
        cluster.wait_ready(workers)
        cluster.wait_until(
            lambda: _creates(cluster.sandbox_stats()) >= CREATED_BEFORE,
            timeout_s=WAIT_S,
            what=f"{CREATED_BEFORE} creates",
        )

        sandbox.stop()  # the port is closed: connections to it are refused
        placeholder = socket.socket()
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        placeholder.bind(("127.0.0.1", port))  # bound, never listening: the port stays ours
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

        repo = cluster.runtime.repo
        waiting: list[int] = []

        def waited_out() -> bool:
            tasks = [repo.get(t) for t in ids]
            ended = [t for t in tasks if t.status.is_final and t.status is not TaskStatus.COMPLETED]
            if ended:
                pytest.fail(
                    "ended during the outage: "
                    f"{[(t.id, t.status.value, t.last_error) for t in ended]}; "
                    f"unreachable events per task: {_unreachable_events(cluster)}"
                )
            waiting[:] = [t.id for t in tasks if not t.status.is_final]
            seen = _unreachable_events(cluster)
            return bool(waiting) and all(seen.get(t, 0) > MAX_ATTEMPTS for t in waiting)

        cluster.wait_until(
            waited_out,
            timeout_s=OUTAGE_WAIT_S,
            what=f"every waiting task to fail to connect more than {MAX_ATTEMPTS} times",
        )
        # Still in the outage: no waiting task spent an attempt on a failed connection. A
        # request already on its way when the sandbox closed its connections may have been
        # cut (a dropped connection is a failed attempt, rightly): only such an attempt may
        # have been counted.
        failures = _failures(cluster)
        spent_on_connects = {
            t: details
            for t, details in failures.items()
            if any("could not connect" in d for d in details)
        }
        assert spent_on_connects == {}, spent_on_connects
        attempts = {t: repo.get(t).attempts for t in waiting}
        assert {t: n for t, n in attempts.items() if n and t not in failures} == {}, (
            attempts,
            failures,
        )
        assert all(n < MAX_ATTEMPTS for n in attempts.values()), attempts

        placeholder.close()
        placeholder = None
        sandbox.start()  # the same port, the objects made before the outage kept
        cluster.wait_until_final(timeout_s=WAIT_S)
        stats = cluster.sandbox_stats()
    finally:
        if placeholder is not None:
            placeholder.close()
        sandbox.stop()

    final = {t: repo.get(t) for t in ids}
    ended = {t: task.status for t, task in final.items()}
    assert ended == dict.fromkeys(ids, TaskStatus.COMPLETED), {
        t: task.last_error for t, task in final.items()
    }
    assert stats["duplicate_count"] == 0, stats["duplicates"]
    assert stats["objects"]["campaigns"] == {"active": TASKS}, stats["objects"]
    assert _creates(stats) == TASKS, stats["requests"]
    unreachable = _unreachable_events(cluster)
    assert set(waiting) <= set(unreachable), unreachable
