"""A worker or beat that the real RabbitMQ turns away refuses to start, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cluster import free_port, with_path
from harness.redis_server import RedisServer
from sluice.drivers import celery_app
from tests.unit.cli.running import one_line, run_cli

PASSWORD = "wr0ng-Pa55word"


def _refused_urls(rabbitmq_url: str) -> list[tuple[str, str]]:
    """(URL, what RabbitMQ answers) for a wrong password and for a missing vhost."""
    user = rabbitmq_url.split("://", 1)[1].split(":", 1)[0]
    host = rabbitmq_url.rsplit("@", 1)[1]
    return [
        (f"amqp://{user}:{PASSWORD}@{host}", "AccessRefused: "),
        (with_path(rabbitmq_url, "sluice-no-such-vhost"), "NotAllowed: "),
    ]


def run_against(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
    broker_url: str,
) -> tuple[int, str, list[list[str]]]:
    """`sluice COMMAND` with SLUICE_BROKER_URL=``broker_url``: its exit code, its stderr
    and the Celery starts it made (none when it refused to start)."""
    from sluice.celery_app import app as celery

    started: list[list[str]] = []
    monkeypatch.setattr(celery, "worker_main", started.append)
    monkeypatch.setattr(celery, "start", started.append)
    monkeypatch.setattr(celery_app, "_passed", [], raising=False)
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'worker.db'}")
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://127.0.0.1:6379/1")
    monkeypatch.setenv("SLUICE_BROKER_URL", broker_url)
    code, err = run_cli(monkeypatch, capsys, command)
    return code, err, started


@pytest.mark.rabbitmq
@pytest.mark.parametrize("command", ["worker", "beat"])
@pytest.mark.parametrize("case", [0, 1], ids=["wrong password", "missing vhost"])
def test_a_broker_that_refuses_the_worker_stops_it_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    rabbitmq_url: str,
    command: str,
    case: int,
) -> None:
    """RabbitMQ refusing the credentials or the virtual host is a configuration error. A
    worker took it for a lost connection and tried again five times a second, for ever
    ("Frequent restarts detected", a traceback each second: 554 lines in 26 s) without
    taking a pump; beat ended on a traceback."""
    url, answer = _refused_urls(rabbitmq_url)[case]
    code, err, started = run_against(monkeypatch, capsys, tmp_path, command, url)

    assert code == 2, err
    line = one_line(err)
    assert line.startswith(f"configuration error: the broker refused the connection: {answer}")
    assert PASSWORD not in err
    assert not started


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_a_broker_that_is_down_does_not_stop_the_worker(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
) -> None:
    """A broker that is not there (yet) is no refusal: Celery waits for it."""
    monkeypatch.setattr("sluice.logs.configure", lambda level: None)
    url = f"amqp://guest:{PASSWORD}@127.0.0.1:{free_port()}//"
    code, err, started = run_against(monkeypatch, capsys, tmp_path, command, url)

    assert code == 0, err
    assert len(started) == 1


@pytest.mark.parametrize("command", ["worker", "beat"])
@pytest.mark.parametrize(
    ("password", "answer"),
    [
        (PASSWORD, "AuthenticationError: invalid username-password pair"),
        (None, "AuthenticationError: Authentication required"),
    ],
    ids=["wrong password", "no password"],
)
def test_a_redis_broker_that_refuses_the_worker_stops_it_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
    password: str | None,
    answer: str,
) -> None:
    """A Redis broker with a password refusing a worker's: the worker logged "Cannot
    connect to redis://...: invalid username-password pair" every 2 s, for ever."""
    server = RedisServer(tmp_path / "redis", password="the-R1ght-password")
    server.start()
    try:
        url = server.url.replace("redis://", f"redis://:{password}@" if password else "redis://")
        code, err, started = run_against(monkeypatch, capsys, tmp_path, command, url)
    finally:
        server.stop()

    assert code == 2, err
    line = one_line(err)
    assert line.startswith(f"configuration error: the broker refused the connection: {answer}")
    assert PASSWORD not in err
    assert not started
