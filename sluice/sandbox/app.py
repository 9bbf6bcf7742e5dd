"""The HTTP edge: a plain Starlette app whose handlers are a few lines over :mod:`core`.

Plain Starlette (no FastAPI, no middleware) keeps each request cheap, so the sandbox is
never the bottleneck of Sluice's benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.core import Call, Reply, Sandbox
from sluice.sandbox.entities import COLLECTIONS
from sluice.sandbox.errors import InvalidRequest, NotFound

Sleep = Callable[[float], Awaitable[None]]

MAX_BATCH_IDS = 100
"""Most ids one batch status call may ask about."""

_NOT_JSON = object()
"""Stands for a body that is not valid JSON."""


class _DroppedResponse(Response):
    """Starts an answer and stops halfway: the server then closes the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": True})


def create_sandbox_app(
    config: SandboxConfig,
    clock: Callable[[], float] | None = None,
    *,
    sleep: Sleep | None = None,
) -> Starlette:
    """The sandbox DSP as an ASGI app.

    Args:
        config: what to imitate and how.
        clock: POSIX seconds; defaults to ``time.time``. Tests pass a fake and advance it;
            ``POST /_sandbox/clock`` adds an offset to it.
        sleep: how to wait for slow and hanging answers; defaults to ``asyncio.sleep``.
    """
    sandbox = Sandbox(config, clock or time.time)
    wait = sleep or asyncio.sleep

    async def respond(reply: Reply) -> Response:
        if reply.delay_s > 0:
            await wait(reply.delay_s)
        headers = {**reply.headers, "X-Request-Id": sandbox.next_request_id()}
        if reply.drop:
            return _DroppedResponse(headers=headers)
        if reply.body is None:
            return Response(status_code=reply.status_code, headers=headers)
        return Response(_dumps(reply.body), reply.status_code, headers, "application/json")

    def call(request: Request, route: str, **fields: Any) -> Call:
        return Call(request.method, route, request.headers.get("authorization"), **fields)

    async def healthz(request: Request) -> Response:
        return await respond(sandbox.plain("GET /healthz", 200, {"status": "ok"}))

    async def token(request: Request) -> Response:
        return await respond(sandbox.issue_token(await _json_body(request)))

    async def create(request: Request) -> Response:
        collection = request.path_params["collection"]
        body = await _json_body(request)
        fields = {
            "collection": collection,
            "body": body,
            "idempotency_key": request.headers.get("idempotency-key"),
        }
        return await respond(
            sandbox.create(call(request, f"POST /v1/{_label(collection)}", **fields))
        )

    async def find(request: Request) -> Response:
        collection = request.path_params["collection"]
        client_ref = request.query_params.get("client_ref")

        def action(now: float, app_key: str) -> tuple[int, Any]:
            store = sandbox.store
            found = (
                store.all_of(collection)
                if client_ref is None
                else store.find_by_client_ref(collection, client_ref)
            )
            return 200, {"data": [o.full_json(now, store.words) for o in found]}

        route = f"GET /v1/{_label(collection)}"
        return await respond(sandbox.call(call(request, route), action))

    async def read(request: Request) -> Response:
        collection = request.path_params["collection"]
        object_id = request.path_params["object_id"]

        def action(now: float, app_key: str) -> tuple[int, Any]:
            store = sandbox.store
            return 200, store.get(collection, object_id).full_json(now, store.words)

        route = f"GET /v1/{_label(collection)}/{{id}}"
        fields = {"collection": collection, "object_id": object_id}
        return await respond(sandbox.call(call(request, route, **fields), action))

    async def status(request: Request) -> Response:
        collection = request.path_params["collection"]
        object_id = request.path_params["object_id"]

        def action(now: float, app_key: str) -> tuple[int, Any]:
            store = sandbox.store
            return 200, store.get(collection, object_id).status_json(now, store.words)

        route = f"GET /v1/{_label(collection)}/{{id}}/status"
        fields = {"collection": collection, "object_id": object_id}
        return await respond(sandbox.call(call(request, route, **fields), action))

    async def batch_status(request: Request) -> Response:
        raw = request.query_params.get("ids", "")
        ids = [i for i in (part.strip() for part in raw.split(",")) if i]

        def action(now: float, app_key: str) -> tuple[int, Any]:
            if len(ids) > MAX_BATCH_IDS:
                raise InvalidRequest(
                    f"at most {MAX_BATCH_IDS} ids per call, got {len(ids)}", field="ids"
                )
            return 200, sandbox.store.statuses(ids, now)

        return await respond(sandbox.call(call(request, "GET /v1/status"), action))

    async def stats(request: Request) -> Response:
        return await respond(Reply(200, sandbox.stats_snapshot()))

    async def reset(request: Request) -> Response:
        sandbox.reset()
        return await respond(Reply(200, {"status": "reset"}))

    async def get_config(request: Request) -> Response:
        return await respond(Reply(200, _shown(sandbox.config)))

    async def put_config(request: Request) -> Response:
        patch = await _json_body(request)
        if not isinstance(patch, dict):
            return await respond(Reply(400, InvalidRequest("body must be a JSON object").body()))
        try:
            updated = sandbox.reconfigure(patch)
        except ValueError as exc:
            return await respond(Reply(400, InvalidRequest(str(exc)).body()))
        return await respond(Reply(200, _shown(updated)))

    async def get_clock(request: Request) -> Response:
        return await respond(Reply(200, sandbox.clock.describe()))

    async def move_clock(request: Request) -> Response:
        try:
            sandbox.clock.apply(await _json_body(request))
        except InvalidRequest as exc:
            return await respond(Reply(exc.status_code, exc.body()))
        return await respond(Reply(200, sandbox.clock.describe()))

    async def arrivals(request: Request) -> Response:
        raw = request.query_params.get("after", "0")
        if not (raw.isascii() and raw.isdigit()):
            error = InvalidRequest(f"after must be a whole number >= 0, got {raw!r}", field="after")
            return await respond(Reply(error.status_code, error.body()))
        return await respond(Reply(200, sandbox.arrivals.answer(int(raw))))

    async def clear_arrivals(request: Request) -> Response:
        sandbox.arrivals.clear()
        return await respond(Reply(200, {"cleared": True}))

    async def timeline(request: Request) -> Response:
        return await respond(Reply(200, sandbox.timeline_answer()))

    async def no_route(request: Request, exc: Exception) -> Response:
        error = NotFound(f"no route {request.method} {request.url.path}")
        return await respond(Reply(getattr(exc, "status_code", 404), error.body()))

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/oauth/token", token, methods=["POST"]),
        Route("/_sandbox/stats", stats, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/config", get_config, methods=["GET"]),
        Route("/_sandbox/config", put_config, methods=["PUT"]),
        Route("/_sandbox/clock", get_clock, methods=["GET"]),
        Route("/_sandbox/clock", move_clock, methods=["POST"]),
        Route("/_sandbox/arrivals", arrivals, methods=["GET"]),
        Route("/_sandbox/arrivals", clear_arrivals, methods=["DELETE"]),
        Route("/_sandbox/timeline", timeline, methods=["GET"]),
        Route("/v1/status", batch_status, methods=["GET"]),
        Route("/v1/{collection}", create, methods=["POST"]),
        Route("/v1/{collection}", find, methods=["GET"]),
        Route("/v1/{collection}/{object_id}", read, methods=["GET"]),
        Route("/v1/{collection}/{object_id}/status", status, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: no_route, 405: no_route})
    app.state.sandbox = sandbox
    return app


MASK = "********"


def _shown(config: SandboxConfig) -> dict[str, Any]:
    """The configuration as the admin routes show it: client secrets and static tokens
    masked (a token is the secret itself, so each becomes ``token-N``)."""
    shown = config.model_dump(mode="json")
    shown["credentials"] = dict.fromkeys(config.credentials, MASK)
    shown["tokens"] = {f"token-{n}": account for n, account in enumerate(config.tokens.values(), 1)}
    return shown


def _label(collection: str) -> str:
    """The collection as it appears in stats routes (unknown ones are not echoed back)."""
    return collection if collection in COLLECTIONS else "{collection}"


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


async def _json_body(request: Request) -> Any:
    """The parsed body, or a marker the validators reject as "not JSON"."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON
