"""Who may call each route: API keys, roles, tenants, the open loopback mode, the per-key limit.

Every route of the API is a :class:`GuardedRoute` and declares who may call it, with a
``Principal`` parameter taken from ``Depends(VIEWER)`` (or ``SUBMITTER``, ``OPERATOR``,
``ADMIN``), or ``dependencies=[Depends(PUBLIC)]``. A route that declares neither cannot be
built, and ``create_app`` refuses a route of any other class, so no route skips the check.

The guard runs before FastAPI reads the body or the parameters, in this order, and writes
nothing until the request is let in:

1. **Who.** ``Authorization: Bearer <key>`` names a usable key, or the open mode lets the
   request in without one (``SLUICE_AUTH=off``, or ``auto`` while the server listens on
   loopback and the request carries no proxy header, a loopback ``Host`` and no ``Origin``
   of another site). Otherwise 401 with ``WWW-Authenticate: Bearer`` and one message,
   whatever was wrong.
2. **May it.** The key's role must allow the route's: else 403 naming the role needed.
3. **How often.** With ``SLUICE_API_RATE_LIMIT``, a key over its rate gets 429 with
   ``Retry-After``. The open loopback mode is not limited: it serves one local user.
4. The route runs; if it succeeded, the key's ``last_used_at`` moves (at most once a
   minute), so a refusal by the route (403, 404, 409, 422) writes nothing either.

Tenants: a viewer's or submitter's key acts within its own tenant only; operators and
admins act on every tenant and may name one with ``?tenant=``. See docs/security.md.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute

from sluice import apikeys, errors
from sluice.domain import DEFAULT_TENANT, Actor, ApiKey, Role
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import LimitSpec, Rate
from sluice.settings import Settings
from sluice.store.keys import KeyStore, needs_touch

log = logging.getLogger("sluice.api.auth")

LIMITER_RETRY_S = 5.0
"""Once the per-key limit's store (Redis) failed, how long requests go through unmetered
before one of them asks it again. Each ask of a Redis behind a partition waits out its 2 s
socket timeout: when every request asked, every request took 2.1 s longer and an API's 40
threads served at most ~19 a second, the probes queued behind them."""

UNAUTHORIZED_DETAIL = "a valid API key is required: Authorization: Bearer <key>"
# Headers a reverse proxy adds: a request carrying one came from elsewhere.
PROXY_HEADERS = (b"forwarded", b"x-real-ip", b"via")
PROXY_HEADER_PREFIX = b"x-forwarded-"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, the tenant it acts within (None: every tenant), and the
    actor its audited actions are recorded under."""

    role: Role
    tenant: str | None
    actor: Actor
    key: ApiKey | None = None

    @classmethod
    def of_key(cls, key: ApiKey) -> Principal:
        return cls(key.role, key.tenant, Actor.of_key(key), key)

    def read_scope(self, requested: str | None) -> str | None:
        """The tenant filter of a read: the key's own tenant, or for operators and admins
        the one they ask for (None: every tenant)."""
        if self.tenant is None:
            return requested
        if requested is not None and requested != self.tenant:
            raise errors.RoleRequired(Role.OPERATOR.value, "choosing a tenant", self.role.value)
        return self.tenant

    def write_tenant(self, requested: str | None) -> str:
        """The tenant new tasks go to: the key's own, else the one asked for, else default."""
        return self.read_scope(requested) or DEFAULT_TENANT


OPEN = Principal(Role.ADMIN, None, Actor("loopback"))
"""The caller the open mode lets in: the local user, who may do anything."""


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="api_key",
    description="An API key: `sluice keys create` (shown once). Not needed on loopback.",
)


