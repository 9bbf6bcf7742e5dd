"""BoundedChecks: readiness checks side by side, a hung one reported, never piled up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from sluice.api.readiness import BoundedChecks, ReadinessTimeout


def test_hung_checks_are_reported_and_the_others_answer() -> None:
    release = threading.Event()
    started: list[str] = []

    def hung(name: str) -> Callable[[], None]:
        def check() -> None:
            started.append(name)
            release.wait(60)

        return check

    def failing() -> None:
        raise ConnectionError("refused")

    checks: dict[str, Callable[[], None]] = {
        "database": hung("database"),
        "redis": hung("redis"),
        "broker": failing,
        "ok": lambda: None,
    }
    bounded = BoundedChecks(timeout_s=0.5)
    try:
        first = asyncio.run(bounded.wait(checks))
        assert isinstance(first["database"], ReadinessTimeout)
        assert isinstance(first["redis"], ReadinessTimeout)
        assert isinstance(first["broker"], ConnectionError)
        assert first["ok"] is None
        # A second probe waits for the runs still going instead of starting new ones.
        second = asyncio.run(bounded.wait(checks))
        assert isinstance(second["database"], ReadinessTimeout)
        assert sorted(started) == ["database", "redis"]
    finally:
        release.set()
    # Once the servers answer again, so do the checks.
    for _ in range(100):
        third = asyncio.run(bounded.wait(checks))
        if third["database"] is None and third["redis"] is None:
            break
    assert third["database"] is None
    assert third["redis"] is None


def test_checks_awaited_on_the_event_loop_report_a_hung_one_and_never_pile_up() -> None:
    """``/readyz`` waits for its checks on the event loop (no thread of the server's pool):
    the same deadline, and a hung check's run is waited for by the next probe."""
    release = threading.Event()
    started: list[str] = []

    def hung() -> None:
        started.append("database")
        release.wait(60)

    def failing() -> None:
        raise ConnectionError("refused")

    checks: dict[str, Callable[[], None]] = {
        "database": hung,
        "broker": failing,
        "ok": lambda: None,
    }
    bounded = BoundedChecks(timeout_s=0.5)
    try:
        first = asyncio.run(bounded.wait(checks))
        assert isinstance(first["database"], ReadinessTimeout)
        assert isinstance(first["broker"], ConnectionError)
        assert first["ok"] is None
        second = asyncio.run(bounded.wait(checks))
        assert isinstance(second["database"], ReadinessTimeout)
        assert started == ["database"]
    finally:
        release.set()
    for _ in range(100):
        third = asyncio.run(bounded.wait(checks))
        if third["database"] is None:
            break
    assert third["database"] is None
