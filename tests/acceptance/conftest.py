"""Real processes: the ``sluice`` CLI's sandbox and Celery workers, as a user would run them.

Each test gets a :class:`Cluster`, built on the shared harness :mod:`harness.cluster` (the
distributed benchmark uses the same one): a fresh PostgreSQL database, its own TOML file,
its own limiter namespace and its own broker (a claimed Redis database number or a fresh
RabbitMQ vhost), and child processes in their own process groups (always killed at
teardown, logs kept in files and printed when the test fails).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import cluster as harness
from harness.cluster import Broker, free_port, open_broker, write_toml
from sluice import submissions
from sluice.domain import Phase, Submission
from sluice.runtime import Runtime
from sluice.settings import Settings
from tests.conftest import REDIS_URL, require_service

# The default margin (0.5%): window holds (sluice/ratelimit/holds.py) keep the sliding
# window at the sandbox whatever a loaded host does to requests after they are sent, so the
# acceptance clusters no longer need a wider one (it was 10% before holds: one process
# stalling 30-55 ms bunched two arrivals at the sandbox). Passed explicitly so a developer's
# SLUICE_RATE_MARGIN cannot change what the tests check.
RATE_MARGIN = Settings.model_fields["rate_margin"].default


# --- the cluster --------------------------------------------------------------------------


@dataclass
class Cluster(harness.Cluster):
    """The harness's cluster plus what the tests read: tasks, counts, the sandbox's view."""

    broker: Broker | None = None
    rate_limit: int = 20
    sandbox_url: str = ""
    _runtime: Runtime | None = None

    def start(
        self,
        sandbox: dict[str, Any],
        provider: dict[str, Any] | None = None,
    ) -> None:
        """Write the TOML file, start the sandbox and migrate the database."""
        port = free_port()
        table: dict[str, Any] = {
            "preset": "sandbox-standard",
            "base_url": f"http://127.0.0.1:{port}",
            "rate_limit": f"{self.rate_limit}/s",
            "poll": {"interval": "200ms"},
            "retry_base": "100ms",
            "retry_max": "1s",
        }
        table.update(provider or {})
        write_toml(
            self.config,
            {
                "sluice": {"default_provider": "sandbox"},
                "providers.sandbox": table,
                "sandbox": {
                    "limits": [{"name": "app", "limit": self.rate_limit, "window_s": 1.0}],
                    **sandbox,
                },
            },
        )
        self.sandbox_url = self.sandbox(port, profile="standard")
        self.upgrade_database()

    def stop(self) -> None:
        super().stop()
        if self._runtime is not None:
            self._runtime.close()

    # -- tasks and truth ---------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """This test process's view of the same store (to create and inspect tasks)."""
        if self._runtime is None:
            self._runtime = self.build_runtime()
        return self._runtime

    def create(self, items: Sequence[Submission]) -> list[int]:
        runtime = self.runtime
        return submissions.create_tasks(runtime.repo, runtime.catalog, items)

    def counts(self) -> dict[str, int]:
        return self.runtime.repo.counts()

    def phases(self) -> dict[str, int]:
        from sqlalchemy import func, select

        from sluice.store.rows import tasks as table

        with self.runtime.repo.engine.connect() as conn:
            rows = conn.execute(select(table.c.phase, func.count()).group_by(table.c.phase))
            return {phase: count for phase, count in rows}

    def event_counts(self) -> dict[str, int]:
        """How many events of each kind the store recorded (``recovered``, ``looked_up``...)."""
        from sqlalchemy import func, select

        from sluice.store.rows import events

        with self.runtime.repo.engine.connect() as conn:
            rows = conn.execute(select(events.c.event, func.count()).group_by(events.c.event))
            return {event: count for event, count in rows}

    def wait_until_final(self, timeout_s: float, during: Callable[[], None] | None = None) -> None:
        """Poll the store until every task is final; fail (with counts) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if during is not None:
                during()
            if self.phases().keys() <= {Phase.DONE.value}:
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"tasks not final after {timeout_s:g}s: {self.counts()} {self.phases()}"
                )
            time.sleep(0.2)

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        try:
            harness.wait_until(predicate, timeout_s, what)
        except TimeoutError as exc:
            pytest.fail(str(exc))

    def sandbox_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.sandbox_url}/_sandbox/stats", timeout=10).json()
        return stats

    def assert_limit_held(self, stats: dict[str, Any]) -> None:
        """The sandbox never saw more than the limit in any sliding window."""
        windows = stats["max_in_window"]
        assert windows, "the sandbox measured no window"
        for key, window in windows.items():
            assert window["max_seen"] <= window["limit"], f"{key}: {window}; stats: {stats}"


def campaigns(count: int, prefix: str = "c") -> list[Submission]:
    """``count`` valid campaign creates."""
    return [
        Submission(
            kind="campaign",
            payload={"advertiser_id": "adv-1", "name": f"{prefix}{i}", "budget": 100.0},
        )
        for i in range(count)
    ]


def bad_campaign() -> Submission:
    """A campaign the DSP rejects (negative budget)."""
    return Submission(
        kind="campaign", payload={"advertiser_id": "adv-1", "name": "bad", "budget": -5.0}
    )


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """An isolated broker of each kind (Redis database / RabbitMQ vhost) for this test."""
    if request.param == "redis":
        require_service("Redis", "127.0.0.1", 6379)
    else:
        require_service("RabbitMQ", "127.0.0.1", 5672)
    opened = open_broker(request.param, uuid.uuid4().hex[:10])
    try:
        yield opened
    finally:
        opened.cleanup()


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str, broker: Broker
) -> Iterator[Cluster]:
    """A cluster on a fresh database and broker; processes die and logs print at the end."""
    yield from cluster_on(request, tmp_path, postgres_url, broker.url, broker=broker)


def cluster_on(
    request: pytest.FixtureRequest,
    folder: Path,
    database_url: str,
    broker_url: str,
    settings: dict[str, str] | None = None,
    broker: Broker | None = None,
    redis_url: str | None = None,
) -> Iterator[Cluster]:
    """A cluster on the given servers (with the suite's settings unless told otherwise; the
    shared Redis as limiter unless ``redis_url`` names another); its processes die at the
    end, and their logs print if the test failed."""
    if redis_url is None:
        require_service("Redis", "127.0.0.1", 6379)
    built = Cluster(
        folder=folder,
        database_url=database_url,
        broker_url=broker_url,
        redis_url=redis_url or REDIS_URL,
        namespace=f"sluice:acceptance:{uuid.uuid4().hex[:10]}",
        settings=settings or {"SLUICE_LOG_LEVEL": "INFO", "SLUICE_RATE_MARGIN": str(RATE_MARGIN)},
        broker=broker,
    )
    try:
        yield built
    finally:
        built.stop()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            sys.stderr.write(built.logs() + "\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item so fixtures can print logs on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