class Allow:
    """A route's access, as a dependency giving the route its :class:`Principal`."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(
        self,
        request: Request,
        # Only for the OpenAPI schema (Swagger's "Authorize"): the guard read the key.
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
    ) -> Principal:
        principal: Principal = request.state.principal
        return principal

    def __repr__(self) -> str:
        return f"Allow({self.role.value})"


class Public:
    """A route anyone may call (health checks); it is given no principal."""

    async def __call__(self) -> None:
        return None

    def __repr__(self) -> str:
        return "PUBLIC"


VIEWER = Allow(Role.VIEWER)
SUBMITTER = Allow(Role.SUBMITTER)
OPERATOR = Allow(Role.OPERATOR)
ADMIN = Allow(Role.ADMIN)
PUBLIC = Public()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 maybe in brackets) is loopback-only."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def foreign_origin(request: Request) -> bool:
    """Whether the request names an ``Origin`` other than this server's own (a browser
    adds it to every cross-origin request and every POST; curl and the CLI send none)."""
    origin = request.headers.get("origin")
    if origin is None:
        return False
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin.lower() != own.lower()


def host_name(host_header: str) -> str:
    """The name or address of a ``Host`` header, without its port."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Authenticator:
    """Decides who a request is and whether it may go on (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyStore,
        limiter: Limiter | None = None,
        rate: Rate | None = None,
        burst: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode = settings.auth
        self.burst = burst
        self.listens_on_loopback = is_loopback(settings.host)
        self.keys = keys
        self.limiter = limiter
        self.rate = rate
        self._monotonic = monotonic
        # While the limiter's store is down: when a request may ask it again.
        self._limiter_lock = threading.Lock()
        self._limiter_down = False
        self._limiter_retry_at = 0.0

    def open_to(self, request: Request) -> bool:
        """Whether the open mode lets ``request`` in without a key."""
        if self.mode == "off":
            return True
        if self.mode == "required" or not self.listens_on_loopback:
            return False
        for name, _ in request.scope.get("headers", ()):
            if name in PROXY_HEADERS or name.startswith(PROXY_HEADER_PREFIX):
                return False
        if foreign_origin(request):
            # Another site's page in a local browser (a form, a no-cors fetch: no preflight)
            # reaches 127.0.0.1 with a loopback Host; only its Origin tells it apart.
            return False
        host = request.headers.get("host")
        # A loopback Host only: a DNS-rebinding page reaches us under its own name.
        return host is not None and is_loopback(host_name(host))

    def identify(self, request: Request) -> Principal | None:
        """The caller, or None when a key is needed and none usable was given."""
        header = request.headers.get("authorization")
        if header is None:
            return OPEN if self.open_to(request) else None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        key = apikeys.authenticate(self.keys, token.strip())
        return None if key is None else Principal.of_key(key)

    def admit(self, request: Request, needed: Role, action: str) -> Principal | Response:
        """The principal to run the route as, or the refusal to answer with."""
        principal = self.identify(request)
        if principal is None:
            return unauthorized()
        if not principal.role.allows(needed):
            refusal = errors.RoleRequired(needed.value, action, principal.role.value)
            return forbidden(refusal)
        if principal.key is not None:
            wait_s = self.over_limit(principal.key)
            if wait_s is not None:
                return too_many(wait_s)
        return principal

    def now(self) -> datetime:
        return self.keys.clock.now()

    def record_use(self, key: ApiKey) -> None:
        """Move the key's ``last_used_at`` (at most once a minute)."""
        self.keys.touch(key, self.now())

    @property
    def limited(self) -> bool:
        """Whether ``SLUICE_API_RATE_LIMIT`` meters keys here."""
        return self.limiter is not None and self.rate is not None

    def over_limit(self, key: ApiKey) -> float | None:
        """Seconds until ``key`` may call again, or None when it may call now (a call that
        may go is counted). The console meters its signed-in pages with it too."""
        if self.limiter is None or self.rate is None:
            return None
        with self._limiter_lock:
            if self._limiter_down:
                if self._monotonic() < self._limiter_retry_at:
                    return None  # the store failed a moment ago: let the request through
                # This request asks again; the others go through meanwhile.
                self._limiter_retry_at = self._monotonic() + LIMITER_RETRY_S
        try:
            spec = LimitSpec(f"key:{key.id}", self.rate, burst=self.burst)
            grant = self.limiter.acquire([spec])
        except errors.LimiterError as exc:
            # The limit shields the database from one noisy client; without its store
            # the API stays available rather than refusing everyone.
            with self._limiter_lock:
                self._limiter_down = True
                self._limiter_retry_at = self._monotonic() + LIMITER_RETRY_S
            log.warning(
                "api.rate_limit_unavailable",
                extra={"key_id": key.id, "error": str(exc), "unmetered_s": LIMITER_RETRY_S},
            )
            return None
        if self._limiter_down:
            with self._limiter_lock:
                recovered, self._limiter_down = self._limiter_down, False
            if recovered:
                log.info("api.rate_limit_recovered")
        return None if grant.granted else grant.retry_after_s


def refuse_auth_off(settings: Settings, *, insecure: bool) -> None:
    """ConfigError for ``SLUICE_AUTH=off`` without ``insecure``; ``sluice api`` and ``sluice
    up`` ask before they open the database (it was created and migrated first)."""
    if settings.auth == "off" and not insecure:
        raise errors.ConfigError(
            "SLUICE_AUTH=off lets anyone who can reach the API do anything; "
            "add --insecure to start anyway"
        )


