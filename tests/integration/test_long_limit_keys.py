"""Per-account values of any length and any characters, end to end: submitted through the
API and `sluice submit`, sent against the sandbox's hidden limit (429s: learned drops),
their quotas spent, usage counted, fair shares kept, a pin set on one account by an
operator, the overview and /metrics read, on SQLite and on PostgreSQL with the Redis
limiter.

Before, on PostgreSQL one task whose ``per`` value made a key longer than 255 characters
stopped its provider: every dispatcher step failed writing its ``quota_usage`` row
(``value too long for type character varying(255)``) and no task of any account was sent
again. On SQLite the 5,000-character keys were stored, and the limiter's Redis keys and
its pause scopes grew with the value (one scope per ``:`` in it).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import select

from harness.api_server import serve_api
from sluice.domain import FAIRNESS_KEY_MAX, Operation
from sluice.ratelimit.gcra import pause_scopes
from sluice.ratelimit.redis import connect
from sluice.store.tables import (
    FairShareRow,
    LearnedRateRow,
    LimitPinRow,
    QuotaUsageRow,
    UsageCountRow,
)
from tests.unit.cli.running import run_cli

from .conftest import make_runtime, run_until_final

KEY_MAX = 255
HIDDEN = [{"name": "hidden", "limit": 4, "window_s": 1, "schedule": [[600, 4]]}]

# Sent through the API, then through `sluice submit FILE --api`.
BY_API = ["x" * 300, "y" * 5000, "a:b", "a"]
BY_CLI = [
    "a:b=c:d",
    "*",
    "sp ace\ttab",
    "caf\u00e9 \u6f22\u5b57",
    "z" * 200 + ":" * 3000,
    "x" * 301,
]
VALUES = BY_API + BY_CLI


def provider_table(base_url: str) -> dict[str, Any]:
    return {
        "preset": "sandbox-bare",
        "base_url": base_url,
        "rate_limit": "100/s",
        "adaptive": True,
        "fairness_field": "name",
        "limits": [
            {"rate": "50/s", "scope": "write", "per": "name"},
            {"quota": "1000/d", "scope": "write", "per": "name"},
        ],
    }


def payload(value: str) -> dict[str, Any]:
    return {"advertiser_id": "adv-1", "name": value, "budget": 1.0}


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", marks=pytest.mark.redis),
        pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
)
def test_any_account_value_is_submitted_sent_limited_and_shown_under_a_key_that_fits(
    backend: str,
    sandbox: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
) -> None:
    base_url = sandbox(profile="hidden", limits=HIDDEN)
    database_url = None if backend == "sqlite" else request.getfixturevalue("postgres_url")
    namespace = f"sluice:test:longkeys:{uuid.uuid4().hex[:12]}"
    runtime = make_runtime(
        tmp_path,
        {"sandbox": provider_table(base_url)},
        database_url=database_url,
        redis_url=redis_url,
        limiter_namespace=namespace,
    )
    provider = runtime.providers["sandbox"]
    try:
        with serve_api(runtime) as api:
            # Submission: the API and `sluice submit` accept every value (nothing to refuse).
            for value in BY_API:
                answer = httpx.post(
                    f"{api}/api/tasks", json={"kind": "campaign", "payload": payload(value)}
                )
                assert answer.status_code == 201, answer.text
            data = tmp_path / "tasks.json"
            tasks = [{"kind": "campaign", "payload": payload(value)} for value in BY_CLI]
            data.write_text(json.dumps({"tasks": tasks}), encoding="utf-8")
            code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait", "--api", api)
            assert code == 0, err

            # Sent against a hidden limit of 4/s: refusals, learned drops, quotas spent.
            run_until_final(runtime, timeout_s=90)
            listed = httpx.get(f"{api}/api/tasks", params={"limit": 100}).json()
            assert {t["status"] for t in listed["items"]} == {"Completed"}
            assert len(listed["items"]) == len(VALUES)

            keys = {v: provider.limits_for("write", payload(v))[-1].key for v in VALUES}
            quotas = {v: provider.quotas_for(Operation.SUBMIT, payload(v))[-1].key for v in VALUES}
            assert len(set(keys.values())) == len(VALUES)
            for key in keys.values():
                assert len(key) <= KEY_MAX
                assert pause_scopes(key) == ["sandbox", "sandbox:write", key]

            with runtime.repo.engine.connect() as conn:
                spent = {
                    row.key: row.used
                    for row in conn.execute(select(QuotaUsageRow.key, QuotaUsageRow.used))
                }
                learned = set(conn.execute(select(LearnedRateRow.key)).scalars())
                counted = set(conn.execute(select(UsageCountRow.key)).scalars())
                shares = set(conn.execute(select(FairShareRow.fairness_key)).scalars())
            # Each account spent its own quota (blocks are reserved ahead, refusals spend too).
            assert set(spent) == set(quotas.values())
            assert all(used >= 1 for used in spent.values())
            # The refusals' learned drops were written for the accounts' own keys.
            assert learned - {"sandbox"} <= set(keys.values())
            assert learned - {"sandbox"}, "the hidden limit refused some accounts' requests"
            assert set(keys.values()) <= counted
            # Each value its own fair share (x * 300 and x * 301 were both cut to x * 128).
            assert len(shares - {""}) == len(VALUES)
            assert all(len(key) <= FAIRNESS_KEY_MAX for key in shares)

            # An operator pins one account's key as the overview lists it.
            overview = httpx.get(f"{api}/api/overview").text
            assert keys["y" * 5000] in overview
            assert "y" * 300 not in overview
            pinned = keys["a:b"]
            answer = httpx.post(
                f"{api}/api/limits/{quote(pinned, safe='')}/pin",
                json={"rate": "1/s", "reason": "one slow account"},
            )
            assert answer.status_code == 200, answer.text
            with runtime.repo.engine.connect() as conn:
                assert list(conn.execute(select(LimitPinRow.key)).scalars()) == [pinned]

            # /metrics: a limit key's scope label never holds an account's value.
            metrics = httpx.get(f"{api}/metrics").text
            scopes = set(re.findall(r'scope="([^"]*)"', metrics))
            assert scopes <= {"all", "write", "write:name", "write:name:1d"}, scopes

        # Redis: every limiter key is short, whatever the account's value.
        client = connect(redis_url)
        try:
            stored = [k.decode() for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
        finally:
            client.close()
        assert stored
        assert max(len(k) for k in stored) <= len(namespace) + 40 + KEY_MAX
    finally:
        runtime.limiter.reset()
