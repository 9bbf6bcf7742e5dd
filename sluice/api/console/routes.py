"""The console's sign-in, sign-out and the page that shows who is signed in.

Every console route is a :class:`ConsoleRoute`, which checks before the handler runs:

1. **Who.** The session the cookie names (usable: not expired, not idle too long, its key
   neither revoked nor expired), else the open loopback mode when the API is open to this
   request (see ``sluice.api.auth``), else nobody: a route not marked :func:`public`
   answers 303 to the sign-in page.
2. **How often,** with ``SLUICE_API_RATE_LIMIT``: a page of a signed-in session counts
   against its key's rate like an API request (a session did not: the console was a way
   around the limit); over it, 429 with ``Retry-After``. A sign-in with a good key
   counts too (it writes a session and an audit record). The console's files, the live
   streams (:func:`unmetered`) and the open loopback mode are not metered.
3. **CSRF,** on every POST: the form's ``csrf_token`` must match the session's token, or,
   with no session (sign-in, the open mode), the double-submit cookie; an ``Origin`` of
   another site is refused. A refused form answers 403 and changes nothing.
4. Every answer gets the console's security headers (CSP and friends).

So a console route added later can neither skip the session check nor forget CSRF.
Browser security details are in :mod:`sluice.api.console.session`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from sluice import errors, masking
from sluice.api.auth import foreign_origin
from sluice.api.console import session as web
from sluice.api.deps import STORE_RETRY_AFTER_S
from sluice.domain import ApiKey
from sluice.store.sessions import ConsoleSession, SessionStore

Authenticate = Callable[[str], ApiKey | None]
OpenTo = Callable[[Request], bool]
Meter = Callable[[ApiKey], float | None]
"""Seconds until a key may make another request, or None when it may now (and is counted)."""
Handler = Callable[[Request], Coroutine[Any, Any, Response]]
F = TypeVar("F", bound=Callable[..., Any])

_TEMPLATES = Environment(
    loader=PackageLoader("sluice.api.console", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "htmx.min.js": "text/javascript; charset=utf-8",
}
NOT_ACCEPTED = "That key was not accepted."
FORM_EXPIRED = "The form expired or came from another site; nothing was changed."


def _never_open(_: Request) -> bool:
    return False


@dataclass
class Console:
    """What the console's routes need: sessions, key checks, whether the API is open."""

    sessions: SessionStore
    authenticate: Authenticate
    open_to: OpenTo = field(default=_never_open)
    over_limit: Meter | None = None


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a session (with its cookie token), the open mode, or nobody."""

    session: ConsoleSession | None = None
    token: str | None = None
    open_mode: bool = False

    @property
    def key(self) -> ApiKey | None:
        return self.session.key if self.session is not None else None

    @property
    def known(self) -> bool:
        return self.session is not None or self.open_mode


def public(endpoint: F) -> F:
    """Mark a console route anyone may open (sign-in, the style sheet)."""
    endpoint.console_public = True  # type: ignore[attr-defined]
    return endpoint


def unmetered(endpoint: F) -> F:
    """Mark a console route that does not count against its key's rate: a live stream,
    opened once per page and cheap (one shared poller feeds them all). A browser's
    EventSource given a 429 would not reconnect, leaving the page without its live part."""
    endpoint.console_unmetered = True  # type: ignore[attr-defined]
    return endpoint


class ConsoleRoute(APIRoute):
    """A console route: who is looking, CSRF on every POST, security headers."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # Set first: the base class builds the handler (get_route_handler) while it starts.
        self.public = bool(getattr(endpoint, "console_public", False))
        self.metered = not self.public and not getattr(endpoint, "console_unmetered", False)
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        needs_viewer = not self.public
        metered = self.metered

        async def checked(request: Request) -> Response:
            try:
                return await answer(request)
            except errors.StoreUnavailable as exc:
                # A page, not the API's JSON: it says why (and a page read reloads itself).
                return web.secured(_unavailable(exc, reload=request.method == "GET"))

        async def answer(request: Request) -> Response:
            viewer = await current_viewer(request)
            request.state.viewer = viewer
            if needs_viewer and not viewer.known:
                response: Response = _redirect(request, "console_login_form")
                web.clear_cookie(response, request, web.SESSION_COOKIE)
                return web.secured(response)
            meter = _console(request).over_limit
            if metered and viewer.key is not None and meter is not None:
                wait_s = await run_in_threadpool(meter, viewer.key)
                if wait_s is not None:
                    return _too_many(wait_s)
            if request.method == "POST" and not await _form_is_ours(request, viewer):
                return _refused(request)
            try:
                answer = await handler(request)
            except RequestValidationError as exc:
                # A malformed path or query (/ui/tasks/abc): a console page with the
                # console's headers, not FastAPI's bare JSON without them.
                answer = _page("refused.html", 422, message=_invalid(exc))
            return web.secured(answer)

        return checked


router = APIRouter(prefix="/ui", include_in_schema=False, route_class=ConsoleRoute)


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _viewer(request: Request) -> Viewer:
    """Who is asking, read afresh: the session (its key not revoked or expired), or the
    open loopback mode, or nobody known (blocking: a database read)."""
    token = web.read_cookie(request, web.SESSION_COOKIE)
    if token is not None:
        session = _console(request).sessions.find(token)
        if session is not None:
            return Viewer(session, token)
    return Viewer(open_mode=_console(request).open_to(request))


