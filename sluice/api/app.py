"""The FastAPI application: :func:`build_api` from a runtime, or :func:`create_app` from parts."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from sluice import apikeys, errors, masking
from sluice.api import console
from sluice.api.apidocs import add_docs
from sluice.api.auth import Authenticator, check_guarded, forbidden
from sluice.api.console.routes import ConsoleRoute
from sluice.api.deps import STORE_RETRY_AFTER_S, ApiContext, ReadinessCheck
from sluice.api.gcpause import CollectorPausedFor
from sluice.api.limits import BodySizeLimit
from sluice.api.query import UnknownQuery, declared_query_only
from sluice.api.readiness import broker_check, redis_check
from sluice.api.routes import audit, health, keys, metrics, providers, tasks
from sluice.api.routes import bulk as bulk_routes
from sluice.api.routes import controls as control_routes
from sluice.api.routes import overview as overview_routes
from sluice.api.routes import quotas as quota_routes
from sluice.api.routes.quotas import QuotaView
from sluice.catalog import Catalog
from sluice.controls import Controls
from sluice.domain import ApiKey
from sluice.engine.adaptive import Learner
from sluice.engine.bulkjobs import BulkJobRunner
from sluice.engine.gauges import StateReader
from sluice.engine.rates import RatesInForce
from sluice.explain import Explainer
from sluice.overview import OverviewService
from sluice.ratelimit import build_limiter, parse_rate
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.memory import MemoryLimiter
from sluice.ratelimit.rate import Rate
from sluice.runtime import Runtime
from sluice.settings import Settings, setting_name
from sluice.store.audit import AuditLog
from sluice.store.bulkjobs import BulkJobs
from sluice.store.keys import KeyStore
from sluice.store.repository import TaskRepository
from sluice.store.sessions import SessionStore
from sluice.submissions import MAX_BULK, MAX_NESTING, SubmissionInvalid

BULK_MAX_BYTES = 64 * 1024 * 1024
GRACEFUL_SHUTDOWN_S = 5
"""On stop, requests still running (console event streams never end) get this long."""


def build_api(runtime: Runtime) -> FastAPI:
    """The API over ``runtime``'s store and catalog, with readiness checks of its servers."""
    checks: dict[str, ReadinessCheck] = {}
    if runtime.settings.redis_url:
        checks["redis"] = redis_check(runtime.settings.redis_url)
    if runtime.settings.broker_url:
        checks["broker"] = broker_check(runtime.settings.broker_url)
    view = QuotaView(runtime.providers, runtime.quotas) if runtime.quotas is not None else None
    app = create_app(
        runtime.settings,
        runtime.repo,
        runtime.catalog,
        checks,
        controls=runtime.controls,
        quotas=view,
        learner=runtime.learner,
    )
    app.state.metrics_collectors = [state_reader(runtime).collector()]
    return app


