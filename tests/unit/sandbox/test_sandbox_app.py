"""The sandbox DSP over ASGI with a fake clock: hierarchy, processing, limits, auth, truth."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from sluice.clock import FakeClock
from sluice.sandbox.app import create_sandbox_app
from sluice.sandbox.config import SandboxConfig

FIXED_DELAYS = {"accept_delay_s": 1.0, "process_delay_s": 2.0}
BAD_AUDIENCE = {
    "name": "blocklist",
    "advertiser_id": "adv-1",
    "type": "ip_range",
    "include": ["10.0.0.0/8", "192.168.1.256"],
}


def _client(clock: FakeClock, **section: Any) -> TestClient:
    config = SandboxConfig.from_settings({**FIXED_DELAYS, **section})
    return TestClient(create_sandbox_app(config, clock.time))


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test advances it."""
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock) -> TestClient:
    """The standard profile with 1 s accept and 2 s process delays, limits out of the way."""
    return _client(clock, limits=[{"name": "app", "limit": 10_000, "window_s": 1}])


def _campaign(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1", **fields})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_answers_at_once_then_the_status_moves_through_the_profile_words(
    client: TestClient, clock: FakeClock
) -> None:
    """A create gets 202 and an id; the status is pending, processing, then active."""
    created = _campaign(client, client_ref="ref-1")
    assert created == {"id": "cmp-1", "status": "pending", "client_ref": "ref-1"}
    seen = []
    for step_s in (0.0, 1.0, 1.99, 0.01):
        clock.advance(step_s)
        seen.append(client.get("/v1/campaigns/cmp-1/status").json()["status"])
    assert seen == ["pending", "processing", "processing", "active"]


def test_bare_profile_says_building_until_ready(clock: FakeClock) -> None:
    """The bare profile has one word for both waiting states, then READY."""
    client = _client(clock, profile="bare")
    _campaign(client)
    clock.advance(1.5)
    assert client.get("/v1/campaigns/cmp-1/status").json()["status"] == "BUILDING"
    clock.advance(1.5)
    assert client.get("/v1/campaigns/cmp-1/status").json()["status"] == "READY"


def test_validation_happens_during_processing_with_a_field_path(
    client: TestClient, clock: FakeClock
) -> None:
    """A bad IP range is accepted, then rejected with the message and a field path."""
    created = client.post("/v1/audiences", json=BAD_AUDIENCE)
    assert created.status_code == 202
    early = client.get("/v1/audiences/aud-1").json()
    assert (early["status"], early["error_message"], early["errors"]) == ("pending", None, [])
    clock.advance(3.0)
    done = client.get("/v1/audiences/aud-1").json()
    assert done["status"] == "rejected"
    assert done["error_message"] == "Invalid IP range: 192.168.1.256"
    assert done["errors"] == [{"field": "include[1]", "message": "Invalid IP range: 192.168.1.256"}]
    assert done["include"] == BAD_AUDIENCE["include"]


