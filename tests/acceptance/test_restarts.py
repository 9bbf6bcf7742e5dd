"""PostgreSQL and RabbitMQ restarted under a running cluster, on private servers.

Each test starts its own server from the machine's binaries on spare ports
(:mod:`harness.servers`) and restarts that one; the shared servers are never touched.
What must hold: requests during a database outage get a clear 503 JSON answer and
``/readyz`` says why; workers reconnect by themselves; afterwards every task ends final,
and the sandbox saw each object created exactly once (none lost, none created twice).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.api_server import api_only_settings, serve_api
from harness.cluster import Broker, ClusterError, free_port, open_broker
from harness.servers import PostgresServer, RabbitMQServer, ServerUnavailable
from sluice import submissions
from sluice.domain import Phase, TaskStatus, WorkUnit
from sluice.drivers.celery_app import celery_config
from sluice.drivers.executor import ThreadExecutor
from sluice.runtime import build_runtime
from sluice.settings import load_settings
from tests.acceptance.conftest import RATE_MARGIN, Cluster, bad_campaign, campaigns, cluster_on
from tests.conftest import require_service, service_missing
from tests.integration.conftest import running_sandbox

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]

TASKS = 100
BROKER_TASKS = 300
"""The broker test's work: workers go on pumping while the broker is being stopped (a
graceful stop can take seconds), and 100 tasks were sometimes all done by the time it was
down (fresh-clone CI, 2026-12-03), leaving no outage to test."""
PASSWORD = "restart-pa55"
# How long each server stays down (an outage long enough for every process to notice).
OUTAGE_S = 4.0
# Short leases and frequent reconciles, so work claimed before the outage comes back soon.
SETTINGS = {
    "SLUICE_LOG_LEVEL": "INFO",
    "SLUICE_RATE_MARGIN": str(RATE_MARGIN),
    "SLUICE_CLAIM_LEASE_S": "5",
    "SLUICE_RECONCILE_EVERY_S": "2",
}


def _private(make: Callable[[], Any]) -> Any:
    """A private server, or a skip (a failure under SLUICE_REQUIRE_SERVICES=1)."""
    try:
        return make()
    except ServerUnavailable as exc:
        service_missing(str(exc))


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, started, with a database ``sluice``."""
    server: PostgresServer = _private(PostgresServer.create)
    try:
        server.start()
        server.create_database("sluice")
        yield server
    finally:
        server.destroy()


@pytest.fixture
def private_rabbitmq() -> Iterator[RabbitMQServer]:
    """A RabbitMQ node of this test's own, started."""
    server: RabbitMQServer = _private(RabbitMQServer)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def redis_broker() -> Iterator[Broker]:
    require_service("Redis", "127.0.0.1", 6379)
    opened = open_broker("redis", uuid.uuid4().hex[:10])
    try:
        yield opened
    finally:
        opened.cleanup()


def completed(cluster: Cluster) -> int:
    return cluster.counts().get(TaskStatus.COMPLETED.value, 0)


def assert_every_object_created_once(cluster: Cluster, tasks: int = TASKS) -> None:
    """All tasks final as expected, and the sandbox holds each campaign exactly once."""
    assert cluster.counts() == {TaskStatus.COMPLETED.value: tasks, TaskStatus.ERROR.value: 1}
    stats = cluster.sandbox_stats()
    assert stats["duplicate_count"] == 0, stats
    assert stats["objects"]["campaigns"] == {"active": tasks, "rejected": 1}, stats


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with suppress(httpx.TransportError):
            if predicate():
                return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def pg_cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    private_postgres: PostgresServer,
    redis_broker: Broker,
) -> Iterator[Cluster]:
    """A cluster whose database lives on the private PostgreSQL server."""
    url = private_postgres.url("sluice", password=PASSWORD)
    yield from cluster_on(request, tmp_path, url, redis_broker.url, SETTINGS)


