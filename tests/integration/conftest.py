"""Fixtures for integration tests: a real sandbox over loopback and a Sluice runtime."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, Engine

from sluice.drivers.embedded import EmbeddedDriver, build_embedded_driver
from sluice.engine.decide import Policy
from sluice.engine.retry import Backoff, PollSchedule
from sluice.runtime import Runtime, build_runtime
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer
from sluice.settings import load_settings
from sluice.store import db

POLICY = Policy(
    provider="sandbox",
    max_attempts=5,
    backoff=Backoff(1.0, 10.0),
    poll=PollSchedule(2.0, 16.0),
    deadline_s=None,
    can_lookup=True,
)
"""A provider's retry and polling numbers for tests that decide outcomes by hand."""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database of each backend with the current schema (a test module may define its own)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'migrated.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    made = db.make_engine(url)
    db.ensure_schema(made)
    yield made
    made.dispose()


@contextmanager
def running_sandbox(**section: Any) -> Iterator[str]:
    """A sandbox DSP on a free loopback port; yields its base URL."""
    server = SandboxServer(SandboxConfig.from_settings(section), port=0)
    base_url = server.start()
    try:
        yield base_url
    finally:
        server.stop()


@pytest.fixture
def sandbox() -> Callable[..., Any]:
    """Start sandboxes with the given [sandbox] settings; all stop at the end of the test."""
    stack: list[Any] = []

    def start(**section: Any) -> str:
        manager = running_sandbox(**section)
        stack.append(manager)
        return manager.__enter__()

    yield start
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


def sandbox_stats(base_url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{base_url}/_sandbox/stats").json()
    return stats


_made_runtimes: list[Runtime] = []
"""Runtimes :func:`make_runtime` built during the running test (closed at its end)."""


@pytest.fixture(autouse=True)
def _close_made_runtimes() -> Iterator[None]:
    """Close what ``make_runtime`` built: its checkpoint thread, clients and connections
    would otherwise outlive the test and load the ones after it."""
    yield
    while _made_runtimes:
        _made_runtimes.pop().close()


def make_runtime(
    tmp_path: Path,
    providers: dict[str, dict[str, Any]],
    database_url: str | None = None,
    **extra: Any,
) -> Runtime:
    """A runtime over ``providers`` (SQLite under ``tmp_path`` unless ``database_url``),
    closed at the end of the test (closing it earlier is harmless)."""
    settings = load_settings(
        database_url=database_url or f"sqlite:///{tmp_path / 'sluice.db'}",
        providers=providers,
        default_provider=next(iter(providers)),
        **extra,
    )
    runtime = build_runtime(settings)
    _made_runtimes.append(runtime)
    return runtime


def run_until_final(
    runtime: Runtime, timeout_s: float = 60.0, driver: EmbeddedDriver | None = None
) -> EmbeddedDriver:
    """Run the embedded driver until every task is final (fails after ``timeout_s``)."""
    driver = driver or build_embedded_driver(runtime)
    driver.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not driver.all_final():
            if time.monotonic() > deadline:
                counts = runtime.repo.counts()
                pytest.fail(f"tasks not final after {timeout_s}s: {counts}")
            time.sleep(0.05)
    finally:
        driver.stop()
    return driver


def while_uncommitted(
    engine: Engine, write: Callable[[Connection], Any], action: Callable[[], Any]
) -> list[Any]:
    """``write`` in a transaction of its own, left uncommitted while ``action`` runs in a
    thread (half a second: time to reach the row), then committed; returns what ``action``
    returned (or raised). ``action`` must end within 30 s."""
    got: list[Any] = []

    def run() -> None:
        try:
            got.append(action())
        except Exception as exc:  # shown to the test as a result, not lost in the thread
            got.append(exc)

    worker = threading.Thread(target=run)
    with engine.connect() as other:
        writing = other.begin()
        write(other)
        worker.start()
        worker.join(timeout=0.5)
        writing.commit()
    worker.join(timeout=30)
    assert not worker.is_alive()
    return got
