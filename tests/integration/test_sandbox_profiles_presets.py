"""Sluice's shipped presets describe the new sandbox profiles as they are (real HTTP).

Each new profile reuses the status words of an existing profile, so a provider built from
that preset creates, polls and reads the profile's refusals without any new preset. The
sandbox and the provider share one fake clock: nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sluice.clock import FakeClock
from sluice.domain import TaskStatus
from sluice.providers.base import Accepted, RateLimited, StatusReport, TaskRef
from sluice.providers.http import HttpProvider
from sluice.providers.registry import build_http_client, load_providers
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer
from sluice.settings import Settings

PRESET_OF = {
    "dv360": "sandbox-headers",
    "google-ads": "sandbox-headers",
    "hidden": "sandbox-bare",
    "hidden-headers": "sandbox-headers",
    "leaky": "sandbox-standard",
}
"""The preset docs/sandbox.md names for each new profile."""

ONE_CALL = {
    "dv360": [{"name": "project", "limit": 1, "window_s": 60}],
    "google-ads": [{"name": "daily_operations", "kind": "fixed", "limit": 1}],
    "hidden": [{"name": "hidden", "limit": 1, "window_s": 60, "schedule": [[60, 1]]}],
    "hidden-headers": [{"name": "hidden", "limit": 1, "window_s": 60, "schedule": [[60, 1]]}],
    "leaky": [{"name": "spacing", "kind": "bucket", "limit": 1, "window_s": 60}],
}
"""Limits that admit one call and refuse the next, in each profile's own kind."""


PAUSE_S = {"dv360": 1.0, "google-ads": 1.0, "hidden": 1.0, "hidden-headers": 60.0, "leaky": 60.0}
"""The pause Sluice reads today: the preset's 1 s default where the answer gives no time
(Google Ads' ``retry_delay`` sits in the body, which no preset key reads yet)."""


@dataclass
class Rig:
    """A running sandbox, a provider from the preset, its HTTP client and the shared clock."""

    provider: HttpProvider
    client: httpx.Client
    clock: FakeClock
    server: SandboxServer


@pytest.fixture
def rig_factory() -> Iterator[Any]:
    """Starts rigs and stops them after the test."""
    rigs: list[Rig] = []

    def start(profile: str, **sandbox: Any) -> Rig:
        clock = FakeClock()
        section = {"profile": profile, "accept_delay_s": 1.0, "process_delay_s": 1.0, **sandbox}
        server = SandboxServer(SandboxConfig.from_settings(section), clock=clock.time)
        base_url = server.start()
        table = {"preset": PRESET_OF[profile], "base_url": base_url}
        providers = load_providers(
            Settings(providers={"sandbox": table}, default_provider="sandbox"),
            environ={},
            clock=clock,
        )
        provider = providers["sandbox"]
        assert isinstance(provider, HttpProvider)
        rig = Rig(provider, build_http_client(provider), clock, server)
        rigs.append(rig)
        return rig

    yield start
    for rig in rigs:
        rig.client.close()
        rig.server.stop()


def _ref(task_id: int, *, external_id: str | None = None) -> TaskRef:
    return TaskRef(
        task_id=task_id,
        kind="campaign",
        payload={"name": "Spring"},
        external_id=external_id,
        client_ref=f"sluice-{task_id}",
        parent_external_id="adv-1",
    )


def _poll(rig: Rig, task: TaskRef) -> object:
    (group,) = rig.provider.poll_groups([task])
    return rig.provider.poll(rig.client, group)[task.task_id]


@pytest.mark.parametrize("profile", sorted(PRESET_OF))
def test_the_named_preset_creates_and_polls_to_completed(profile: str, rig_factory: Any) -> None:
    """A campaign is accepted, then polls Completed, in the profile's own words."""
    rig = rig_factory(profile)
    accepted = rig.provider.submit(rig.client, _ref(1))
    assert isinstance(accepted, Accepted)
    rig.clock.advance(5)
    report = _poll(rig, _ref(1, external_id=accepted.external_id))
    assert isinstance(report, StatusReport)
    assert report.status is TaskStatus.COMPLETED


@pytest.mark.parametrize("profile", sorted(PRESET_OF))
def test_the_named_preset_reads_each_refusal_as_rate_limited(
    profile: str, rig_factory: Any
) -> None:
    """The profile's over-limit answer becomes RateLimited with the pause its signal gives."""
    rig = rig_factory(profile, limits=ONE_CALL[profile])
    assert isinstance(rig.provider.submit(rig.client, _ref(1)), Accepted)
    limited = rig.provider.submit(rig.client, _ref(2))
    assert isinstance(limited, RateLimited)
    assert limited.retry_after_s == pytest.approx(PAUSE_S[profile], abs=0.01)