def test_children_need_an_existing_approved_parent(client: TestClient, clock: FakeClock) -> None:
    """Unknown parent is 404, a processing or rejected parent is 409, an approved one works."""
    unknown = client.post("/v1/ad_groups", json={"name": "g", "campaign_id": "cmp-9"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {"code": "NOT_FOUND", "message": "campaign cmp-9 not found"}
    _campaign(client)
    _campaign(client, budget=-5)
    early = client.post("/v1/ad_groups", json={"name": "g", "campaign_id": "cmp-1"})
    assert early.status_code == 409
    assert early.json()["error"]["code"] == "PARENT_NOT_READY"
    clock.advance(3.0)
    rejected_parent = client.post("/v1/ad_groups", json={"name": "g", "campaign_id": "cmp-2"})
    assert rejected_parent.status_code == 409
    group = client.post("/v1/ad_groups", json={"name": "g", "campaign_id": "cmp-1", "bid": 1.5})
    assert group.status_code == 202
    assert group.json()["id"] == "adg-1"
    clock.advance(3.0)
    ad = client.post("/v1/ads", json={"name": "a", "ad_group_id": "adg-1"})
    assert (ad.status_code, ad.json()["id"]) == (202, "ad-1")
    assert client.get("/v1/ads/ad-1").json()["ad_group_id"] == "adg-1"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", None),
        (b'["a list"]', None),
        (b'{"advertiser_id": "adv-1"}', "name"),
        (b'{"name": "c"}', "advertiser_id"),
        (b'{"name": "c", "advertiser_id": "adv-1", "budget": "big"}', "budget"),
    ],
)
def test_malformed_creates_are_400_and_create_nothing(
    client: TestClient, content: bytes, field: str | None
) -> None:
    """A create that cannot be read is answered 400 naming the field, and no object appears."""
    response = client.post("/v1/campaigns", content=content)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_REQUEST"
    assert response.json()["error"].get("field") == field
    assert "campaigns" not in client.get("/_sandbox/stats").json()["objects"]


def test_unknown_collections_objects_and_routes_are_404(client: TestClient) -> None:
    """Unknown collections, ids, ids of another collection and routes answer 404."""
    _campaign(client)
    assert client.post("/v1/widgets", json={"name": "w"}).status_code == 404
    assert client.get("/v1/campaigns/cmp-2/status").status_code == 404
    assert client.get("/v1/ads/cmp-1").status_code == 404
    assert client.get("/v2/nothing").status_code == 404
    assert client.get("/v1/advertisers/adv-3").json()["status"] == "active"


def test_batch_status_answers_known_ids_in_order_with_fixtures(clock: FakeClock) -> None:
    """Batch status lists objects and fixtures in the order asked and omits unknown ids."""
    client = _client(
        clock,
        profile="demo",
        faults={"error_5xx": 0, "unavailable_503": 0, "reset": 0, "commit_then_timeout": 0},
    )
    client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-2"})
    answer = client.get("/v1/status", params={"ids": "3,cmp-1,nope,1,2"}).json()
    assert answer == [
        {"id": "3", "status": "Error", "error_message": "Invalid IP range: 192.168.1.256"},
        {"id": "cmp-1", "status": "Not Started", "error_message": None},
        {"id": "1", "status": "In Progress", "error_message": None},
        {"id": "2", "status": "Completed", "error_message": None},
    ]
    too_many = client.get("/v1/status", params={"ids": ",".join(str(i) for i in range(101))})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["field"] == "ids"


def test_fixtures_come_from_the_config(clock: FakeClock) -> None:
    """Fixtures configured in [sandbox] answer with their scripted status."""
    client = _client(clock, fixtures={"ext-9": {"status": "active"}})
    answer = client.get("/v1/status?ids=ext-9").json()
    assert answer == [{"id": "ext-9", "status": "active", "error_message": None}]


def test_duplicates_are_visible_by_client_ref_and_in_stats(client: TestClient) -> None:
    """Two creates with one client_ref are both found by lookup and counted as a duplicate."""
    _campaign(client, client_ref="order-7")
    _campaign(client, client_ref="order-7")
    _campaign(client, client_ref="order-8")
    found = client.get("/v1/campaigns", params={"client_ref": "order-7"}).json()["data"]
    assert [o["id"] for o in found] == ["cmp-1", "cmp-2"]
    assert client.get("/v1/campaigns?client_ref=none").json() == {"data": []}
    stats = client.get("/_sandbox/stats").json()
    assert stats["duplicates"] == [
        {"collection": "campaigns", "client_ref": "order-7", "ids": ["cmp-1", "cmp-2"]}
    ]
    assert stats["duplicate_count"] == 1


