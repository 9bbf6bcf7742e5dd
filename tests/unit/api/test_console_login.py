"""Console sign-in: a server-side session in a locked-down cookie, CSRF on every form,
a strict Content-Security-Policy, sign-out, and revocation that ends the session."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import insert, update

from sluice.api import console
from sluice.api.console.routes import ConsoleRoute
from sluice.api.console.session import CONTENT_SECURITY_POLICY
from sluice.clock import FakeClock
from sluice.domain import LOCAL_ACTOR, ApiKey, Role, Submission
from sluice.store import db
from sluice.store.audit import AuditLog
from sluice.store.bulkjobs import BulkJobs
from sluice.store.filters import TaskFilter
from sluice.store.rows import tasks
from sluice.store.sessions import SessionStore, api_keys

if TYPE_CHECKING:
    from tests.unit.api.conftest import SecuredApi

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GOOD = "sk_0123456789ab_" + "G" * 43


@dataclass
class Console:
    client: TestClient
    sessions: SessionStore
    clock: FakeClock
    key: ApiKey
    open_mode: list[bool]
    app: FastAPI

    def form_token(self, page: str) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found, page
        return found.group(1)

    def sign_in(self, api_key: str = GOOD) -> tuple[int, str]:
        form = self.client.get("/ui/login")
        answer = self.client.post(
            "/ui/login",
            data={"api_key": api_key, "csrf_token": self.form_token(form.text)},
            follow_redirects=False,
        )
        return answer.status_code, answer.headers.get("location", "")

    def revoke(self) -> None:
        with self.sessions.engine.begin() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == self.key.id)
                .values(revoked_at=self.clock.now())
            )


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Console]:
    """The console on its own app, one viewer key of tenant acme, a fake clock."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'ui.db'}")
    db.ensure_schema(engine)
    clock = FakeClock(START)
    key = ApiKey("0123456789ab", "ci-viewer", Role.VIEWER, "acme", START, None, None, None)
    with engine.begin() as conn:
        conn.execute(
            insert(api_keys),
            [
                {
                    "id": key.id,
                    "name": key.name,
                    "role": key.role.value,
                    "tenant": key.tenant,
                    "secret_hash": "0" * 64,
                    "created_at": START,
                }
            ],
        )
    sessions = SessionStore(engine, clock)
    open_mode = [False]

    def authenticate(token: str) -> ApiKey | None:
        # Stands in for sluice.apikeys.authenticate; the session reads the key row itself.
        return key if token == GOOD else None

    def open_to(_: Request) -> bool:
        return open_mode[0]

    app = FastAPI()
    console.install(app, sessions, authenticate, open_to)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield Console(client, sessions, clock, key, open_mode, app)
    engine.dispose()


def test_signing_in_opens_a_server_side_session_in_a_locked_down_cookie(ui: Console) -> None:
    """A good key gets a 303 to /ui and an HttpOnly, SameSite=Strict session cookie."""
    status, location = ui.sign_in()
    assert (status, location) == (303, "/ui")
    cookie = next(c for c in ui.client.cookies.jar if c.name == "sluice_session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite").lower() == "strict"
    assert not cookie.secure
    assert cookie.path == "/"
    assert ui.sessions.count(ui.key.id) == 1
    page = ui.client.get("/ui")
    assert page.status_code == 200
    assert "ci-viewer" in page.text
    assert "viewer" in page.text
    assert "acme" in page.text
    assert GOOD not in page.text


