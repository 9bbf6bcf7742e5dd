"""Readiness checks of the servers a deployment uses besides its database (``/readyz``)."""

from __future__ import annotations

from sluice.api.deps import ReadinessCheck


def redis_check(url: str) -> ReadinessCheck:
    """A check that pings the Redis server at ``url`` (every primary of a Redis Cluster,
    whose client is made at the first check, so a cluster down at start-up fails the check,
    not the API)."""
    from sluice.ratelimit.redis import Client, connect

    made: list[Client] = []

    def check() -> None:
        if not made:
            made.append(connect(url, socket_timeout=2, socket_connect_timeout=2))
        made[0].ping()

    return check


def broker_check(url: str) -> ReadinessCheck:
    """A check that connects to the Celery broker at ``url``."""
    from kombu.connection import Connection

    def check() -> None:
        with Connection(url, connect_timeout=2) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1)

    return check
