"""A provider that is down for a while: its tasks wait for it instead of failing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sluice import submissions
from sluice.domain import Submission, TaskStatus
from sluice.drivers.embedded import build_embedded_driver
from sluice.providers.base import RateLimited, TaskRef, Transient
from sluice.providers.registry import build_http_client
from sluice.runtime import Runtime
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer
from sluice.store.rows import events

from .conftest import make_runtime, run_until_final, sandbox_stats

TASKS = 6
MAX_ATTEMPTS = 2
WAIT_S = 60.0


def _unreachable_events(runtime: Runtime) -> dict[int, int]:
    with runtime.repo.engine.connect() as conn:
        rows = conn.execute(
            select(events.c.task_id, func.count())
            .where(events.c.event == "unreachable")
            .group_by(events.c.task_id)
        )
        return {task_id: count for task_id, count in rows}


def test_tasks_wait_out_a_provider_outage_without_spending_attempts(tmp_path: Path) -> None:
    """With the provider's port closed, every task's create fails to connect more often than
    ``max_attempts`` allows, yet none ends in Error; once the provider listens again on the
    same port, every task completes, each created once."""
    config = SandboxConfig.from_settings(
        {"accept_delay_s": [0.0, 0.0], "process_delay_s": [0.0, 0.0]}
    )
    probe = SandboxServer(config, port=0)
    probe.start()
    port = probe.port
    probe.stop()  # the port is now closed: connections are refused

    runtime = make_runtime(
        tmp_path,
        {
            "sandbox": {
                "preset": "sandbox-standard",
                "base_url": f"http://127.0.0.1:{port}",
                "rate_limit": None,
                "max_attempts": MAX_ATTEMPTS,
                "retry_base": "50ms",
                "retry_max": "200ms",
                "poll": {"interval": "50ms"},
            }
        },
    )
    items = [
        Submission(
            kind="campaign", payload={"advertiser_id": "adv-1", "name": f"c{i}", "budget": 10}
        )
        for i in range(TASKS)
    ]
    ids = submissions.create_tasks(runtime.repo, runtime.catalog, items)
    driver = build_embedded_driver(runtime)
    driver.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            seen = _unreachable_events(runtime)
            if len(seen) == TASKS and min(seen.values()) > MAX_ATTEMPTS:
                break
            ended = [t for t in ids if runtime.repo.get(t).status.is_final]
            if ended or time.monotonic() > deadline:
                pytest.fail(
                    f"ended during the outage: {[runtime.repo.get(t).last_error for t in ended]}; "
                    f"unreachable events per task: {seen}"
                )
            time.sleep(0.05)
        assert all(runtime.repo.get(t).status is TaskStatus.NOT_STARTED for t in ids)
        assert all(runtime.repo.get(t).attempts == 0 for t in ids)
        back = SandboxServer(config, port=port)
        back.start()
    finally:
        driver.stop()
    try:
        run_until_final(runtime, timeout_s=WAIT_S)
        stats = sandbox_stats(f"http://127.0.0.1:{port}")
    finally:
        back.stop()
    assert [runtime.repo.get(t).status for t in ids] == [TaskStatus.COMPLETED] * TASKS, [
        runtime.repo.get(t).last_error for t in ids
    ]
    assert stats["duplicate_count"] == 0


def test_a_tls_handshake_with_a_plain_port_is_no_outage(tmp_path: Path) -> None:
    """``https://`` pointed at a plain-HTTP port fails the same way every time: a transient
    failure of the task (ended in Error after max_attempts), not a pause that never ends.
    A closed port of the same host is an outage."""
    config = SandboxConfig.from_settings({})
    server = SandboxServer(config, port=0)
    server.start()
    closed = SandboxServer(config, port=0)
    closed.start()
    closed_port = closed.port
    closed.stop()
    try:
        runtime = make_runtime(
            tmp_path,
            {
                "tls": {
                    "preset": "sandbox-standard",
                    "base_url": f"https://127.0.0.1:{server.port}",
                },
                "down": {
                    "preset": "sandbox-standard",
                    "base_url": f"http://127.0.0.1:{closed_port}",
                },
            },
        )
        ref = TaskRef(
            1, "campaign", {"advertiser_id": "adv-1", "name": "c", "budget": 1}, None, "sl-1", None
        )
        decisions = {}
        for name in ("tls", "down"):
            provider = runtime.providers[name]
            with build_http_client(provider) as client:
                decisions[name] = provider.submit(client, ref)
    finally:
        server.stop()
    assert isinstance(decisions["tls"], Transient), decisions["tls"]
    assert "could not connect" in decisions["tls"].message
    assert isinstance(decisions["down"], RateLimited), decisions["down"]
    assert decisions["down"].unreachable
