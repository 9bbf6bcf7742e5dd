"""API keys at the API: a refused key says nothing of why, a missing role is named, another
tenant's task is missing, keys and audit records are managed through the API, and no
refusal writes anything."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from sluice.api.auth import UNAUTHORIZED_DETAIL

if TYPE_CHECKING:
    from conftest import SecuredApi


@pytest.fixture
def unchanged(secured: SecuredApi) -> Iterator[None]:
    """The test's requests must leave every table exactly as it was."""
    before = secured.written()
    yield
    assert secured.written() == before, "a refused request wrote something"


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": UNAUTHORIZED_DETAIL}


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token sk_0123456789ab_" + "A" * 43,
        "Bearer sk_0123456789ab_" + "A" * 43,
        "Bearer sk_0123456789ab",
        "Bearer not-a-key",
        "Bearer sk_ZZZZZZZZZZZZ_" + "A" * 43,
        "revoked",
        "expired",
        "wrong-secret",
    ],
)
def test_every_unusable_key_gets_the_same_401(secured: SecuredApi, header: str | None) -> None:
    """Missing, malformed, unknown, revoked, expired or wrong-secret keys all answer 401 with
    WWW-Authenticate: Bearer and one message that does not say which."""
    headers: dict[str, str] = {}
    if header in ("revoked", "expired"):
        headers = secured.auth(header)
    elif header == "wrong-secret":
        token = secured.tokens["admin"]
        headers = {"Authorization": f"Bearer {token[:-4]}AAAA"}
    elif header is not None:
        headers = {"Authorization": header}

    for method, path in (("GET", "/api/tasks"), ("POST", "/api/tasks"), ("GET", "/api/keys")):
        assert_unauthorized(secured.client.request(method, path, headers=headers, json={}))


