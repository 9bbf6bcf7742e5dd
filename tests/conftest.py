"""Shared fixtures: a clean environment, and real services or a clear skip/fail.

Tests that need PostgreSQL, Redis or RabbitMQ use the real servers on this machine. When a
server is missing they skip locally and *fail* under ``SLUICE_REQUIRE_SERVICES=1`` (CI).
Hypothesis uses the ``ci`` profile (fixed seed) when ``CI=true``.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest
from hypothesis import settings

# CI runs every property and state machine on a fixed sequence of examples (derandomize),
# so a red build replays locally; elsewhere each run explores new examples. No deadline:
# a loaded 2-core host is slow by moments, and speed is a benchmark's business.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true") else "dev")

PG_ADMIN_URL = os.environ.get(
    "SLUICE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("SLUICE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


ACCEPTANCE = os.path.join("tests", "acceptance", "")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs two workers), every acceptance test goes to
    one worker, one after another: each starts its own cluster of processes and checks
    limits and crashes at a loaded host, and two at once on 2 cores would be a heavier
    load than they are written for. The other worker takes the unit and integration
    tests meanwhile (``--dist loadgroup``)."""
    for item in items:
        if ACCEPTANCE in str(item.path):
            item.add_marker(pytest.mark.xdist_group("acceptance"))


@pytest.fixture(autouse=True)
def _clean_sluice_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every test starts with no SLUICE_* variables and no stray sluice.toml."""
    for name in list(os.environ):
        if name.startswith("SLUICE_") and not name.startswith("SLUICE_TEST_"):
            if name == "SLUICE_REQUIRE_SERVICES":
                continue
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or fail under SLUICE_REQUIRE_SERVICES=1) when a service is not reachable."""
    if not _port_open(host, port):
        service_missing(f"{name} is not reachable at {host}:{port}")


def service_missing(message: str) -> NoReturn:
    """Skip the test, saying why; under SLUICE_REQUIRE_SERVICES=1 (CI) fail it instead."""
    if os.environ.get("SLUICE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} and SLUICE_REQUIRE_SERVICES=1")
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import sqlalchemy as sa

    name = f"sluice_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    """The real Redis server; keys this test writes are namespaced by the caller."""
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Redis Cluster of three masters started from the local ``redis-server`` on
    spare ports (never 6379), shared by the session's tests and killed at its end; tests
    keep to their own namespaces. Its URL is ``redis+cluster://127.0.0.1:P1,127.0.0.1:P2``."""
    from harness.redis_cluster import RedisCluster
    from harness.servers import ServerUnavailable

    try:
        cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    except ServerUnavailable as exc:
        service_missing(str(exc))
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def rabbitmq_url() -> str:
    """The real RabbitMQ server."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    return RABBITMQ_URL
