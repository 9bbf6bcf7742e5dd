"""A Redis broker's connections time out and keep alive; RabbitMQ's keep py-amqp's own."""

from __future__ import annotations

import socket

import pytest
from celery import Celery

from sluice.drivers.celery_app import celery_config
from sluice.settings import load_settings


@pytest.mark.parametrize("url", ["redis://10.0.0.9:6379/1", "rediss://10.0.0.9:6380/1"])
def test_a_redis_brokers_connections_give_up_on_a_silent_server(url: str) -> None:
    """Kombu's Redis transport waits for ever by default: a partition between a worker (or
    beat) and the broker left their connections open and unanswered for about 15 minutes
    (tests/acceptance/test_partitions.py cuts one for real)."""
    app = Celery("sluice-test")
    app.conf.update(celery_config(load_settings(broker_url=url)))
    options = app.connection_for_write().transport_options
    assert options["socket_timeout"] == 10.0
    assert options["socket_connect_timeout"] == 10.0
    assert options["socket_keepalive"] is True
    assert options["health_check_interval"] == 10
    tcp = options["socket_keepalive_options"]
    assert tcp[socket.TCP_KEEPIDLE] == 30
    assert tcp[socket.TCP_KEEPINTVL] == 10
    assert tcp[socket.TCP_KEEPCNT] == 3
    assert tcp[socket.TCP_USER_TIMEOUT] == 30_000


def test_a_rabbitmq_broker_keeps_py_amqps_socket_settings() -> None:
    app = Celery("sluice-test")
    app.conf.update(celery_config(load_settings(broker_url="amqp://guest:guest@10.0.0.9//")))
    assert app.connection_for_write().transport_options == {}
