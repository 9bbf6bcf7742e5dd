"""Per-tenant provider credentials end to end: the embedded engine against the real sandbox
over loopback, which checks every token and counts each account on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice import submissions
from sluice.domain import Submission, TaskStatus
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer
from tests.integration.conftest import make_runtime, run_until_final, sandbox_stats

TOKENS = {
    "SBX_TOKEN": "house-token-0000aaaa",
    "SBX_TOKEN_A": "client-a-token-1111bbbb",
    "SBX_TOKEN_B": "client-b-token-2222cccc",
    "SBX_TOKEN_C": "client-c-token-revoked",
}
ACCOUNTS = {
    TOKENS["SBX_TOKEN"]: "agency-house",
    TOKENS["SBX_TOKEN_A"]: "agency-a",
    TOKENS["SBX_TOKEN_B"]: "agency-b",
}


def campaign(tenant: str, n: int) -> Submission:
    return Submission(
        kind="campaign",
        payload={"advertiser_id": "adv-1", "name": f"{tenant} {n}", "budget": 100},
        tenant=tenant,
    )


def test_each_tenants_tasks_reach_the_sandbox_with_its_own_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """client-a's and client-b's tasks are created on their own accounts, a tenant without
    credentials on the provider's, and a tenant whose token the DSP refuses fails alone."""
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    config = SandboxConfig.from_settings(
        {
            "profile": "standard",
            "auth": True,
            "tokens": ACCOUNTS,
            "idempotency": True,
            "accept_delay_s": 0,
            "process_delay_s": 0.05,
            "limits": [{"name": "app", "per": "app", "limit": 40, "window_s": 1.0}],
        }
    )
    server = SandboxServer(config, port=0)
    url = server.start()
    try:
        runtime = make_runtime(
            tmp_path,
            {
                "sbx": {
                    "preset": "sandbox-standard",
                    "base_url": url,
                    "rate_limit": "30/s",
                    "poll": {"interval": "100ms"},
                    "retry_base": "20ms",
                    "retry_max": "100ms",
                    "max_attempts": 3,
                    "idempotency_header": "Idempotency-Key",
                    "headers": {"Authorization": "Bearer ${SBX_TOKEN}"},
                    "tenants": {
                        "client-a": {"headers": {"Authorization": "Bearer ${SBX_TOKEN_A}"}},
                        "client-b": {"headers": {"Authorization": "Bearer ${SBX_TOKEN_B}"}},
                        "client-c": {"headers": {"Authorization": "Bearer ${SBX_TOKEN_C}"}},
                    },
                }
            },
        )
        items = [campaign(t, n) for t in ("client-a", "client-b", "walk-in") for n in range(4)]
        items += [campaign("client-c", n) for n in range(2)]
        ids = submissions.create_tasks(runtime.repo, runtime.catalog, items)
        run_until_final(runtime)
        tasks = [runtime.repo.get(i) for i in ids]
        created_by = {
            ref: account for account, ref in server.app.state.sandbox.store.idempotent_answers
        }
        stats = sandbox_stats(url)
        runtime.close()
    finally:
        server.stop()

    expected = {"client-a": "agency-a", "client-b": "agency-b", "walk-in": "agency-house"}
    for task in tasks:
        if task.tenant == "client-c":
            assert task.status is TaskStatus.ERROR
            assert "401" in (task.validation_error or "")
            assert task.client_ref not in created_by
            continue
        assert task.status is TaskStatus.COMPLETED, task
        assert created_by[task.client_ref] == expected[task.tenant]
    accounts = {key.split(":", 1)[1] for key in stats["max_in_window"]}
    assert accounts == {"agency-a", "agency-b", "agency-house"}
    assert stats["requests"]["POST /v1/campaigns"]["401"] >= 2
    assert stats["duplicate_count"] == 0