def test_the_session_cookie_is_secure_under_https(ui: Console) -> None:
    """Over HTTPS the cookie carries Secure and the __Host- prefix."""
    https = TestClient(ui.app, base_url="https://console.example")
    form = https.get("/ui/login")
    answer = https.post(
        "/ui/login",
        data={"api_key": GOOD, "csrf_token": ui.form_token(form.text)},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    set_cookie = answer.headers.get_list("set-cookie")
    session = next(c for c in set_cookie if c.startswith("__Host-sluice_session="))
    assert "Secure" in session
    assert "HttpOnly" in session
    assert "SameSite=strict" in session


def test_a_wrong_key_is_refused_without_a_hint_and_without_a_session(ui: Console) -> None:
    """A wrong key answers 401 with the same words whatever was wrong; nothing is stored."""
    status, _ = ui.sign_in("sk_0123456789ab_" + "W" * 43)
    assert status == 401
    assert ui.sessions.count(ui.key.id) == 0
    assert ui.client.get("/ui", follow_redirects=False).status_code == 303


def test_signing_in_needs_the_forms_csrf_token(ui: Console) -> None:
    """A sign-in post without the double-submit token, or with another one, is refused."""
    ui.client.get("/ui/login")
    for data in ({"api_key": GOOD}, {"api_key": GOOD, "csrf_token": "forged-token-value"}):
        answer = ui.client.post("/ui/login", data=data, follow_redirects=False)
        assert answer.status_code == 403
    assert ui.sessions.count(ui.key.id) == 0


def test_a_post_from_another_site_is_refused(ui: Console) -> None:
    """A form posted from a foreign Origin is refused even with the right token."""
    form = ui.client.get("/ui/login")
    answer = ui.client.post(
        "/ui/login",
        data={"api_key": GOOD, "csrf_token": ui.form_token(form.text)},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert ui.sessions.count(ui.key.id) == 0


def test_sign_out_needs_the_sessions_csrf_token_and_ends_the_session(ui: Console) -> None:
    """Sign-out without the page's token changes nothing; with it, the session is gone."""
    ui.sign_in()
    page = ui.client.get("/ui")
    forged = ui.client.post("/ui/logout", data={"csrf_token": "x" * 64}, follow_redirects=False)
    assert forged.status_code == 403
    assert ui.sessions.count(ui.key.id) == 1
    done = ui.client.post(
        "/ui/logout", data={"csrf_token": ui.form_token(page.text)}, follow_redirects=False
    )
    assert (done.status_code, done.headers["location"]) == (303, "/ui/login")
    assert ui.sessions.count(ui.key.id) == 0
    assert ui.client.get("/ui", follow_redirects=False).status_code == 303
    trail = AuditLog(ui.sessions.engine).list(key_id=ui.key.id).items
    assert [r.action for r in trail] == ["console.sign_out", "console.sign_in"]


def test_revoking_the_key_ends_the_console_session(ui: Console) -> None:
    """The next page after the key is revoked sends the browser back to sign in."""
    ui.sign_in()
    assert ui.client.get("/ui").status_code == 200
    ui.revoke()
    answer = ui.client.get("/ui", follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login")
    assert ui.sessions.count(ui.key.id) == 0


def test_an_idle_session_ends(ui: Console) -> None:
    """An hour without a request ends the session."""
    ui.sign_in()
    ui.clock.advance(timedelta(hours=1).total_seconds())
    assert ui.client.get("/ui", follow_redirects=False).status_code == 303


def test_every_console_page_carries_the_content_security_policy(ui: Console) -> None:
    """Login, refusal, the signed-in page, redirects and the style sheet all carry the CSP."""
    answers = [ui.client.get("/ui/login"), ui.client.get("/ui", follow_redirects=False)]
    answers.append(ui.client.post("/ui/login", data={}, follow_redirects=False))
    ui.sign_in()
    answers += [ui.client.get("/ui"), ui.client.get("/ui/static/console.css")]
    for answer in answers:
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY


def test_console_pages_have_no_inline_script_or_style(ui: Console) -> None:
    """The pages work under the CSP: scripts only from the console's own files, no inline
    script, no style attributes or blocks."""
    ui.sign_in()
    for page in (ui.client.get("/ui").text, ui.client.get("/ui/login").text):
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
        assert all(re.fullmatch(r' src="/ui/static/[a-z.]+\.js" defer', a) for a, _ in scripts)
        assert all(body.strip() == "" for _, body in scripts)
        assert " on" + "click=" not in page
        assert "<style" not in page
        assert "style=" not in page
        assert 'href="/ui/static/console.css"' in page


def test_the_open_loopback_mode_needs_no_sign_in(ui: Console) -> None:
    """When the API is open to the request, /ui shows the local user without a key."""
    ui.open_mode[0] = True
    page = ui.client.get("/ui")
    assert page.status_code == 200
    assert "Local user" in page.text
    assert "Sign out" not in page.text


# Every console route and who may open it: "session" (a signed-in session, or the open
# loopback mode) or "public". A console route missing here fails the test below.
CONSOLE_ROUTES = {
    ("GET", "/ui"): "session",
    ("GET", "/ui/account"): "session",
    ("GET", "/ui/overview/history"): "session",
    ("GET", "/ui/events"): "session",
    ("GET", "/ui/providers/{name}"): "session",
    ("GET", "/ui/providers/{name}/events"): "session",
    ("GET", "/ui/tasks"): "session",
    ("POST", "/ui/tasks/preview"): "session",
    ("POST", "/ui/tasks/bulk"): "session",
    ("GET", "/ui/tasks/{task_id}"): "session",
    ("GET", "/ui/jobs/{job_id}"): "session",
    ("GET", "/ui/audit"): "session",
    ("POST", "/ui/controls"): "session",
    ("POST", "/ui/logout"): "session",
    ("GET", "/ui/login"): "public",
    ("POST", "/ui/login"): "public",
    ("GET", "/ui/static/{name}"): "public",
}


def test_every_console_route_is_checked_by_the_console_route_class(ui: Console) -> None:
    """Every /ui route is a ConsoleRoute classified above; without a session each
    session route sends the browser to sign in (a new route cannot skip the check)."""
    every = [context.original_route for context in iter_route_contexts(ui.app.routes)]
    routes = [r for r in every if isinstance(r, APIRoute) and r.path.startswith("/ui")]
    for route in routes:
        assert isinstance(route, ConsoleRoute), route.path
    declared = {
        (method, r.path): "public" if r.public else "session"
        for r in routes
        if isinstance(r, ConsoleRoute)
        for method in r.methods
    }
    assert declared == CONSOLE_ROUTES
    for method, path in (key for key, access in declared.items() if access == "session"):
        answer = ui.client.request(method, path, follow_redirects=False)
        assert answer.status_code == 303, (method, path)
        assert answer.headers["location"] == "/ui/login"


def sign_in_with(client: TestClient, token: str) -> int:
    form = client.get("/ui/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert found
    answer = client.post(
        "/ui/login", data={"api_key": token, "csrf_token": found.group(1)}, follow_redirects=False
    )
    return answer.status_code


def test_the_api_serves_the_console_with_real_keys(secured: SecuredApi) -> None:
    """In the full app a real key signs in, revoking it through the API ends the session,
    and revoked or expired keys cannot sign in."""
    client = secured.client
    assert sign_in_with(client, secured.tokens["revoked"]) == 401
    assert sign_in_with(client, secured.tokens["expired"]) == 401
    assert sign_in_with(client, secured.tokens["submitter"]) == 303
    page = client.get("/ui")
    assert page.status_code == 200
    assert "submitter" in page.text
    assert "acme" in page.text
    revoke = client.post(
        f"/api/keys/{secured.ids['submitter']}/revoke", headers=secured.auth("admin")
    )
    assert revoke.status_code == 200, revoke.text
    gone = client.get("/ui", follow_redirects=False)
    assert (gone.status_code, gone.headers["location"]) == (303, "/ui/login")


def test_a_cookie_never_opens_the_json_api(secured: SecuredApi) -> None:
    """The console's session authenticates console pages only, not /api routes."""
    assert sign_in_with(secured.client, secured.tokens["admin"]) == 303
    assert secured.client.get("/api/tasks").status_code == 401


def test_every_route_of_the_app_is_guarded_or_a_console_route(secured: SecuredApi) -> None:
    """The app's check sees included routers too: a plain route cannot skip both guards."""
    app = secured.client.app
    kinds = {
        type(context.original_route).__name__
        for context in iter_route_contexts(app.routes)  # type: ignore[attr-defined]
        if isinstance(context.original_route, APIRoute)
    }
    # ScrapeRoute (GET /metrics) is a GuardedRoute that also takes the scrape token.
    assert kinds == {"GuardedRoute", "ConsoleRoute", "ScrapeRoute"}


def test_a_tenants_key_sees_only_its_tenant_in_the_console(secured: SecuredApi) -> None:
    """Signed in with acme's submitter key: the task list and bulk previews hold acme's
    tasks only; globex's task and bulk job answer exactly like missing ones; a task whose
    parent is globex's (a row the API would refuse to make) shows no trace of it; the
    provider-wide pages (audit, live stream) and the controls are refused, changing nothing."""
    repo = secured.repo
    (acme,) = repo.create_many(
        [Submission("sandbox", "campaign", {"name": "acme-x"}, tenant="acme")]
    )
    (globex,) = repo.create_many(
        [Submission("sandbox", "campaign", {"name": "globex-y"}, tenant="globex")]
    )
    (child,) = repo.create_many(
        [Submission("sandbox", "campaign", {"name": "acme-child"}, tenant="acme")]
    )
    with repo.engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == child).values(parent_id=globex))
    (orphan,) = repo.create_many(
        [Submission("sandbox", "campaign", {"name": "globex-kid"}, tenant="globex")]
    )
    with repo.engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == orphan).values(parent_id=acme))
    empty = TaskFilter(kind="nothing")
    jobs = BulkJobs(repo)
    job = jobs.start("retry", empty, "globex", jobs.preview("retry", empty, "globex"), LOCAL_ACTOR)
    client = secured.client
    assert sign_in_with(client, secured.tokens["submitter"]) == 303

    listed = client.get("/ui/tasks").text
    assert set(re.findall(r'data-task="(\d+)"', listed)) == {str(acme), str(child)}
    theirs, missing = client.get(f"/ui/tasks/{globex}"), client.get("/ui/tasks/999999")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.text == missing.text.replace("999999", str(globex))
    their_job, no_job = client.get(f"/ui/jobs/{job.id}"), client.get("/ui/jobs/999999")
    assert their_job.status_code == no_job.status_code == 404
    assert their_job.text == no_job.text.replace("999999", str(job.id))
    for own, other in ((child, globex), (acme, orphan)):  # globex's parent, globex's child
        page = client.get(f"/ui/tasks/{own}")
        assert page.status_code == 200
        assert f'"/ui/tasks/{other}"' not in page.text

    before = secured.written()
    page = client.get("/ui/tasks").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    preview = client.post(
        "/ui/tasks/preview",
        data={"action": "cancel", "csrf_token": csrf.group(1)},
    )
    assert preview.status_code == 200
    assert 'id="preview-count" data-count="2"' in preview.text  # acme's two, not four
    for path in ("/ui/audit", "/ui/events"):
        assert client.get(path).status_code == 403, path
    control = client.post(
        "/ui/controls",
        data={"action": "pause", "target": "sandbox", "reason": "x", "csrf_token": csrf.group(1)},
    )
    assert control.status_code == 403
    assert secured.written() == before
