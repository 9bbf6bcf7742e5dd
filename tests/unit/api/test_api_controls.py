"""Operator controls over the API: the providers' overview, pause and resume, pin and unpin.

Each successful action writes one audit record; each refusal (unknown provider or key, a
pin above the configured rate, a bad duration) answers 404/422 naming the problem and
writes nothing at all.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import func, select, update

from sluice.controls import Controls
from sluice.domain import Phase, Submission
from sluice.ratelimit.base import InFlight
from sluice.store.audit import audit
from sluice.store.pauses import pauses
from sluice.store.pins import pins
from sluice.store.rows import tasks

if TYPE_CHECKING:
    from conftest import Api, SecuredApi


def controls_of(api: Api) -> Controls:
    controls: Controls = api.client.app.state.context.controls  # type: ignore[attr-defined]
    return controls


def stored(api: Api) -> tuple[int, int, int]:
    """(audit records, pins, pauses) stored now."""
    with api.repo.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (audit, pins, pauses)
        )


def provider(api: Api, name: str) -> dict[str, Any]:
    answer = api.client.get(f"/api/providers/{name}")
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] = answer.json()
    return shown


def key_of(shown: dict[str, Any], key: str) -> dict[str, Any]:
    found: dict[str, Any] = next(k for k in shown["keys"] if k["key"] == key)
    return found


def test_providers_list_each_key_with_its_rates_pause_and_in_flight_cap(api: Api) -> None:
    """The overview names every configured key, its rate, the rate in force and its source."""
    answer = api.client.get("/api/providers")

    assert answer.status_code == 200
    shown = {p["name"]: p for p in answer.json()}
    assert sorted(shown) == ["acme", "sandbox"]
    sandbox = shown["sandbox"]
    assert [(k["key"], k["scope"], k["per"], k["configured"]) for k in sandbox["keys"]] == [
        ("sandbox", "all", None, "20/s"),
        ("sandbox:write", "write", None, "10/s"),
        ("sandbox:write:advertiser_id=*", "write", "advertiser_id", "2/s"),
    ]
    for key in sandbox["keys"]:
        assert (key["in_force"], key["source"], key["pause"]) == (
            key["configured"],
            "configured",
            None,
        )
    assert sandbox["pause"] is None
    assert sandbox["in_flight"] == {"key": "sandbox:in_flight", "max_in_flight": 4, "in_flight": 0}
    assert shown["acme"]["in_flight"]["max_in_flight"] == 8  # the preset's cap
    assert key_of(shown["acme"], "acme")["configured_per_s"] == pytest.approx(40 / 60)


def test_the_overview_counts_live_in_flight_leases(api: Api) -> None:
    controls = controls_of(api)
    controls.limiter.acquire([], in_flight=InFlight("sandbox:in_flight", 4, 60.0))

    assert provider(api, "sandbox")["in_flight"]["in_flight"] == 1


def test_a_pin_lowers_the_rate_in_force_and_unpin_restores_it(api: Api) -> None:
    """A pin is in force at once in this process, is listed with its source, and is audited."""
    before = stored(api)

    pinned = api.client.post(
        "/api/limits/sandbox:write/pin", json={"rate": "5/s", "reason": "429s from acme"}
    )

    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["action"] == "limit.pin"
    assert pinned.json()["changed"] is True
    key = key_of(provider(api, "sandbox"), "sandbox:write")
    assert (key["configured"], key["in_force"], key["source"], key["reason"]) == (
        "10/s",
        "5/s",
        "pinned",
        "429s from acme",
    )
    assert stored(api) == (before[0] + 1, before[1] + 1, before[2])

    unpinned = api.client.post("/api/limits/sandbox:write/unpin")

    assert unpinned.status_code == 200
    assert unpinned.json()["detail"]["cleared"] == "5/s"
    key = key_of(provider(api, "sandbox"), "sandbox:write")
    assert (key["in_force"], key["source"]) == ("10/s", "configured")
    records = api.client.get("/api/audit", params={"action": "limit."}).json()["items"]
    assert [(r["action"], r["target"], r["actor"]) for r in records] == [
        ("limit.unpin", "key:sandbox:write", "loopback"),
        ("limit.pin", "key:sandbox:write", "loopback"),
    ]
    assert records[1]["detail"]["rate"] == "5/s"
    assert records[1]["detail"]["reason"] == "429s from acme"


def test_rates_list_each_key_configured_beside_in_force_as_sluice_rates_does(api: Api) -> None:
    """GET /api/rates: the rows of `sluice rates` (provider-wide and read/write keys), in
    key order, a pin in force with its source and reason."""
    pinned = api.client.post(
        "/api/limits/sandbox:write/pin", json={"rate": "5/s", "reason": "429s from acme"}
    )
    assert pinned.status_code == 200, pinned.text

    answer = api.client.get("/api/rates")

    assert answer.status_code == 200, answer.text
    rows = answer.json()
    assert [row["key"] for row in rows] == sorted(row["key"] for row in rows)
    shown = {row["key"]: row for row in rows}
    assert set(rows[0]) == {
        "provider",
        "key",
        "configured_per_s",
        "in_force_per_s",
        "source",
        "reason",
        "since",
    }
    assert shown["sandbox"]["provider"] == "sandbox"
    assert (shown["sandbox"]["configured_per_s"], shown["sandbox"]["source"]) == (
        20.0,
        "configured",
    )
    write = shown["sandbox:write"]
    assert (write["configured_per_s"], write["in_force_per_s"]) == (10.0, 5.0)
    assert (write["source"], write["reason"]) == ("pinned", "429s from acme")
    assert write["since"] is not None
    assert "sandbox:write:advertiser_id=*" not in shown  # as `sluice rates`: no account rows


def test_a_pin_in_another_window_is_compared_per_second(api: Api) -> None:
    """300/min is 5/s: below sandbox:write's 10/s; 40/min equals acme's configured rate."""
    assert (
        api.client.post(
            "/api/limits/sandbox:write/pin", json={"rate": "300/min", "reason": "r"}
        ).status_code
        == 200
    )
    assert (
        api.client.post("/api/limits/acme/pin", json={"rate": "40/min", "reason": "r"}).status_code
        == 200
    )


def test_one_accounts_key_can_be_pinned_and_is_listed(api: Api) -> None:
    """A per-advertiser key is pinned by its full name and shown beside its limit."""
    answer = api.client.post(
        "/api/limits/sandbox:write:advertiser_id=adv-1/pin", json={"rate": "1/s", "reason": "r"}
    )

    assert answer.status_code == 200, answer.text
    keys = [k["key"] for k in provider(api, "sandbox")["keys"]]
    assert keys[-1] == "sandbox:write:advertiser_id=adv-1"
    key = key_of(provider(api, "sandbox"), "sandbox:write:advertiser_id=adv-1")
    assert (key["configured"], key["in_force"], key["source"]) == ("2/s", "1/s", "pinned")


@pytest.mark.parametrize(
    ("url", "body", "status", "message"),
    [
        (
            "/api/limits/sandbox:write/pin",
            {"rate": "11/s", "reason": "r"},
            422,
            "a pin only lowers",
        ),
        (
            "/api/limits/sandbox:write/pin",
            {"rate": "fast", "reason": "r"},
            422,
            "invalid rate 'fast'",
        ),
        ("/api/limits/sandbox:write/pin", {"rate": "5/s", "reason": " "}, 422, "give a reason"),
        (
            "/api/limits/nope:write/pin",
            {"rate": "1/s", "reason": "r"},
            404,
            "unknown provider 'nope'",
        ),
        (
            "/api/limits/sandbox:read/pin",
            {"rate": "1/s", "reason": "r"},
            404,
            "unknown limit key 'sandbox:read'",
        ),
        ("/api/limits/sandbox:read/unpin", None, 404, "unknown limit key 'sandbox:read'"),
        ("/api/providers/nope/pause", {"reason": "r"}, 404, "unknown provider 'nope'"),
        ("/api/providers/nope/resume", None, 404, "unknown provider 'nope'"),
        (
            "/api/limits/sandbox:bogus/pause",
            {"reason": "r"},
            404,
            "unknown limit key 'sandbox:bogus'",
        ),
        (
            "/api/limits/sandbox:write:advertiser_id=a/pause",
            {"reason": "r"},
            422,
            "one account's key",
        ),
        ("/api/providers/sandbox/pause", {"reason": "r", "duration": "soon"}, 422, "duration must"),
        ("/api/providers/sandbox/pause", {"reason": "r", "duration": "0s"}, 422, "longer than 0"),
        (
            "/api/providers/sandbox/pause",
            {"reason": "r", "until": "2000-01-01T00:00:00Z"},
            422,
            "not in the future",
        ),
        (
            "/api/providers/sandbox/pause",
            {"reason": "r", "duration": "1h", "until": "2999-01-01T00:00:00Z"},
            422,
            "not both",
        ),
    ],
)
def test_refusals_name_the_problem_and_write_nothing(
    api: Api, url: str, body: dict[str, Any] | None, status: int, message: str
) -> None:
    before = stored(api)

    answer = api.client.post(url, json=body)

    assert answer.status_code == status, answer.text
    assert message in answer.text
    assert stored(api) == before
    assert controls_of(api).limiter.paused_until("sandbox") is None


def test_unknown_provider_on_the_read_route_is_404(api: Api) -> None:
    answer = api.client.get("/api/providers/nope")
    assert answer.status_code == 404
    assert answer.json()["detail"] == "unknown provider 'nope'; known providers: acme, sandbox"


def test_a_pause_by_hand_holds_the_limiter_and_resume_clears_it(api: Api) -> None:
    """The pause is in the database (reason, signal, who) and in the limiter; resume ends both."""
    controls = controls_of(api)

    paused = api.client.post(
        "/api/providers/sandbox/pause", json={"reason": "maintenance", "duration": "10min"}
    )

    assert paused.status_code == 200, paused.text
    until = api.clock.now() + timedelta(minutes=10)
    assert controls.limiter.paused_until("sandbox:write") == pytest.approx(until.timestamp())
    shown = provider(api, "sandbox")["pause"]
    assert shown["signal"] == "manual"
    assert shown["reason"] == "maintenance"
    assert shown["actor"] == "loopback"
    assert shown["until"].startswith(until.strftime("%Y-%m-%dT%H:%M:%S"))

    resumed = api.client.post("/api/providers/sandbox/resume")

    assert resumed.status_code == 200
    assert resumed.json()["detail"] == {"lifted": ["sandbox"]}
    assert controls.limiter.paused_until("sandbox") is None
    assert provider(api, "sandbox")["pause"] is None
    actions = [r["action"] for r in api.client.get("/api/audit").json()["items"]]
    assert actions == ["limit.resume", "limit.pause"]


def test_a_pause_without_an_end_lasts_until_resumed(api: Api) -> None:
    answer = api.client.post("/api/limits/sandbox:write/pause", json={"reason": "audit"})

    assert answer.status_code == 200
    assert answer.json()["detail"]["until"] is None
    key = key_of(provider(api, "sandbox"), "sandbox:write")
    assert key["pause"]["until"] is None
    api.clock.advance(30 * 86400)
    assert controls_of(api).limiter.paused_until("sandbox:write") is not None
    assert api.client.post("/api/providers/sandbox/resume").json()["detail"] == {
        "lifted": ["sandbox:write"]
    }
    assert controls_of(api).limiter.paused_until("sandbox:write") is None


def test_resume_with_nothing_paused_succeeds_and_says_so(api: Api) -> None:
    answer = api.client.post("/api/providers/acme/resume")

    assert answer.status_code == 200
    assert answer.json()["changed"] is False
    assert stored(api)[0] == 1


def test_resume_makes_tasks_given_back_at_the_pause_end_due_now(api: Api) -> None:
    """A dispatcher that waited out a long pause gave its tasks back due at its end."""
    api.client.post("/api/providers/sandbox/pause", json={"reason": "r", "duration": "1h"})
    end = api.clock.now() + timedelta(hours=1)
    held, _ = api.repo.create(Submission("sandbox", "campaign", {"n": 1}))
    later, _ = api.repo.create(Submission("sandbox", "campaign", {"n": 2}))
    other, _ = api.repo.create(Submission("acme", "campaign", {"n": 3}))
    with api.repo.engine.begin() as conn:
        conn.execute(
            update(tasks)
            .where(tasks.c.id.in_([held.id, other.id]))
            .values(next_attempt_at=end - timedelta(seconds=0.2), phase=Phase.READY.value)
        )
        conn.execute(
            update(tasks)
            .where(tasks.c.id == later.id)
            .values(next_attempt_at=end + timedelta(hours=1))
        )

    api.client.post("/api/providers/sandbox/resume")

    assert api.repo.get(held.id).next_attempt_at == api.clock.now()
    assert api.repo.get(later.id).next_attempt_at == end + timedelta(hours=1)
    assert api.repo.get(other.id).next_attempt_at == end - timedelta(seconds=0.2)


def test_an_operator_key_is_named_in_the_audit_and_the_pause(secured: SecuredApi) -> None:
    answer = secured.client.post(
        "/api/providers/sandbox/pause",
        json={"reason": "vendor incident"},
        headers=secured.auth("operator"),
    )

    assert answer.status_code == 200
    record = secured.client.get("/api/audit", headers=secured.auth("admin")).json()["items"][0]
    assert (record["actor"], record["key_name"], record["tenant"]) == ("key", "operator", None)
    assert record["target"] == "provider:sandbox"
    shown = secured.client.get("/api/providers/sandbox", headers=secured.auth("admin")).json()
    assert shown["pause"]["actor"] == f"operator (key {secured.ids['operator']})"