def create_app(
    settings: Settings,
    repo: TaskRepository,
    catalog: Catalog,
    checks: dict[str, ReadinessCheck] | None = None,
    api_limiter: Limiter | None = None,
    controls: Controls | None = None,
    quotas: QuotaView | None = None,
    learner: Learner | None = None,
) -> FastAPI:
    """Build the API around an existing repository and provider catalog.

    ``settings.host`` is where the server listens (the open mode needs loopback);
    ``api_limiter`` counts requests per key under ``settings.api_rate_limit`` (default:
    in memory, or in Redis when ``settings.redis_url`` is set); ``controls`` holds the
    providers, limiter and rates the control, explain and overview routes work on (default:
    no providers, so every control answers 404 and the overview shows the queue only);
    ``learner`` the adaptive limiter, whose learned keys ``GET /api/rates`` lists too.
    """
    app = FastAPI(
        title="Sluice",
        summary="Rate-limited submission engine for third-party APIs",
        version="0.1.0",
        lifespan=_background,
        docs_url=None,  # apidocs: the same pages, without a CDN
        redoc_url=None,
    )
    add_docs(app)
    all_checks: dict[str, ReadinessCheck] = {"database": lambda: _ping_database(repo)}
    all_checks.update(checks or {})
    key_store = KeyStore(repo.engine, repo.clock)
    if controls is None:
        controls = Controls(repo.engine, {}, MemoryLimiter(), RatesInForce(), clock=repo.clock)
    bulk = BulkJobs(repo)
    context = ApiContext(
        repo=repo,
        catalog=catalog,
        keys=key_store,
        audit=AuditLog(repo.engine),
        controls=controls,
        explainer=Explainer(repo, controls, fair_share=settings.fair_share),
        checks=all_checks,
        overview=OverviewService(
            repo.engine,
            controls.providers,
            limiter=controls.limiter,
            rates=controls.rates,
            clock=repo.clock,
        ),
        bulk=bulk,
        bulk_runner=BulkJobRunner(bulk),
        learner=learner,
    )
    app.state.context = context
    app.state.auth = _authenticator(settings, key_store, api_limiter)
    app.state.scrape_token = (
        settings.metrics_token.get_secret_value() if settings.metrics_token else None
    )
    app.state.quotas = quotas
    routers = (
        tasks.router,
        bulk_routes.router,
        overview_routes.router,
        keys.router,
        audit.router,
        control_routes.router,
        providers.router,
    )
    for router in (*routers, quota_routes.router):
        app.include_router(router, dependencies=[Depends(declared_query_only)])
    for router in (health.router, metrics.router):  # probes and scrapers may add their own
        app.include_router(router)

    _install_console(app, settings, repo, key_store)
    # Console routes check their own session and CSRF (sluice.api.console.routes).
    check_guarded(app.routes, also=(ConsoleRoute,))
    _install_error_handlers(app)
    # From a bulk call's last body chunk to its response: parsing, validation and insert.
    app.add_middleware(CollectorPausedFor, path="/api/tasks/bulk")
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        bulk_max_bytes=BULK_MAX_BYTES,
        bulk_path="/api/tasks/bulk",
        bulk_max_items=MAX_BULK,
    )
    return app


@asynccontextmanager
async def _background(app: FastAPI) -> AsyncIterator[None]:
    """While the server runs: the bulk job runner, and the console's shared live feeds."""
    context: ApiContext = app.state.context
    if context.bulk_runner is not None:
        context.bulk_runner.start()
    try:
        yield
    finally:
        if context.bulk_runner is not None:
            context.bulk_runner.stop()
        feed = getattr(app.state, "feed", None)
        if feed is not None:
            feed.stop()
        for provider_feed in getattr(app.state, "provider_feeds", {}).values():
            provider_feed.stop()


def _install_console(
    app: FastAPI, settings: Settings, repo: TaskRepository, key_store: KeyStore
) -> None:
    """The console at /ui: sign-in with an API key, sessions in the database."""
    auth: Authenticator = app.state.auth
    sessions = SessionStore(
        repo.engine,
        repo.clock,
        lifetime=timedelta(seconds=settings.console_session_s),
        idle=timedelta(seconds=settings.console_idle_s),
    )

    def sign_in(token: str) -> ApiKey | None:
        key = apikeys.authenticate(key_store, token)
        if key is not None:
            key_store.touch(key, key_store.clock.now())
        return key

    console.install(app, sessions, sign_in, auth.open_to, auth.over_limit if auth.limited else None)


def api_rate(settings: Settings) -> Rate | None:
    """The per-key limit of ``SLUICE_API_RATE_LIMIT``, or ConfigError naming the setting.

    ``sluice api`` and ``sluice up`` call it before they open the database or say anything,
    so a bad value stops them first.
    """
    if settings.api_rate_limit is None:
        return None
    try:
        rate = parse_rate(settings.api_rate_limit)
    except ValueError:
        # Not the value given: it may be a secret pasted into the wrong variable.
        raise errors.ConfigError(
            f"{setting_name('api_rate_limit')}: must be a rate like '20/s', '600/min' or '5/2s'"
        ) from None
    if settings.api_rate_burst >= rate.limit:
        raise errors.ConfigError(
            f"api_rate_burst: must be below api_rate_limit's count ({rate.limit}), "
            f"got {settings.api_rate_burst}"
        )
    return rate


