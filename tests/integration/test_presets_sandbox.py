"""Each sandbox preset against the real sandbox over loopback.

The sandbox and the provider share one fake clock, so processing delays and rate-limit
windows move only when a test advances it: no sleeping, no flakiness.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sluice.clock import FakeClock
from sluice.domain import TaskStatus
from sluice.providers.base import (
    Accepted,
    Failed,
    Found,
    NotFound,
    RateLimited,
    StatusReport,
    TaskRef,
    Transient,
)
from sluice.providers.http import HttpProvider
from sluice.providers.registry import build_http_client, load_providers
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer
from sluice.settings import Settings

PROFILES = ["standard", "headers", "meta", "bare", "demo"]
NO_FAULTS = {"error_5xx": 0, "unavailable_503": 0, "reset": 0, "commit_then_timeout": 0}


@dataclass
class Rig:
    """A running sandbox, a provider built from the preset, its client and the shared clock."""

    provider: HttpProvider
    client: httpx.Client
    clock: FakeClock
    server: SandboxServer


def start(profile: str, *, overrides: dict[str, Any] | None = None, **sandbox: Any) -> Rig:
    clock = FakeClock()
    section = {
        "profile": profile,
        "accept_delay_s": 1.0,
        "process_delay_s": 1.0,
        "faults": NO_FAULTS,
        **sandbox,
    }
    server = SandboxServer(SandboxConfig.from_settings(section), clock=clock.time)
    base_url = server.start()
    table = {"preset": f"sandbox-{profile}", "base_url": base_url, **(overrides or {})}
    providers = load_providers(
        Settings(providers={"sandbox": table}, default_provider="sandbox"),
        environ={"SANDBOX_SECRET": "s3cret-sandbox"},
        clock=clock,
    )
    provider = providers["sandbox"]
    assert isinstance(provider, HttpProvider)
    return Rig(provider, build_http_client(provider), clock, server)


@pytest.fixture(params=PROFILES)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """One rig per sandbox profile, with its preset."""
    running = start(request.param)
    try:
        yield running
    finally:
        running.client.close()
        running.server.stop()


def ref(
    task_id: int,
    kind: str,
    payload: dict[str, Any],
    *,
    external_id: str | None = None,
    parent: str | None = None,
) -> TaskRef:
    return TaskRef(
        task_id=task_id,
        kind=kind,
        payload=payload,
        external_id=external_id,
        client_ref=f"sluice-{task_id}",
        parent_external_id=parent,
    )


def poll_one(rig: Rig, task: TaskRef) -> object:
    (group,) = rig.provider.poll_groups([task])
    return rig.provider.poll(rig.client, group)[task.task_id]


def test_create_then_poll_until_completed(rig: Rig) -> None:
    """A campaign under adv-1 is accepted, polls In Progress, then Completed; a child follows."""
    accepted = rig.provider.submit(
        rig.client, ref(1, "campaign", {"name": "Spring"}, parent="adv-1")
    )
    assert isinstance(accepted, Accepted)
    assert accepted.external_id.startswith("cmp-")
    assert not accepted.completed
    tracked = ref(1, "campaign", {}, external_id=accepted.external_id)
    first = poll_one(rig, tracked)
    assert isinstance(first, StatusReport)
    assert first.status in {TaskStatus.IN_PROGRESS, TaskStatus.NOT_STARTED}
    rig.clock.advance(5)
    done = poll_one(rig, tracked)
    assert isinstance(done, StatusReport)
    assert done.status is TaskStatus.COMPLETED
    assert done.message is None
    child = rig.provider.submit(
        rig.client, ref(2, "ad_group", {"name": "Morning"}, parent=accepted.external_id)
    )
    assert isinstance(child, Accepted)
    assert child.external_id.startswith("adg-")


def test_semantic_validation_error_arrives_by_poll_with_message(rig: Rig) -> None:
    """A bad IP range is accepted, then polls as Error with the sandbox's message."""
    audience = ref(
        3,
        "audience",
        {"name": "Office", "type": "ip_range", "include": ["10.0.0.0/8", "192.168.1.256"]},
        parent="adv-2",
    )
    accepted = rig.provider.submit(rig.client, audience)
    assert isinstance(accepted, Accepted)
    rig.clock.advance(5)
    report = poll_one(rig, ref(3, "audience", {}, external_id=accepted.external_id))
    assert isinstance(report, StatusReport)
    assert report.status is TaskStatus.ERROR
    assert report.message is not None
    assert "Invalid IP range: 192.168.1.256" in report.message