def test_idempotency_key_mode_replays_the_original_answer(clock: FakeClock) -> None:
    """With idempotency on, a repeated key returns the first answer and creates nothing."""
    client = _client(clock, idempotency=True)
    body = {"name": "c", "advertiser_id": "adv-1"}
    first = client.post("/v1/campaigns", json=body, headers={"Idempotency-Key": "k1"})
    clock.advance(5)
    again = client.post("/v1/campaigns", json=body, headers={"Idempotency-Key": "k1"})
    other = client.post("/v1/campaigns", json=body, headers={"Idempotency-Key": "k2"})
    assert again.status_code == 202
    assert again.json() == first.json() == {"id": "cmp-1", "status": "pending", "client_ref": None}
    assert other.json()["id"] == "cmp-2"


def test_idempotency_key_is_ignored_when_the_mode_is_off(client: TestClient) -> None:
    """Like real DSPs, the default sandbox ignores Idempotency-Key and creates twice."""
    body = {"name": "c", "advertiser_id": "adv-1"}
    ids = {
        client.post("/v1/campaigns", json=body, headers={"Idempotency-Key": "k"}).json()["id"]
        for _ in range(2)
    }
    assert ids == {"cmp-1", "cmp-2"}


def test_every_response_carries_a_distinct_request_id(client: TestClient) -> None:
    """Successes, errors, unknown routes and the truth endpoints all carry X-Request-Id."""
    responses = [
        client.get("/healthz"),
        client.post("/v1/campaigns", content=b"x"),
        client.get("/nowhere"),
        client.delete("/v1/campaigns"),
        client.get("/_sandbox/stats"),
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == len(ids)


def _exhaust(client: TestClient) -> Any:
    """Two calls against a 1-per-10-s limit: the second is refused."""
    assert client.get("/v1/status?ids=1").status_code == 200
    return client.get("/v1/status?ids=1")


ONE_PER_10S = [{"name": "app", "limit": 1, "window_s": 10}]


def test_standard_profile_refuses_with_429_and_retry_after(clock: FakeClock) -> None:
    """Over the limit, standard answers 429 with Retry-After in whole seconds rounded up."""
    client = _client(clock, limits=ONE_PER_10S)
    client.get("/healthz")
    assert client.get("/v1/status").status_code == 200
    clock.advance(2.5)
    refused = client.get("/v1/status")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "8"
    clock.advance(7.5)
    assert client.get("/v1/status").status_code == 200


def test_headers_profile_refuses_with_rate_limit_headers(clock: FakeClock) -> None:
    """Over the limit, headers answers 429 with limit, remaining 0 and the reset epoch."""
    client = _client(clock, profile="headers", limits=ONE_PER_10S)
    start = clock.time()
    refused = _exhaust(client)
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit"] == "1"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-reset"] == f"{start + 10:.3f}"


def test_meta_profile_refuses_with_400_code_17_and_usage_header(clock: FakeClock) -> None:
    """Over the limit, meta answers HTTP 400, code 17, and the minutes to regain access."""
    client = _client(clock, profile="meta", limits=ONE_PER_10S)
    refused = _exhaust(client)
    assert refused.status_code == 400
    assert refused.json() == {
        "error": {
            "message": "User request limit reached",
            "type": "OAuthException",
            "code": 17,
            "is_transient": True,
        }
    }
    usage = json.loads(refused.headers["x-business-use-case-usage"])
    (entry,) = usage["anonymous"]
    assert entry["type"] == "ads_management"
    assert entry["estimated_time_to_regain_access"] == pytest.approx(10 / 60, abs=1e-4)
    assert entry["estimated_time_to_regain_access"] >= 10 / 60


def test_bare_profile_refuses_with_a_bare_429(clock: FakeClock) -> None:
    """Over the limit, bare answers 429 with an empty body and no rate-limit headers."""
    client = _client(clock, profile="bare", limits=ONE_PER_10S)
    refused = _exhaust(client)
    assert (refused.status_code, refused.content) == (429, b"")
    assert not {"retry-after", "x-ratelimit-reset"} & set(refused.headers)