def startup_notice(settings: Settings, keys: KeyStore, *, insecure: bool) -> str:
    """What to say about auth as ``sluice api`` / ``sluice up`` start on ``settings.host``.

    Raises:
        ConfigError: ``SLUICE_AUTH=off`` without ``insecure``, or a non-loopback address
            with no usable key and without ``insecure``: the API would be open, or
            unusable, to the network.
    """
    host = settings.host
    refuse_auth_off(settings, insecure=insecure)
    if settings.auth == "off":
        return f"auth is OFF (SLUICE_AUTH=off, --insecure): anyone reaching {host} may do anything"
    loopback = is_loopback(host)
    usable = keys.count_usable()
    if not loopback and usable == 0 and not insecure:
        raise errors.ConfigError(
            f"the API would listen on {host}, which is not loopback, and no API key exists: "
            "create one (sluice keys create --name admin --role admin), listen on 127.0.0.1, "
            "or add --insecure to start anyway"
        )
    if settings.auth == "auto" and loopback:
        return (
            f"auth is off because the API listens on loopback ({host}) only; requests "
            "through a proxy (X-Forwarded-*) or for another Host still need an API key"
        )
    if usable == 0:
        return "auth is on, and no API key exists yet: sluice keys create --name N --role R"
    return f"auth is on: every request needs an API key ({usable} usable)"


def unauthorized() -> JSONResponse:
    """401 with the same body and challenge for every reason a key was not accepted."""
    return JSONResponse(
        {"detail": UNAUTHORIZED_DETAIL},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(refusal: errors.RoleRequired) -> JSONResponse:
    """403 naming the role needed."""
    return JSONResponse({"detail": str(refusal), "required_role": refusal.needed}, status_code=403)


def too_many(wait_s: float) -> JSONResponse:
    """429 with ``Retry-After`` in whole seconds (at least 1)."""
    retry_after = max(1, math.ceil(wait_s))
    return JSONResponse(
        {"detail": f"too many requests for this API key; retry in {retry_after} s"},
        status_code=429,
        headers={"Retry-After": str(retry_after)},
    )


def iter_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route of an app, inside included routers too (FastAPI 0.165 keeps an included
    router as one entry of ``app.routes``; older versions copy its routes in)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from iter_routes(included.routes)
        else:
            yield route


def check_guarded(routes: Iterable[BaseRoute], also: tuple[type[APIRoute], ...] = ()) -> None:
    """Refuse an app with an API route that is not a :class:`GuardedRoute` (or one of
    ``also``: route classes that do their own checks, like the console's)."""
    for route in iter_routes(routes):
        if isinstance(route, APIRoute) and not isinstance(route, (GuardedRoute, *also)):
            raise errors.UnguardedRoute(
                f"route {route.path} is not a GuardedRoute: it would skip auth"
            )


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def access_of(route: APIRoute) -> Allow | Public | None:
    """The access a route declares: the strictest :class:`Allow`, else PUBLIC, else None."""
    declared = [call for call in _calls(route.dependant) if isinstance(call, Allow | Public)]
    allows = [call for call in declared if isinstance(call, Allow)]
    if allows:
        return max(allows, key=lambda allow: allow.role.rank)
    return declared[0] if declared else None


Handler = Callable[[Request], Coroutine[Any, Any, Response]]

REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no usable API key (missing, malformed, unknown, revoked, expired)"},
    403: {"description": "the key's role does not allow this; the role needed is named"},
    429: {"description": "this key is over SLUICE_API_RATE_LIMIT; see Retry-After"},
}


class GuardedRoute(APIRoute):
    """An API route that admits a request (see the module docstring) before anything else."""

    access: Allow | Public

    def get_route_handler(self) -> Handler:
        # APIRoute.__init__ calls this once its dependencies are known.
        access = access_of(self)
        if access is None:
            raise errors.UnguardedRoute(
                f"route {sorted(self.methods or ())} {self.path} declares no access: give it a "
                "Principal from Depends(VIEWER/SUBMITTER/OPERATOR/ADMIN) or "
                "dependencies=[Depends(PUBLIC)]"
            )
        self.access = access
        handler = super().get_route_handler()
        if isinstance(access, Public):
            return handler
        self.responses.update(REFUSALS)
        needed = access.role
        action = f"{'/'.join(sorted(self.methods or ()))} {self.path}"

        async def guarded(request: Request) -> Response:
            auth: Authenticator = request.app.state.auth
            if "authorization" in request.headers:
                # A key is looked up (the database) and metered (the limiter's Redis).
                admitted = await run_in_threadpool(auth.admit, request, needed, action)
            else:
                # Without one the answer reads only the request: no hop to a thread.
                admitted = auth.admit(request, needed, action)
            if isinstance(admitted, Response):
                return admitted
            request.state.principal = admitted
            response = await handler(request)
            # Only a request that succeeded counts as a use: a refusal writes nothing.
            key = admitted.key
            if key is not None and response.status_code < 400 and needs_touch(key, auth.now()):
                await run_in_threadpool(auth.record_use, key)
            return response

        return guarded
