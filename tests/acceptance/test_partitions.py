"""True network partitions between hosts (network namespaces on this machine, each packet
dropped in silence: :mod:`harness.netns`), not stopped or killed servers.

Each test builds its own hosts and private servers on them (never the shared ones), and
deletes them at its end. They need root and iproute2: without them they skip, and fail
under ``SLUICE_REQUIRE_SERVICES=1``. ``python -m harness.partitions`` runs the longer
measuring round (every server cut in turn under a rate-limited workload).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from harness.cluster import ClusterError
from harness.netns import Network
from harness.partitions import create_campaigns, partitioned_cluster, unfinished
from harness.servers import PostgresServer, ServerUnavailable
from tests.conftest import service_missing

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(240)]


def _private(make: Callable[[], Any]) -> Any:
    """What ``make`` builds, or a skip (a failure under SLUICE_REQUIRE_SERVICES=1)."""
    try:
        return make()
    except (ServerUnavailable, ClusterError) as exc:
        service_missing(str(exc))


@pytest.fixture
def network() -> Iterator[Network]:
    built = Network()
    try:
        _private(built.start)
        yield built
    finally:
        built.destroy()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as opened:
        yield opened


def poll(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


CLIENT = """
import sys, time
from sqlalchemy import text
from sluice.store.db import make_engine

engine = make_engine(sys.argv[1])
with engine.connect() as conn:
    print(conn.execute(text("SELECT pg_backend_pid()")).scalar_one(), flush=True)
    conn.execute(text("SELECT id FROM claimed WHERE id = 1 FOR UPDATE"))
    time.sleep(600)
"""
"""A worker's session caught by a partition inside a transaction, holding a row lock."""


def test_the_server_ends_the_session_of_a_client_cut_off_by_a_partition(
    network: Network, tmp_path: Path
) -> None:
    """A client host holding a transaction (a row locked) is cut off: the server ends
    that session, and the lock is free, once the client's own keepalives would have
    given up (short ones here, from the URL). Before, the server kept the session, and
    the lock, for its kernel's two hours of keepalive silence; the client had long given
    up and reconnected, and each partition left its sessions behind on the server."""
    network.add_host("db")
    client = network.add_host("client")
    server: PostgresServer = _private(
        lambda: PostgresServer.create(
            host=network.hosts["db"].address, prefix=network.run_prefix("db")
        )
    )
    admin = sa.create_engine(
        server.url("postgres").replace("://", "+psycopg://", 1), poolclass=NullPool
    )
    proc: subprocess.Popen[str] | None = None
    try:
        server.start()
        server.create_database("sluice")
        database = sa.create_engine(
            server.url("sluice").replace("://", "+psycopg://", 1), poolclass=NullPool
        )
        with database.begin() as conn:
            conn.execute(sa.text("CREATE TABLE claimed (id int PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO claimed VALUES (1)"))
        # Found dead 3 s idle + 2 probes 1 s apart after the cut (the defaults take 60 s).
        url = server.url("sluice") + "?keepalives_idle=3&keepalives_interval=1&keepalives_count=2"
        proc = subprocess.Popen(
            [*network.run_prefix("client"), sys.executable, "-c", CLIENT, url],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        backend = int(proc.stdout.readline())

        def locked() -> bool:
            query = sa.text(
                "SELECT count(*) FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation"
                " WHERE l.pid = :pid AND c.relname = 'claimed' AND l.mode = 'RowShareLock'"
            )
            with database.begin() as conn:
                return bool(conn.execute(query, {"pid": backend}).scalar_one())

        def session_open() -> bool:
            with admin.connect() as conn:
                query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
                return bool(conn.execute(query, {"pid": backend}).scalar_one())

        assert poll(locked, 30), "the client never took its lock"
        network.partition(client.name)

        assert poll(lambda: not session_open(), 60), (
            "the server still holds the partitioned client's session 60 s after the cut"
        )
        with database.begin() as conn:
            conn.execute(sa.text("SET lock_timeout = '5s'"))
            conn.execute(sa.text("SELECT id FROM claimed WHERE id = 1 FOR UPDATE NOWAIT"))
        database.dispose()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        network.heal(client.name)
        admin.dispose()
        server.destroy()


BROKER_TASKS = 300
BROKER_GIVE_UP_S = 80.0
"""Longer than a Redis broker's idle connection takes to be found dead (about 40 s: a
keepalive probe from 30 s of silence, and the 30 s user timeout at the next); a connection
in use gives up sooner (a command's 10 s socket timeout, the consumer's BRPOP check)."""


@pytest.mark.redis
@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"])
def test_workers_and_beat_give_up_on_a_partitioned_broker_and_carry_on_after_it_heals(
    tmp_path: Path, stack: ExitStack, broker_kind: str
) -> None:
    """The Redis broker's host is cut off from two workers (the first with beat) mid-run:
    every connection they held to it is given up while the partition lasts, and after it
    heals they go on by themselves: every task ends Completed, each campaign created once,
    the provider's limit never exceeded in any sliding second. Before, kombu's Redis
    transport had no socket timeout and no keepalives: the connections stayed open,
    unanswered, for as long as the kernel retransmits (about 15 minutes), and beat sent
    no pump until a retransmission got through after the heal (33 s after a 75 s cut).
    On RabbitMQ (py-amqp's own TCP settings give up within seconds) every worker used to
    die once the cut healed: the broker still held their old connections' exclusive
    remote-control queues, and Celery took RESOURCE_LOCKED for an unrecoverable error."""
    try:
        setup = stack.enter_context(partitioned_cluster(tmp_path, broker_kind=broker_kind))
    except (ServerUnavailable, ClusterError) as exc:
        service_missing(str(exc))
    try:
        setup.wait_ready()
        create_campaigns(setup, BROKER_TASKS, "c")
        poll(lambda: setup.creates() >= 40, 120)
        held = {worker: setup.established(worker, "broker") for worker in setup.workers}
        assert all(held.values()), held

        def still_open() -> dict[str, set[int]]:
            now = {
                worker: ports & setup.established(worker, "broker")
                for worker, ports in held.items()
            }
            return {worker: ports for worker, ports in now.items() if ports}

        setup.partition("broker")
        given_up = poll(lambda: not still_open(), BROKER_GIVE_UP_S)
        left = still_open()
        setup.heal("broker")
        assert given_up, (
            f"connections to the broker still open {BROKER_GIVE_UP_S:g} s into the cut: {left}"
        )

        assert poll(lambda: unfinished(setup) == 0, 120), f"{unfinished(setup)} tasks unfinished"
        stats = setup.sandbox_stats()
        assert stats["duplicate_count"] == 0, stats["duplicates"]
        assert stats["refused_total"] == 0, stats
        assert stats["objects"]["campaigns"] == {"active": BROKER_TASKS}, stats
        for key, window in stats["max_in_window"].items():
            assert window["max_seen"] <= window["limit"], f"{key}: {window}"
        assert all(proc.alive() for proc in setup.cluster.procs), "a process died"
    except BaseException:
        sys.stderr.write(setup.cluster.logs() + "\n")
        raise
