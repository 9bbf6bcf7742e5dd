"""The console's form routes do their database work off the event loop.

A bulk preview counts every task matching a filter (seconds with a million tasks and a
text filter), and a control writes a pause and its audit record. Those routes are
``async`` (they read the form), and their queries ran on the event loop itself: while
one of them waited on the database, the whole API process answered nothing, health
probes and open live streams included. Found with 150,000 tasks in PostgreSQL: a preview
of ``error_text=adv-`` took 0.47 s and ``GET /healthz`` beside it took 0.45 s (24 ms
before).

Here the database is made to wait for as long as the test likes: another transaction
holds a lock on the table the route needs. While the route waits on it, the API must
still answer ``/healthz``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from harness.api_server import api_only_settings, serve_api
from sluice.runtime import Runtime, build_runtime

pytestmark = pytest.mark.postgres

WAIT_S = 60.0
"""How long anything here may take on a loaded host before the test gives up."""


@pytest.fixture
def served(postgres_url: str) -> Iterator[tuple[str, Runtime]]:
    """The API in the open loopback mode (no key: the console acts as the local user)."""
    runtime = build_runtime(api_only_settings(postgres_url))
    try:
        with serve_api(runtime) as base_url:
            yield base_url, runtime
    finally:
        runtime.close()


def _waiting_on_a_lock(engine: sa.Engine, locker_pid: int) -> bool:
    """Whether some other session is waiting for a lock the locker holds."""
    with engine.connect() as conn:
        waiting = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
            ),
            {"pid": locker_pid},
        ).scalar_one()
    return bool(waiting)


@pytest.mark.parametrize(
    ("table", "path", "form"),
    [
        ("tasks", "/ui/tasks/preview", {"action": "cancel", "error_text": "anything"}),
        ("limiter_pauses", "/ui/controls", {"action": "pause", "target": "sandbox", "reason": "t"}),
    ],
)
def test_the_api_answers_while_a_console_form_waits_on_the_database(
    served: tuple[str, Runtime], postgres_url: str, table: str, path: str, form: dict[str, str]
) -> None:
    base, _runtime = served
    browser = httpx.Client(base_url=base, timeout=WAIT_S)
    page = browser.get("/ui/tasks").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    answers: list[Any] = []

    def post() -> None:
        try:
            answers.append(browser.post(path, data={**form, "csrf_token": csrf.group(1)}))
        except Exception as exc:  # shown to the test, not lost in the thread
            answers.append(exc)

    poster = threading.Thread(target=post)
    healthz: httpx.Response | Exception
    try:
        with engine.connect() as locker:
            holding = locker.begin()
            locker.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            locker_pid = locker.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            poster.start()
            deadline = time.monotonic() + WAIT_S
            while not _waiting_on_a_lock(engine, locker_pid):
                assert time.monotonic() < deadline, f"{path} never reached the table {table}"
                time.sleep(0.05)
            try:
                healthz = httpx.get(f"{base}/healthz", timeout=WAIT_S / 3)
            except httpx.TimeoutException as exc:
                healthz = exc
            holding.rollback()
        poster.join(timeout=WAIT_S)
    finally:
        engine.dispose()
        if not poster.is_alive():
            browser.close()
    assert not poster.is_alive()
    assert isinstance(healthz, httpx.Response), (
        f"GET /healthz did not answer while {path} waited on the database: {healthz!r}"
    )
    assert healthz.status_code == 200
    assert len(answers) == 1
    assert isinstance(answers[0], httpx.Response), answers
    assert answers[0].status_code in (200, 303), answers[0].text[:300]