def test_failed_calls_and_polls_spend_budget_and_refusals_are_recorded(clock: FakeClock) -> None:
    """A 404 poll counts against the limit; the refusal and the busiest window are reported."""
    client = _client(clock, limits=[{"name": "app", "limit": 2, "window_s": 1}])
    assert client.get("/v1/campaigns/cmp-404/status").status_code == 404
    assert client.post("/v1/campaigns", content=b"bad").status_code == 400
    assert client.get("/v1/status?ids=1").status_code == 429
    stats = client.get("/_sandbox/stats").json()
    assert stats["refused"] == {"app:anonymous": 1}
    assert stats["refused_total"] == 1
    assert stats["max_in_window"] == {"app:anonymous": {"limit": 2, "window_s": 1.0, "max_seen": 3}}
    assert stats["requests"]["GET /v1/status"] == {"429": 1}
    assert stats["requests"]["GET /v1/campaigns/{id}/status"] == {"404": 1}


def test_advertiser_write_budgets_follow_the_parent_chain(clock: FakeClock) -> None:
    """Writes under one advertiser, direct or via a campaign, share its budget only."""
    client = _client(
        clock,
        accept_delay_s=0,
        process_delay_s=0,
        limits=[{"name": "adv", "per": "advertiser", "scope": "write", "limit": 2, "window_s": 60}],
    )
    assert _campaign(client)["id"] == "cmp-1"
    group = client.post("/v1/ad_groups", json={"name": "g", "campaign_id": "cmp-1"})
    assert group.status_code == 202
    third = client.post("/v1/audiences", json={**BAD_AUDIENCE, "include": []})
    assert third.status_code == 429
    assert client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-2"}).is_success
    assert client.get("/v1/campaigns/cmp-1").status_code == 200
    assert client.get("/_sandbox/stats").json()["refused"] == {"adv:adv-1": 1}


def test_auth_issues_short_lived_tokens_keyed_by_client(clock: FakeClock) -> None:
    """With auth on, calls need a fresh bearer token, and limits are per client_id."""
    client = _client(
        clock,
        auth=True,
        token_lifetime_s=60,
        credentials={"acme": "s3cret"},
        limits=[{"name": "app", "limit": 100, "window_s": 1}],
    )
    assert client.get("/v1/status").status_code == 401
    wrong = client.post("/oauth/token", json={"client_id": "acme", "client_secret": "nope"})
    assert wrong.status_code == 401
    issued = client.post("/oauth/token", json={"client_id": "acme", "client_secret": "s3cret"})
    assert issued.json()["token_type"] == "bearer"
    assert issued.json()["expires_in"] == 60
    headers = {"Authorization": f"Bearer {issued.json()['access_token']}"}
    assert client.get("/v1/status", headers=headers).status_code == 200
    assert client.get("/v1/status", headers={"Authorization": "Bearer forged"}).status_code == 401
    clock.advance(60)
    expired = client.get("/v1/status", headers=headers)
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "UNAUTHORIZED"
    assert set(client.get("/_sandbox/stats").json()["max_in_window"]) == {"app:acme"}