async def current_viewer(request: Request) -> Viewer:
    """:func:`_viewer` on the thread pool, for async routes and long-lived streams."""
    return await run_in_threadpool(_viewer, request)


def _expected_csrf(request: Request, viewer: Viewer) -> str | None:
    if viewer.token is not None:
        return web.session_csrf(viewer.token)
    return web.read_cookie(request, web.LOGIN_CSRF_COOKIE)


async def _form_is_ours(request: Request, viewer: Viewer) -> bool:
    if foreign_origin(request):
        return False
    form = await request.form()
    given = form.get(web.CSRF_FIELD)
    return isinstance(given, str) and web.same_token(given, _expected_csrf(request, viewer))


def _too_many(wait_s: float) -> Response:
    """429 for a key over its rate, with ``Retry-After`` in whole seconds (at least 1)."""
    retry_after = max(1, math.ceil(wait_s))
    page = _page(
        "refused.html",
        429,
        message=f"Too many requests for this API key; retry in {retry_after} s.",
    )
    page.headers["Retry-After"] = str(retry_after)
    return web.secured(page)


def _unavailable(exc: errors.StoreUnavailable, *, reload: bool) -> Response:
    """503 while the database cannot be reached: the reason (no address), ``Retry-After``,
    and, for a page read (not a form sent), a page that reloads itself after as long."""
    page = _page(
        "unavailable.html",
        503,
        message=masking.without_addresses(str(exc)),
        retry_s=STORE_RETRY_AFTER_S,
        reload=reload,
    )
    page.headers["Retry-After"] = str(STORE_RETRY_AFTER_S)
    return page


def _refused(request: Request) -> Response:
    if request.url.path.endswith("/login"):
        return _login_form(request, 403, FORM_EXPIRED)
    return web.secured(_page("refused.html", 403, message=FORM_EXPIRED))


def render_html(template: str, **values: Any) -> str:
    """A template rendered to text (page fragments, the live feed)."""
    return _TEMPLATES.get_template(template).render(**values)


def _invalid(exc: RequestValidationError) -> str:
    """The first problem of a malformed request, as 'where: why' (never the value given)."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where or 'request'}: {first.get('msg', 'not understood')}"


def _page(template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    return HTMLResponse(render_html(template, **values), status_code=status_code)


def _redirect(request: Request, to: str) -> RedirectResponse:
    return RedirectResponse(request.url_for(to).path, status_code=303)


def _form_token(request: Request, viewer: Viewer) -> tuple[str, bool]:
    """The CSRF token a page's forms carry, and whether it must be set as a cookie.

    With a session it is the session's token; without one, the double-submit cookie's
    value (a new one when the browser has none yet).
    """
    if viewer.token is not None:
        return web.session_csrf(viewer.token), False
    existing = web.read_cookie(request, web.LOGIN_CSRF_COOKIE)
    return (existing, False) if existing else (web.new_login_csrf(), True)


def _form_page(
    request: Request, viewer: Viewer, template: str, status_code: int = 200, **values: Any
) -> Response:
    """A page with forms: rendered with the CSRF token, the cookie set when new."""
    token, fresh = _form_token(request, viewer)
    page = _page(template, status_code, csrf_field=web.CSRF_FIELD, csrf_token=token, **values)
    if fresh:
        web.set_cookie(page, request, web.LOGIN_CSRF_COOKIE, token)
    return web.secured(page)


def _login_form(request: Request, status_code: int = 200, problem: str | None = None) -> Response:
    return _form_page(
        request,
        Viewer(),
        "login.html",
        status_code,
        problem=problem,
        action=request.url_for("console_login").path,
    )


@router.get("/login", name="console_login_form")
@public
def login_form(request: Request) -> Response:
    """The sign-in form (or the console, when already signed in)."""
    viewer: Viewer = request.state.viewer
    if viewer.session is not None:
        return _redirect(request, "console_home")
    return _login_form(request)


@router.post("/login", name="console_login")
@public
def login(request: Request, api_key: Annotated[str, Form(max_length=512)] = "") -> Response:
    """Sign in with an API key: a session on the server, its token in a cookie."""
    console = _console(request)
    key = console.authenticate(api_key.strip())
    if key is None:
        return _login_form(request, 401, NOT_ACCEPTED)
    # A sign-in writes a session and its audit record: it spends the key's rate too.
    wait_s = console.over_limit(key) if console.over_limit is not None else None
    if wait_s is not None:
        return _too_many(wait_s)
    token = console.sessions.open(key)
    response = _redirect(request, "console_home")
    web.set_cookie(response, request, web.SESSION_COOKIE, token)
    web.clear_cookie(response, request, web.LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout", name="console_logout")
def logout(request: Request) -> Response:
    """End the session (the route class has checked the form's CSRF token)."""
    viewer: Viewer = request.state.viewer
    if viewer.token is not None:
        _console(request).sessions.close(viewer.token, signed_out=viewer.key)
    response = _redirect(request, "console_login_form")
    web.clear_cookie(response, request, web.SESSION_COOKIE)
    return response


@router.get("/static/{name}", name="console_static")
@public
def static(name: str) -> Response:
    """The console's own files: style sheet, script, vendored htmx (no CDN, nothing inline)."""
    media_type = _STATIC.get(name)
    if media_type is None:
        return Response("not found", status_code=404, media_type="text/plain")
    body = resources.files("sluice.api.console").joinpath("static", name).read_bytes()
    return Response(body, media_type=media_type)


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")