def test_postgresql_restart_under_api_and_workers(
    pg_cluster: Cluster, private_postgres: PostgresServer
) -> None:
    """While PostgreSQL is down the API answers 503 JSON and /readyz says why; after it is
    back the workers carry on by themselves and every campaign is created exactly once."""
    cluster = pg_cluster
    cluster.start(sandbox={})
    ids = cluster.create([*campaigns(TASKS), bad_campaign()])
    api_url = f"http://127.0.0.1:{free_port()}"
    cluster.spawn("api", ["api", "--port", api_url.rsplit(":", 1)[1]])
    wait_for(lambda: httpx.get(f"{api_url}/healthz").status_code == 200, 30, "the API")
    workers = [cluster.worker("worker-1", beat=True), cluster.worker("worker-2")]
    cluster.wait_ready(workers)
    cluster.wait_until(lambda: completed(cluster) >= 15, 60, "15 tasks completed")

    private_postgres.stop("fast")
    answers = [
        httpx.get(f"{api_url}/api/tasks/{ids[-1]}", timeout=10),
        httpx.post(f"{api_url}/api/tasks", json={"id": 9_000, "status": "Not Started"}),
        httpx.get(f"{api_url}/api/tasks?status=Completed", timeout=10),
    ]
    ready = httpx.get(f"{api_url}/readyz", timeout=10)
    time.sleep(OUTAGE_S)  # the outage lasts a while: pumps, claims and writes fail meanwhile
    private_postgres.start()

    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["detail"].startswith("database unavailable: "), answer.text
        assert PASSWORD not in answer.text
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"].startswith(
        "error: StoreUnavailable: database unavailable: "
    )
    assert PASSWORD not in ready.text
    wait_for(lambda: httpx.get(f"{api_url}/readyz").status_code == 200, 30, "/readyz to recover")
    assert httpx.get(f"{api_url}/api/tasks/{ids[-1]}").status_code == 200

    cluster.wait_until_final(timeout_s=120)

    assert_every_object_created_once(cluster)
    assert all(proc.alive() for proc in cluster.procs), "a process died during the outage"


def test_an_outcome_answered_while_postgresql_is_down_is_written_once_it_is_back(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    """The provider answers while the database restarts: the writer tries the outcome again
    until the database is back, rather than leaving the task claimed for the reconciler
    (a lease later, and a lookup at the provider before anything else). Before, the one
    failed write was logged and the outcome dropped."""
    settings = {
        "database_url": private_postgres.url("sluice", password=PASSWORD),
        "default_provider": "sandbox",
    }
    with running_sandbox() as base_url:
        provider = {"preset": "sandbox-standard", "base_url": base_url, "rate_limit": None}
        runtime = build_runtime(load_settings(**settings, providers={"sandbox": provider}))
        executor = ThreadExecutor(
            runtime.queue, runtime.providers, runtime.clients, runtime.limiter, threads=2
        )
        try:
            submissions.create_tasks(runtime.repo, runtime.catalog, campaigns(1))
            (task,) = runtime.queue.claim_due(datetime.now(UTC), 10, "w", 120.0)
            private_postgres.stop("fast")
            executor.submit(WorkUnit("sandbox", task.operation, (task,)), None)
            time.sleep(OUTAGE_S)  # the answer is in; its writes fail meanwhile
            assert not executor.idle()
            private_postgres.start()
            wait_for(executor.idle, 30, "the outcome to be written")
            assert executor.stats.outcomes == 1
            stored = runtime.repo.get(task.id)
            assert stored.external_id is not None
            assert stored.phase is Phase.POLLING  # submitted, its status polled next
            assert "recovered" not in [e.event for e in runtime.repo.events(task.id)]
        finally:
            executor.close()
            runtime.close()


def test_readyz_answers_while_postgresql_hangs(private_postgres: PostgresServer) -> None:
    """A database that stops answering (its processes stopped: connections stay open, and
    new ones are accepted but never served) makes /readyz answer 503 naming the timeout,
    not hang: before, each probe waited as long as the database did (over 60 s here), and
    a load balancer saw no answer at all. Once the database answers again, so does
    /readyz, 200.

    The first probe gives up after the check's 5 s; the second waits for the same run, which
    may end meanwhile with the new connection's own 10 s timeout (then it names that: a
    race the CI lost at load 13), so either answer is right there."""
    url = private_postgres.url("sluice", password=PASSWORD)
    runtime = build_runtime(api_only_settings(url))
    try:
        with serve_api(runtime) as api_url:
            wait_for(lambda: httpx.get(f"{api_url}/readyz").status_code == 200, 60, "/readyz")
            private_postgres.freeze()
            try:
                answers = [httpx.get(f"{api_url}/readyz", timeout=60) for _ in range(2)]
            finally:
                private_postgres.thaw()
            for n, answer in enumerate(answers):
                assert answer.status_code == 503, answer.text
                database = answer.json()["checks"]["database"]
                timed_out = database.startswith("error: ReadinessTimeout")
                connect_expired = database.startswith(
                    "error: StoreUnavailable: database unavailable: connection timeout expired"
                )
                assert timed_out or (n == 1 and connect_expired), answer.text
                assert PASSWORD not in answer.text
            wait_for(lambda: httpx.get(f"{api_url}/readyz").status_code == 200, 60, "/readyz again")
    finally:
        runtime.close()


@pytest.fixture
def rabbitmq_cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_url: str,
    private_rabbitmq: RabbitMQServer,
) -> Iterator[Cluster]:
    """A cluster whose broker is the private RabbitMQ node."""
    yield from cluster_on(request, tmp_path, postgres_url, private_rabbitmq.url, SETTINGS)