def test_static_tokens_stand_for_their_accounts(clock: FakeClock) -> None:
    """Configured static tokens are accepted without /oauth/token, each as its own account."""
    client = _client(
        clock,
        auth=True,
        tokens={"tok-agency-a-1234": "agency-a", "tok-agency-b-5678": "agency-b"},
        limits=[{"name": "app", "limit": 100, "window_s": 1}],
    )
    for token in ("tok-agency-a-1234", "tok-agency-b-5678", "tok-agency-b-5678"):
        answer = client.get("/v1/status", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200
    assert client.get("/v1/status", headers={"Authorization": "Bearer tok-x"}).status_code == 401
    clock.advance(3600)
    headers = {"Authorization": "Bearer tok-agency-a-1234"}
    assert client.get("/v1/status", headers=headers).status_code == 200
    windows = client.get("/_sandbox/stats").json()["max_in_window"]
    assert {key: w["max_seen"] for key, w in windows.items()} == {
        "app:agency-a": 1,
        "app:agency-b": 2,
    }


def test_reset_forgets_objects_stats_and_limits_but_keeps_config(clock: FakeClock) -> None:
    """After reset only the seeded advertisers exist, ids restart, budgets are whole again."""
    client = _client(clock, limits=[{"name": "app", "limit": 1, "window_s": 60}])
    _campaign(client)
    assert client.get("/v1/status").status_code == 429
    assert client.post("/_sandbox/reset").status_code == 200
    stats = client.get("/_sandbox/stats").json()
    assert stats["objects"] == {"advertisers": {"active": 3}}
    assert (stats["total_requests"], stats["refused_total"], stats["max_in_window"]) == (0, 0, {})
    assert _campaign(client)["id"] == "cmp-1"
    assert client.get("/_sandbox/config").json()["limits"][0]["limit"] == 1


def test_config_can_be_changed_at_run_time(client: TestClient) -> None:
    """PUT /_sandbox/config changes limits and faults; fixed keys are refused with 400."""
    changed = client.put("/_sandbox/config", json={"limits": [], "faults": {"error_5xx": 1}})
    assert changed.status_code == 200
    assert changed.json()["limits"] == []
    assert client.get("/v1/status").status_code == 500
    refused = client.put("/_sandbox/config", json={"profile": "meta"})
    assert refused.status_code == 400
    assert "cannot change profile" in refused.json()["error"]["message"]
    assert client.put("/_sandbox/config", json={"faults": {"reset": 7}}).status_code == 400


def test_stats_count_objects_by_status_word(client: TestClient, clock: FakeClock) -> None:
    """The objects table counts each collection by the status words in force now."""
    _campaign(client)
    client.post("/v1/audiences", json=BAD_AUDIENCE)
    clock.advance(3)
    _campaign(client)
    objects = client.get("/_sandbox/stats").json()["objects"]
    assert objects == {
        "advertisers": {"active": 3},
        "campaigns": {"active": 1, "pending": 1},
        "audiences": {"rejected": 1},
    }


def test_the_config_routes_never_show_secrets_or_tokens(clock: FakeClock) -> None:
    """Client secrets and static tokens are masked in GET and PUT /_sandbox/config answers."""
    client = _client(
        clock,
        credentials={"app-1": "s3cret-value"},
        tokens={"tok-abcdef123": "acct-1", "tok-zyx987": "acct-2"},
    )
    shown = [client.get("/_sandbox/config"), client.put("/_sandbox/config", json={"limits": []})]
    for answer in shown:
        assert answer.status_code == 200
        text = answer.text
        for secret in ("s3cret-value", "tok-abcdef123", "tok-zyx987"):
            assert secret not in text
        body = answer.json()
        assert body["credentials"] == {"app-1": "********"}
        assert sorted(body["tokens"].values()) == ["acct-1", "acct-2"]


def test_a_maintenance_window_answers_429_with_the_seconds_left(clock: FakeClock) -> None:
    """From start_s for duration_s every /v1 call gets 429 + Retry-After (the seconds left,
    rounded up); before and after, calls go through. A new window counts from its PUT."""
    client = _client(
        clock, limits=[{"name": "app", "limit": 10_000, "window_s": 1}], maintenance=[[5, 4]]
    )

    def create() -> Any:
        return client.post("/v1/campaigns", json={"name": "c", "advertiser_id": "adv-1"})

    assert create().status_code == 202
    clock.advance(5.5)
    refused = create()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "4"
    assert refused.json()["error"]["code"] == "MAINTENANCE"
    clock.advance(3.0)
    assert create().headers.get("retry-after") == "1"
    clock.advance(1.0)
    assert create().status_code == 202
    assert client.put("/_sandbox/config", json={"maintenance": [[0, 2]]}).status_code == 200
    assert create().status_code == 429
    clock.advance(2.0)
    assert create().status_code == 202
