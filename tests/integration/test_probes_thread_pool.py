"""The health probes answer while every request thread waits on the database.

A route that reads the database runs on the server's thread pool (anyio's, 40 threads).
When the database's host vanishes (a network partition) each such request holds its
thread until the connection gives up: 10 s for a new connection, 40 s for a pooled one
whose server vanished (docs/deployment.md). Forty requests fill the pool, and
``/healthz`` and ``/readyz``, plain functions that ran on that same pool, queued behind
them: measured on a real partition of the database's host (``harness.netns``) with 60
clients, ``/healthz`` gave no answer within 3 s for about 10 s. A liveness probe that
fails then restarts an API that has nothing wrong with it (and cannot start while the
database is away). Here the requests are made to wait for as long as the test likes: the
key lookup each one starts with blocks until the test lets it go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.api_server import api_only_settings, serve_api
from sluice import apikeys
from sluice.runtime import build_runtime

POOL = 40
"""anyio's default number of worker threads, which the server's sync routes share."""
WAIT_S = 30.0
"""How long a probe may take on a loaded host (it answers in milliseconds); before the fix
it had no answer until the requests ahead of it were let go."""


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    runtime = build_runtime(api_only_settings(f"sqlite:///{tmp_path / 'sluice.db'}"))
    try:
        with serve_api(runtime) as url:
            yield url
    finally:
        runtime.close()


def test_probes_answer_while_every_request_thread_waits_on_the_database(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    waiting: list[int] = []

    def stuck(_keys: object, _token: str) -> None:
        waiting.append(1)
        release.wait(120)

    monkeypatch.setattr(apikeys, "authenticate", stuck)
    answers: list[int | str] = []

    def request() -> None:
        try:
            response = httpx.get(
                f"{base_url}/api/tasks", headers={"Authorization": "Bearer sk_x"}, timeout=150
            )
            answers.append(response.status_code)
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    clients = [threading.Thread(target=request) for _ in range(POOL + 10)]
    try:
        for client in clients:
            client.start()
        deadline = time.monotonic() + 60
        while len(waiting) < POOL and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(waiting) == POOL, f"{len(waiting)} requests hold a thread, not {POOL}"

        healthz = httpx.get(f"{base_url}/healthz", timeout=WAIT_S)
        assert healthz.status_code == 200
        assert healthz.json() == {"status": "ok"}
        readyz = httpx.get(f"{base_url}/readyz", timeout=WAIT_S)
        assert readyz.status_code == 200, readyz.text
        assert readyz.json()["checks"]["database"] == "ok"
        checker = httpx.get(f"{base_url}/api/healthchecker", timeout=WAIT_S)
        assert checker.status_code == 200
    finally:
        release.set()
        for client in clients:
            client.join(timeout=60)
    assert answers == [401] * (POOL + 10)