def _authenticator(
    settings: Settings, key_store: KeyStore, api_limiter: Limiter | None
) -> Authenticator:
    rate = api_rate(settings)
    if rate is None:
        return Authenticator(settings, key_store)
    # No cold start: this limit shields the database, not a provider, so a restart of the
    # API (or of Redis) need not hold every key for a while.
    limiter = api_limiter or build_limiter(
        settings.redis_url,
        margin=0.0,
        namespace=f"{settings.limiter_namespace}:api",
        cold_start=False,
    )
    return Authenticator(settings, key_store, limiter, rate, settings.api_rate_burst)


def state_reader(runtime: Runtime) -> StateReader:
    """What ``/metrics`` reads of the cluster's state at each scrape."""
    return StateReader(
        runtime.repo.engine,
        runtime.providers,
        runtime.limiter,
        runtime.pauses,
        runtime.rates,
        fair_share_keys=runtime.settings.metrics_fair_share_keys,
        quotas=runtime.quotas,
    )


def _ping_database(repo: TaskRepository) -> None:
    with repo.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


ERROR_STATUS: dict[type[Exception], int] = {
    errors.TaskNotFound: 404,
    errors.KeyNotFound: 404,
    errors.UnknownLimit: 404,
    errors.InvalidControl: 422,
    errors.BulkJobNotFound: 404,
    errors.TaskConflict: 409,
    errors.IllegalTransition: 409,
    errors.InvalidTask: 422,
    errors.InvalidKeyRequest: 422,
}
"""Sluice's own errors the API answers with a status of their own; the message is the detail
(a 422 in FastAPI's shape, a list naming the body as the place of the problem)."""


def _answer_with(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def answer(_: Request, exc: Exception) -> JSONResponse:
        if status == 422:
            detail: Any = [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]
        else:
            detail = str(exc)
        return JSONResponse({"detail": detail}, status_code=status)

    return answer


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.StoreUnavailable)
    async def store_unavailable(_: Request, exc: errors.StoreUnavailable) -> JSONResponse:
        # The reason only (no URL, no host or port): any caller may read this answer, a
        # made-up key included (a key cannot be checked while the database is down), and the
        # database's address is the operator's business (it is in the API's log).
        return JSONResponse(
            {"detail": masking.without_addresses(str(exc))},
            status_code=503,
            headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
        )

    for error, status in ERROR_STATUS.items():
        app.add_exception_handler(error, _answer_with(status))

    @app.exception_handler(UnknownQuery)
    async def unknown_query(_: Request, exc: UnknownQuery) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, status_code=422)

    @app.exception_handler(errors.RoleRequired)
    async def role_required(_: Request, exc: errors.RoleRequired) -> JSONResponse:
        return forbidden(exc)

    @app.exception_handler(SubmissionInvalid)
    async def submission_invalid(request: Request, exc: SubmissionInvalid) -> JSONResponse:
        bulk = request.url.path.endswith("/bulk")
        detail = [
            {
                "loc": (
                    ["body", "tasks", p.index, p.field]
                    if bulk and p.index is not None
                    else ["body", p.field]
                ),
                "msg": p.message,
                "type": "value_error",
                **({"index": p.index} if p.index is not None else {}),
            }
            for p in exc.problems
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        problem = unparsable_body(exc)
        if problem is None:
            return await http_exception_handler(request, exc)
        detail = [{"loc": ["body"], "msg": problem, "type": "json_invalid"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = []
        for err in exc.errors():
            item = {k: err[k] for k in ("loc", "msg", "type") if k in err}
            loc = list(err.get("loc", ()))
            if len(loc) >= 3 and loc[:2] == ["body", "tasks"] and isinstance(loc[2], int):
                item["index"] = loc[2]
            detail.append(item)
        return JSONResponse({"detail": detail}, status_code=422)


def unparsable_body(exc: StarletteHTTPException) -> str | None:
    """What made FastAPI's bare 400 "There was an error parsing the body" (it keeps the
    parser's error as the cause), in words a client can act on; None for any other error."""
    cause = exc.__cause__
    if exc.status_code != 400:
        return None
    if isinstance(cause, RecursionError):
        return (
            f"request body is nested too deeply to parse (a payload may nest {MAX_NESTING} levels)"
        )
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex()
        return (
            f"request body is not UTF-8: byte 0x{byte} at position {cause.start} cannot be decoded"
        )
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return (
            "request body is not valid JSON here: a number has more than "
            f"{sys.get_int_max_str_digits()} digits"
        )
    return None
