"""The auth matrix, generated from the app's own route table: every route x no key, bad
keys, revoked, expired, each role and another tenant. A route the table below does not
classify fails the suite, so a new route cannot skip auth.

For each case: an unusable key is 401 with ``WWW-Authenticate: Bearer``; a role below the
route's is 403 naming the role; an allowed role succeeds; another tenant's task is 404
exactly like a missing one; and a refusal writes nothing at all (every row of every table
compared, keys' revocation and last use included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import create_engine

from sluice import apikeys, errors
from sluice.api.app import create_app
from sluice.api.auth import UNAUTHORIZED_DETAIL, Allow, GuardedRoute, Public, iter_routes
from sluice.api.console.routes import ConsoleRoute
from sluice.catalog import Catalog, ProviderInfo
from sluice.domain import LOCAL_ACTOR, Role, Submission, TaskStatus
from sluice.settings import Settings
from sluice.store.bulkjobs import BulkJobs
from sluice.store.filters import TaskFilter
from sluice.store.repository import TaskRepository

if TYPE_CHECKING:
    from conftest import SecuredApi

CATALOG = Catalog({"sandbox": ProviderInfo(frozenset({"campaign"}), True)}, "sandbox")
PUBLIC = None
# The spec (issue 10): the role each route needs, None for public ones. Adding a route to
# the app without adding it here fails test_every_route_is_classified.
EXPECTED: dict[tuple[str, str], Role | None] = {
    ("POST", "/api/tasks"): Role.SUBMITTER,
    ("POST", "/api/tasks/bulk"): Role.SUBMITTER,
    ("GET", "/api/tasks"): Role.VIEWER,
    ("GET", "/api/tasks/{task_id}"): Role.VIEWER,
    ("GET", "/api/tasks/{task_id}/events"): Role.VIEWER,
    ("POST", "/api/tasks/{task_id}/cancel"): Role.SUBMITTER,
    ("POST", "/api/tasks/{task_id}/retry"): Role.SUBMITTER,
    ("POST", "/api/keys"): Role.ADMIN,
    ("GET", "/api/keys"): Role.ADMIN,
    ("POST", "/api/keys/{key_id}/revoke"): Role.ADMIN,
    ("GET", "/api/audit"): Role.OPERATOR,
    ("GET", "/api/tasks/{task_id}/explain"): Role.VIEWER,
    ("GET", "/api/providers"): Role.OPERATOR,
    ("GET", "/api/rates"): Role.OPERATOR,
    ("GET", "/api/providers/{name}"): Role.OPERATOR,
    ("GET", "/api/providers/{name}/quotas"): Role.OPERATOR,
    ("POST", "/api/providers/{name}/pause"): Role.OPERATOR,
    ("POST", "/api/providers/{name}/resume"): Role.OPERATOR,
    ("POST", "/api/limits/{key}/pause"): Role.OPERATOR,
    ("POST", "/api/limits/{key}/resume"): Role.OPERATOR,
    ("POST", "/api/limits/{key}/pin"): Role.OPERATOR,
    ("POST", "/api/limits/{key}/unpin"): Role.OPERATOR,
    ("GET", "/metrics"): Role.OPERATOR,
    ("GET", "/api/providers/{name}/shares"): Role.OPERATOR,
    ("GET", "/api/overview"): Role.VIEWER,
    ("POST", "/api/bulk-actions/preview"): Role.SUBMITTER,
    ("POST", "/api/bulk-actions"): Role.SUBMITTER,
    ("GET", "/api/bulk-actions/{job_id}"): Role.VIEWER,
    ("GET", "/api/healthchecker"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
}
# The documentation routes (sluice/api/apidocs.py) and the files of their pages: public,
# they hold no data.
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static-offline-docs"}

CREDENTIALS = [
    "none",
    "malformed",
    "unknown-id",
    "wrong-secret",
    "revoked",
    "expired",
    "viewer",
    "submitter",
    "operator",
    "admin",
    "other-tenant",
]


def route_table() -> dict[tuple[str, str], Allow | Public | None]:
    """(method, path) -> declared access of every API route of a freshly built app."""
    repo = TaskRepository(create_engine("sqlite://"))
    app = create_app(Settings(auth="required"), repo, CATALOG)
    table: dict[tuple[str, str], Allow | Public | None] = {}
    for route in iter_routes(app.routes):
        path = getattr(route, "path", "?")
        if not isinstance(route, APIRoute):
            assert path in DOCS, f"route {path} is not an API route nor FastAPI's docs"
            continue
        if isinstance(route, ConsoleRoute):
            continue  # session cookie, not keys: classified in test_console_login.py
        for method in route.methods:
            table[(method, route.path)] = route.access if isinstance(route, GuardedRoute) else None
    return table


ROUTES = route_table()


def test_every_route_is_classified() -> None:
    """Every route of the app declares an access, and it is the one the spec gives."""
    declared = {
        key: (access.role if isinstance(access, Allow) else PUBLIC if access else "NONE")
        for key, access in ROUTES.items()
    }

    assert declared == EXPECTED


@dataclass
class Call:
    method: str
    url: str
    json: Any = None


def make_task(api: SecuredApi, tenant: str = "acme", status: TaskStatus | None = None) -> int:
    task, _ = api.repo.create(Submission("sandbox", "campaign", {"name": "Spring"}, tenant=tenant))
    if status is not None:
        api.force_status(task.id, status)
    return task.id


def make_job(api: SecuredApi) -> int:
    """A finished bulk job of tenant acme."""
    jobs = BulkJobs(api.repo)
    empty = TaskFilter(kind="nothing-matches")
    preview = jobs.preview("retry", empty, "acme")
    return jobs.start("retry", empty, "acme", preview, LOCAL_ACTOR).id


def make_key(api: SecuredApi) -> str:
    return apikeys.create_key(api.keys, name="target", role="viewer", tenant="acme").key.id


# How to call each route with a valid request on a fresh target of tenant acme.
EXAMPLES: dict[tuple[str, str], Callable[[SecuredApi], Call]] = {
    ("POST", "/api/tasks"): lambda api: Call("POST", "/api/tasks", api.campaign()),
    ("POST", "/api/tasks/bulk"): lambda api: Call(
        "POST", "/api/tasks/bulk", {"tasks": [api.campaign()]}
    ),
    ("GET", "/api/tasks"): lambda api: Call("GET", "/api/tasks"),
    ("GET", "/api/tasks/{task_id}"): lambda api: Call("GET", f"/api/tasks/{make_task(api)}"),
    ("GET", "/api/tasks/{task_id}/events"): lambda api: Call(
        "GET", f"/api/tasks/{make_task(api)}/events"
    ),
    ("POST", "/api/tasks/{task_id}/cancel"): lambda api: Call(
        "POST", f"/api/tasks/{make_task(api)}/cancel"
    ),
    ("POST", "/api/tasks/{task_id}/retry"): lambda api: Call(
        "POST", f"/api/tasks/{make_task(api, status=TaskStatus.ERROR)}/retry"
    ),
    ("POST", "/api/keys"): lambda api: Call(
        "POST", "/api/keys", {"name": "new", "role": "viewer", "tenant": "acme"}
    ),
    ("GET", "/api/keys"): lambda api: Call("GET", "/api/keys"),
    ("POST", "/api/keys/{key_id}/revoke"): lambda api: Call(
        "POST", f"/api/keys/{make_key(api)}/revoke"
    ),
    ("GET", "/api/audit"): lambda api: Call("GET", "/api/audit"),
    ("GET", "/api/tasks/{task_id}/explain"): lambda api: Call(
        "GET", f"/api/tasks/{make_task(api)}/explain"
    ),
    ("GET", "/api/providers"): lambda api: Call("GET", "/api/providers"),
    ("GET", "/api/rates"): lambda api: Call("GET", "/api/rates"),
    ("GET", "/api/providers/{name}"): lambda api: Call("GET", "/api/providers/sandbox"),
    ("GET", "/api/providers/{name}/quotas"): lambda api: Call(
        "GET", "/api/providers/sandbox/quotas"
    ),
    ("POST", "/api/providers/{name}/pause"): lambda api: Call(
        "POST", "/api/providers/acme/pause", {"reason": "maintenance", "duration": "1min"}
    ),
    ("POST", "/api/providers/{name}/resume"): lambda api: Call(
        "POST", "/api/providers/acme/resume"
    ),
    ("POST", "/api/limits/{key}/pause"): lambda api: Call(
        "POST", "/api/limits/sandbox:write/pause", {"reason": "quota", "duration": "1min"}
    ),
    ("POST", "/api/limits/{key}/resume"): lambda api: Call(
        "POST", "/api/limits/sandbox:write/resume"
    ),
    ("POST", "/api/limits/{key}/pin"): lambda api: Call(
        "POST", "/api/limits/sandbox:write/pin", {"rate": "5/s", "reason": "429s"}
    ),
    ("POST", "/api/limits/{key}/unpin"): lambda api: Call(
        "POST", "/api/limits/sandbox:write/unpin"
    ),
    ("GET", "/metrics"): lambda api: Call("GET", "/metrics"),
    ("GET", "/api/providers/{name}/shares"): lambda api: Call(
        "GET", "/api/providers/sandbox/shares"
    ),
    ("GET", "/api/overview"): lambda api: Call("GET", "/api/overview"),
    ("POST", "/api/bulk-actions/preview"): lambda api: Call(
        "POST", "/api/bulk-actions/preview", {"action": "retry", "filter": {"status": "Error"}}
    ),
    ("POST", "/api/bulk-actions"): lambda api: Call(
        "POST", "/api/bulk-actions", {"action": "retry", "filter": {"kind": "none-such"}}
    ),
    ("GET", "/api/bulk-actions/{job_id}"): lambda api: Call(
        "GET", f"/api/bulk-actions/{make_job(api)}"
    ),
    ("GET", "/api/healthchecker"): lambda api: Call("GET", "/api/healthchecker"),
    ("GET", "/healthz"): lambda api: Call("GET", "/healthz"),
    ("GET", "/readyz"): lambda api: Call("GET", "/readyz"),
}


def headers_for(api: SecuredApi, credential: str, needed: Role | None) -> dict[str, str]:
    """The Authorization header of ``credential`` (other-tenant: globex's key of the
    route's role, or the highest tenant role)."""
    admin_token = api.tokens["admin"]
    key_id = api.ids["admin"]
    if credential == "none":
        return {}
    if credential == "malformed":
        return {"Authorization": f"Bearer {admin_token[3:]}"}
    if credential == "unknown-id":
        return {"Authorization": f"Bearer {admin_token.replace(key_id, '0' * 12)}"}
    if credential == "wrong-secret":
        flipped = "B" if admin_token[-1] == "A" else "A"
        return {"Authorization": f"Bearer {admin_token[:-1]}{flipped}"}
    if credential == "other-tenant":
        label = "viewer-globex" if needed is Role.VIEWER else "submitter-globex"
        return api.auth(label)
    return api.auth(credential)


def role_of(credential: str, needed: Role | None) -> Role | None:
    if credential in ("viewer", "submitter", "operator", "admin"):
        return Role(credential)
    if credential == "other-tenant":
        return Role.VIEWER if needed is Role.VIEWER else Role.SUBMITTER
    return None


CASES = [
    pytest.param(route, credential, id=f"{route[0]} {route[1]} x {credential}")
    for route in sorted(ROUTES)
    for credential in CREDENTIALS
]


@pytest.mark.parametrize(("route", "credential"), CASES)
def test_auth_matrix(shared_secured: SecuredApi, route: tuple[str, str], credential: str) -> None:
    """Each route answers each credential as the module docstring says."""
    api = shared_secured
    assert route in EXAMPLES, f"add an example request for {route} to EXAMPLES"
    access = ROUTES[route]
    needed = access.role if isinstance(access, Allow) else None
    call = EXAMPLES[route](api)
    headers = headers_for(api, credential, needed)
    role = role_of(credential, needed)
    before = api.written()

    response = api.client.request(call.method, call.url, json=call.json, headers=headers)

    if needed is None:
        assert response.status_code == 200, response.text
        return
    if role is None:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"detail": UNAUTHORIZED_DETAIL}
        assert api.written() == before
        return
    if not role.allows(needed):
        assert response.status_code == 403, response.text
        assert response.json()["required_role"] == needed.value
        assert api.written() == before
        return
    if credential == "other-tenant" and ("{task_id}" in route[1] or "{job_id}" in route[1]):
        task_id = call.url.split("/")[3]
        missing = api.client.request(
            call.method, call.url.replace(f"/{task_id}", "/999999999"), headers=headers
        )
        assert response.status_code == missing.status_code == 404, response.text
        assert response.json()["detail"] == missing.json()["detail"].replace("999999999", task_id)
        assert api.written() == before
        return
    assert 200 <= response.status_code < 300, response.text
    if credential == "other-tenant" and route == ("GET", "/api/tasks"):
        assert {t["tenant"] for t in response.json()["items"]} <= {"globex"}
    if credential == "other-tenant" and route[1].startswith("/api/bulk-actions"):
        assert response.json().get("tenant", "globex") == "globex"
        return
    if credential == "other-tenant" and route[0] == "POST":
        created = response.json()
        tenants = (
            [created["tenant"]]
            if "tenant" in created
            else [api.repo.get(i).tenant for i in created["ids"]]
        )
        assert tenants == ["globex"]


def test_a_route_without_declared_access_cannot_be_built() -> None:
    """A GuardedRoute that declares no access fails when it is defined, naming the fix."""
    from fastapi import APIRouter

    router = APIRouter(route_class=GuardedRoute)

    with pytest.raises(errors.UnguardedRoute, match="declares no access"):

        @router.get("/api/secrets")
        def secrets() -> dict[str, str]:
            return {}


def test_an_unguarded_router_is_refused() -> None:
    """An app holding a plain APIRoute, even inside an included router, is refused."""
    from fastapi import APIRouter, FastAPI

    from sluice.api.auth import check_guarded

    router = APIRouter()

    @router.get("/api/secrets")
    def secrets() -> dict[str, str]:
        return {}

    app = FastAPI()
    app.include_router(router)

    with pytest.raises(errors.UnguardedRoute, match="/api/secrets is not a GuardedRoute"):
        check_guarded(app.routes)