@pytest.mark.usefixtures("unchanged")
def test_refused_before_the_body_is_read(secured: SecuredApi) -> None:
    """Without a key, even a body that is not JSON gets 401, not a 422 that would reveal
    the route's shape."""
    response = secured.client.post(
        "/api/tasks", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert_unauthorized(response)


@pytest.mark.usefixtures("unchanged")
def test_a_missing_role_is_named(secured: SecuredApi) -> None:
    """A viewer creating, a submitter listing keys and an operator revoking one get 403
    naming the role needed."""
    cases = [
        ("viewer", "POST", "/api/tasks", "submitter"),
        ("viewer", "POST", "/api/tasks/1/cancel", "submitter"),
        ("submitter", "GET", "/api/audit", "operator"),
        ("submitter", "GET", "/api/keys", "admin"),
        ("operator", "POST", f"/api/keys/{secured.ids['viewer']}/revoke", "admin"),
    ]
    for label, method, path, needed in cases:
        response = secured.client.request(
            method, path, headers=secured.auth(label), json=secured.campaign()
        )
        assert response.status_code == 403, (label, path, response.text)
        assert response.json()["required_role"] == needed
        assert f"'{needed}' role" in response.json()["detail"]


def test_tenants_see_only_their_own_tasks(secured: SecuredApi) -> None:
    """A task created with acme's key is listed and readable for acme only; for globex it
    is 404 with the body of a task that does not exist."""
    created = secured.client.post(
        "/api/tasks", json=secured.campaign(), headers=secured.auth("submitter")
    )
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["tenant"] == "acme"
    missing_id = task["id"] + 100

    for label, expected in (("viewer", [task["id"]]), ("viewer-globex", [])):
        listed = secured.client.get("/api/tasks", headers=secured.auth(label)).json()
        assert [t["id"] for t in listed["items"]] == expected
    for suffix, method in (
        ("", "GET"),
        ("/events", "GET"),
        ("/cancel", "POST"),
        ("/retry", "POST"),
    ):
        foreign = secured.client.request(
            method, f"/api/tasks/{task['id']}{suffix}", headers=secured.auth("submitter-globex")
        )
        missing = secured.client.request(
            method, f"/api/tasks/{missing_id}{suffix}", headers=secured.auth("submitter-globex")
        )
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["detail"] == missing.json()["detail"].replace(
            str(missing_id), str(task["id"])
        )


def test_a_tenant_key_cannot_choose_another_tenant(secured: SecuredApi) -> None:
    """?tenant= naming another tenant is 403 for a tenant's key; its own tenant is fine."""
    before = secured.written()
    refused = secured.client.post(
        "/api/tasks?tenant=globex", json=secured.campaign(), headers=secured.auth("submitter")
    )
    assert refused.status_code == 403
    assert refused.json()["required_role"] == "operator"
    assert secured.written() == before

    own = secured.client.get("/api/tasks?tenant=acme", headers=secured.auth("viewer"))
    assert own.status_code == 200


def test_admins_see_every_tenant_and_may_filter(secured: SecuredApi) -> None:
    """An admin lists every tenant's tasks, filters by ?tenant=, and creates in a named
    tenant (default: 'default')."""
    for label in ("submitter", "submitter-globex"):
        secured.client.post("/api/tasks", json=secured.campaign(), headers=secured.auth(label))
    made = secured.client.post(
        "/api/tasks?tenant=initech", json=secured.campaign(), headers=secured.auth("admin")
    ).json()
    plain = secured.client.post(
        "/api/tasks", json=secured.campaign(), headers=secured.auth("operator")
    ).json()

    everything = secured.client.get("/api/tasks", headers=secured.auth("admin")).json()
    only_globex = secured.client.get("/api/tasks?tenant=globex", headers=secured.auth("admin"))
    assert {t["tenant"] for t in everything["items"]} == {"acme", "globex", "initech", "default"}
    assert [t["tenant"] for t in only_globex.json()["items"]] == ["globex"]
    assert (made["tenant"], plain["tenant"]) == ("initech", "default")


def test_a_parent_of_another_tenant_is_unknown(secured: SecuredApi) -> None:
    """Naming another tenant's task as parent answers like naming a missing task."""
    parent = secured.client.post(
        "/api/tasks", json=secured.campaign(), headers=secured.auth("submitter")
    ).json()
    before = secured.written()

    response = secured.client.post(
        "/api/tasks",
        json=secured.campaign(parent_id=parent["id"]),
        headers=secured.auth("submitter-globex"),
    )

    assert response.status_code == 422
    assert f"parent task(s) {parent['id']} do not exist" in response.text
    assert secured.written() == before


def test_idempotency_keys_are_per_tenant_at_the_api(secured: SecuredApi) -> None:
    """Two tenants using the same Idempotency-Key with different bodies both get 201."""
    key = {"Idempotency-Key": "spring-2026"}
    first = secured.client.post(
        "/api/tasks", json=secured.campaign(), headers=key | secured.auth("submitter")
    )
    second = secured.client.post(
        "/api/tasks",
        json=secured.campaign(kind="creative"),
        headers=key | secured.auth("submitter-globex"),
    )

    assert (first.status_code, second.status_code) == (201, 201)
    assert "idempotent-replayed" not in second.headers


def test_keys_are_managed_by_admins_and_shown_once(secured: SecuredApi) -> None:
    """An admin makes a key (its text in that answer only), lists keys without secrets,
    and revokes it; the new key works until revoked; both actions are audited."""
    made = secured.client.post(
        "/api/keys",
        json={"name": "ci-acme", "role": "submitter", "tenant": "acme", "expires": "90d"},
        headers=secured.auth("admin"),
    )
    assert made.status_code == 201, made.text
    token = made.json()["key"]
    new = {"Authorization": f"Bearer {token}"}
    assert secured.client.get("/api/tasks", headers=new).status_code == 200

    listed = secured.client.get("/api/keys", headers=secured.auth("admin"))
    assert token.split("_", 2)[2] not in listed.text
    assert "key" not in listed.json()[0]
    assert made.json()["id"] in {k["id"] for k in listed.json()}

    revoked = secured.client.post(
        f"/api/keys/{made.json()['id']}/revoke", headers=secured.auth("admin")
    )
    assert revoked.json()["revoked_at"] is not None
    assert_unauthorized(secured.client.get("/api/tasks", headers=new))

    records = secured.client.get("/api/audit?action=key.", headers=secured.auth("admin"))
    actions = [(r["action"], r["key_name"], r["tenant"]) for r in records.json()["items"][:2]]
    assert actions == [("key.revoke", "admin", "acme"), ("key.create", "admin", "acme")]


def test_listed_keys_say_whether_each_is_active_revoked_or_expired(secured: SecuredApi) -> None:
    """GET /api/keys gives each key's state now, so an admin need not compare revoked_at
    and expires_at with the clock; revoking answers with the new state."""
    listed = secured.client.get("/api/keys", headers=secured.auth("admin"))

    states = {key["name"]: key["state"] for key in listed.json()}
    assert states["revoked"] == "revoked"
    assert states["expired"] == "expired"
    assert states["admin"] == states["viewer"] == "active"
    revoked = secured.client.post(
        f"/api/keys/{secured.ids['viewer']}/revoke", headers=secured.auth("admin")
    )
    assert revoked.json()["state"] == "revoked"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "role": "viewer"}, "belongs to one tenant"),
        ({"name": "x", "role": "admin", "tenant": "acme"}, "spans every tenant"),
        ({"name": "x", "role": "viewer", "tenant": "acme", "expires": "soon"}, "duration"),
        ({"name": "x", "role": "viewer", "tenant": "acme", "expires": "0s"}, "positive"),
        ({"name": "x", "role": "root", "tenant": "acme"}, "role"),
        ({"name": "x", "role": "viewer", "tenant": "a b"}, "tenant"),
        ({"name": "", "role": "viewer", "tenant": "acme"}, "name"),
    ],
)
def test_a_key_that_cannot_be_made_is_422(
    secured: SecuredApi, body: dict[str, Any], message: str
) -> None:
    """A key request with a bad role, tenant, name or expiry answers 422 naming it and
    writes nothing."""
    before = secured.written()

    response = secured.client.post("/api/keys", json=body, headers=secured.auth("admin"))

    assert response.status_code == 422
    assert message in response.text
    assert secured.written() == before