def test_malformed_create_fails_with_field_and_message(rig: Rig) -> None:
    """A create without a name is refused at once: Failed naming the field."""
    decision = rig.provider.submit(rig.client, ref(4, "campaign", {"budget": 10}, parent="adv-1"))
    assert isinstance(decision, Failed)
    assert decision.message.startswith("name: ")


def test_unknown_parent_fails_and_unready_parent_is_transient(rig: Rig) -> None:
    """404 for an unknown parent is permanent; 409 PARENT_NOT_READY is retried."""
    missing = rig.provider.submit(rig.client, ref(5, "campaign", {"name": "x"}, parent="adv-999"))
    assert isinstance(missing, Failed)
    assert "adv-999" in missing.message
    parent = rig.provider.submit(rig.client, ref(6, "campaign", {"name": "p"}, parent="adv-1"))
    assert isinstance(parent, Accepted)
    early = rig.provider.submit(
        rig.client, ref(7, "ad_group", {"name": "c"}, parent=parent.external_id)
    )
    assert isinstance(early, Transient)
    assert not early.ambiguous
    assert "PARENT_NOT_READY" in early.message


def test_lookup_by_client_ref_finds_the_created_object(rig: Rig) -> None:
    """The object created for a client reference is found by it; another reference is not."""
    task = ref(8, "campaign", {"name": "Lost answer"}, parent="adv-3")
    accepted = rig.provider.submit(rig.client, task)
    assert isinstance(accepted, Accepted)
    assert rig.provider.lookup(rig.client, task) == Found(accepted.external_id)
    other = ref(9, "campaign", {"name": "never sent"}, parent="adv-3")
    assert rig.provider.lookup(rig.client, other) == NotFound()


@pytest.mark.parametrize("profile", PROFILES)
def test_rate_limit_signal_becomes_a_pause(profile: str) -> None:
    """Over the sandbox's limit, each profile's own signal is parsed into a pause."""
    limits = [{"name": "app", "per": "app", "scope": "all", "limit": 2, "window_s": 1.0}]
    rig = start(profile, limits=limits)
    try:
        tracked = ref(1, "campaign", {}, external_id="adv-1")
        assert isinstance(poll_one(rig, tracked), StatusReport)
        rig.clock.advance(0.25)
        assert isinstance(poll_one(rig, tracked), StatusReport)
        limited = poll_one(rig, tracked)
        assert isinstance(limited, RateLimited)
        assert limited.retry_after_s is not None
        # The first slot frees 0.75 s later; every style but bare says so (rounded up).
        expected = {"standard": 1.0, "demo": 1.0, "headers": 0.75, "meta": 0.75, "bare": 1.0}
        assert limited.retry_after_s == pytest.approx(expected[profile], abs=0.01)
        rig.clock.advance(limited.retry_after_s)
        assert isinstance(poll_one(rig, tracked), StatusReport)
    finally:
        rig.client.close()
        rig.server.stop()


def test_demo_preset_reads_the_prototype_fixtures() -> None:
    """Batch-polling ids 1, 2, 3 gives In Progress, Completed, and Error with its message."""
    rig = start("demo")
    try:
        tasks = [TaskRef(i, None, {}, str(i), f"proto-{i}", None) for i in (1, 2, 3)]
        (group,) = rig.provider.poll_groups(tasks)
        assert rig.provider.can_track()
        assert rig.provider.poll(rig.client, group) == {
            1: StatusReport(TaskStatus.IN_PROGRESS, None, "In Progress"),
            2: StatusReport(TaskStatus.COMPLETED, None, "Completed"),
            3: StatusReport(TaskStatus.ERROR, "Invalid IP range: 192.168.1.256", "Error"),
        }
    finally:
        rig.client.close()
        rig.server.stop()


def test_token_auth_against_the_sandbox() -> None:
    """With auth on, the preset plus an [auth] table fetches a token and keeps working."""
    auth = {
        "request": "POST /oauth/token",
        "body": {"client_id": "sluice", "client_secret": "${SANDBOX_SECRET}"},
    }
    rig = start(
        "standard",
        overrides={"auth": auth},
        auth=True,
        credentials={"sluice": "s3cret-sandbox"},
        token_lifetime_s=60,
    )
    try:
        task = ref(1, "campaign", {"name": "Authed"}, parent="adv-1")
        assert isinstance(rig.provider.submit(rig.client, task), Accepted)
        rig.clock.advance(120)
        assert isinstance(rig.provider.lookup(rig.client, task), Found)
    finally:
        rig.client.close()
        rig.server.stop()