@pytest.mark.rabbitmq
def test_rabbitmq_restart_under_workers(
    rabbitmq_cluster: Cluster, private_rabbitmq: RabbitMQServer
) -> None:
    """After the broker restarts, the workers reconnect by themselves, every task ends final
    and every campaign is created exactly once."""
    cluster = rabbitmq_cluster
    cluster.start(sandbox={})
    cluster.create([*campaigns(BROKER_TASKS), bad_campaign()])
    workers = [cluster.worker("worker-1", beat=True), cluster.worker("worker-2")]
    try:
        cluster.wait_ready(workers)
    except ClusterError as exc:
        pytest.fail(str(exc))
    cluster.wait_until(lambda: completed(cluster) >= 15, 60, "15 tasks completed")

    private_rabbitmq.stop()
    time.sleep(OUTAGE_S)  # the outage lasts a while: beat's sends and pumps fail meanwhile
    progress_while_down = completed(cluster)
    private_rabbitmq.start()

    cluster.wait_until_final(timeout_s=150)

    assert_every_object_created_once(cluster, BROKER_TASKS)
    assert progress_while_down < BROKER_TASKS, "the outage came too late to test anything"
    assert all(proc.alive() for proc in cluster.procs), "a worker died during the outage"


def test_a_command_against_a_hung_database_gives_up_with_one_line(
    private_postgres: PostgresServer,
) -> None:
    """A database that accepts connections but never answers (its processes stopped) kept
    `sluice status --once` waiting 130 s, psycopg's own connect timeout (each of the
    engine's reconnects and the API's new connections waited as long). It now gives up
    after 10 s with one line naming the database, password masked, and exit code 2."""
    url = private_postgres.url("sluice", password=PASSWORD)
    command = [sys.executable, "-m", "sluice", "status", "--once"]
    env = {**os.environ, "SLUICE_DATABASE_URL": url, "SLUICE_REDIS_URL": ""}
    private_postgres.freeze()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("sluice status waited over 90 s for a database that does not answer")
    finally:
        private_postgres.thaw()

    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "database unavailable" in line
    assert "timeout" in line
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.rabbitmq
def test_beat_logs_one_traceback_per_broker_outage(
    private_rabbitmq: RabbitMQServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Beat's sends that fail while the broker is down are one ERROR with a traceback per
    outage, and a line when they get through again. Celery's scheduler logged a traceback
    (and the whole stack) for every pump every second: a 44 s RabbitMQ restart under
    ``sluice beat`` wrote 280 tracebacks, 7,684 lines."""
    from celery import Celery

    from tests.unit.test_celery_beat import beat_scheduler

    app = Celery("beat-outage", set_as_current=False)
    app.conf.update(celery_config(load_settings(broker_url=private_rabbitmq.url, pumps=50)))
    scheduler = beat_scheduler(app)
    entry = scheduler.schedule["sluice-pump-0"]
    caplog.set_level(logging.DEBUG)
    try:
        scheduler.apply_entry(entry, producer=scheduler.producer)
        for _ in range(2):  # two outages
            private_rabbitmq.stop()
            for _ in range(5):
                scheduler.apply_entry(entry, producer=scheduler.producer)
            private_rabbitmq.start()
            scheduler.apply_entry(entry, producer=scheduler.producer)
    finally:
        scheduler.close()

    def records(name: str, level: int) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == name and r.levelno == level]

    failed = records("beat.send_failed", logging.ERROR)
    assert len(failed) == 2, [r.getMessage() for r in caplog.records]
    assert all(r.exc_info for r in failed)
    assert len(records("beat.send_failed", logging.DEBUG)) == 8
    assert len(records("beat.send_recovered", logging.INFO)) == 2
    celery_errors = [r for r in caplog.records if r.name.startswith("celery") and r.levelno >= 40]
    assert celery_errors == []