def test_revoking_an_unknown_key_is_404(secured: SecuredApi) -> None:
    """Revoking a key id nobody made answers 404 naming it and writes nothing."""
    before = secured.written()

    response = secured.client.post("/api/keys/0123456789ab/revoke", headers=secured.auth("admin"))

    assert response.status_code == 404
    assert "0123456789ab" in response.json()["detail"]
    assert secured.written() == before


def test_cancel_and_retry_are_audited_with_the_key(secured: SecuredApi) -> None:
    """Create, cancel and retry through the API leave audit records naming the key and
    tenant, which operators read with filters; viewers cannot read them."""
    task = secured.client.post(
        "/api/tasks", json=secured.campaign(), headers=secured.auth("submitter")
    ).json()
    secured.client.post(f"/api/tasks/{task['id']}/cancel", headers=secured.auth("submitter"))
    secured.client.post(f"/api/tasks/{task['id']}/retry", headers=secured.auth("submitter"))

    page = secured.client.get(
        "/api/audit", params={"action": "task.", "tenant": "acme"}, headers=secured.auth("operator")
    ).json()

    assert [(r["action"], r["key_name"], r["key_id"], r["target"]) for r in page["items"]] == [
        ("task.retry", "submitter", secured.ids["submitter"], f"task:{task['id']}"),
        ("task.cancel", "submitter", secured.ids["submitter"], f"task:{task['id']}"),
        ("task.create", "submitter", secured.ids["submitter"], f"task:{task['id']}"),
    ]
    assert secured.client.get("/api/audit", headers=secured.auth("viewer")).status_code == 403


def test_task_creation_is_audited_with_the_key(secured: SecuredApi) -> None:
    """Creating tasks leaves a record naming the key, the tenant and the tasks: one per
    task for a single create, one per batch for a bulk call. A replay or a refused create
    adds none. (Found from outside: GET /api/audit?key_id=ID, the way docs/security.md
    says to read what a leaked key did, listed none of the tasks it had created.)"""
    submitter = secured.auth("submitter")
    key_id = secured.ids["submitter"]
    one = secured.client.post(
        "/api/tasks", json=secured.campaign(), headers={**submitter, "Idempotency-Key": "k1"}
    ).json()
    batch = secured.client.post(
        "/api/tasks/bulk", json={"tasks": [secured.campaign()] * 3}, headers=submitter
    ).json()
    replay = secured.client.post(
        "/api/tasks", json=secured.campaign(), headers={**submitter, "Idempotency-Key": "k1"}
    )
    refused = secured.client.post(
        "/api/tasks", json=secured.campaign(kind="video"), headers=submitter
    )

    page = secured.client.get(
        "/api/audit", params={"key_id": key_id}, headers=secured.auth("admin")
    ).json()

    assert replay.headers["Idempotent-Replayed"] == "true"
    assert refused.status_code == 422
    first, last = min(batch["ids"]), max(batch["ids"])
    assert [
        (r["action"], r["target"], r["tenant"], r["key_id"], r["detail"]) for r in page["items"]
    ] == [
        (
            "tasks.bulk_create",
            f"tasks:{first}-{last}",
            "acme",
            key_id,
            {"count": 3, "first_id": first, "last_id": last},
        ),
        (
            "task.create",
            f"task:{one['id']}",
            "acme",
            key_id,
            {"provider": "sandbox", "kind": "campaign", "parent_id": None},
        ),
    ]


def test_last_use_is_recorded_at_most_once_a_minute(secured: SecuredApi) -> None:
    """A key's last use is written on its first request and again only a minute later."""
    key_id = secured.ids["viewer"]
    secured.client.get("/api/tasks", headers=secured.auth("viewer"))
    first = secured.keys.get(key_id).last_used_at
    secured.clock.advance(30)
    secured.client.get("/api/tasks", headers=secured.auth("viewer"))
    unchanged = secured.keys.get(key_id).last_used_at
    secured.clock.advance(31)
    secured.client.get("/api/tasks", headers=secured.auth("viewer"))

    assert first is not None
    assert unchanged == first
    assert secured.keys.get(key_id).last_used_at == secured.clock.now()


def test_health_checks_need_no_key(secured: SecuredApi) -> None:
    """Liveness, readiness and the prototype's health check answer without a key."""
    for path in ("/healthz", "/readyz", "/api/healthchecker"):
        assert secured.client.get(path).status_code == 200


def test_audit_pages_newest_first_and_refuses_bad_filters(secured: SecuredApi) -> None:
    """GET /api/audit pages with next_cursor, newest first, each record once; a bad cursor
    or time is 422 naming it."""
    for _ in range(5):
        task = secured.client.post(
            "/api/tasks", json=secured.campaign(), headers=secured.auth("submitter")
        ).json()
        secured.client.post(f"/api/tasks/{task['id']}/cancel", headers=secured.auth("submitter"))
    admin = secured.auth("admin")

    seen: list[int] = []
    params: dict[str, Any] = {"action": "task.cancel", "limit": 2}
    while True:
        page = secured.client.get("/api/audit", params=params, headers=admin).json()
        seen.extend(record["id"] for record in page["items"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]

    assert len(seen) == 5
    assert seen == sorted(seen, reverse=True)
    bad_cursor = secured.client.get("/api/audit", params={"cursor": "xyz"}, headers=admin)
    bad_time = secured.client.get("/api/audit", params={"since": "yesterday"}, headers=admin)
    assert bad_cursor.status_code == 422
    assert "cursor" in bad_cursor.text
    assert bad_time.status_code == 422
    assert "since" in bad_time.text
