"""ASGI middleware refusing request bodies over a size limit with 413."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice import errors


class BodyTooLarge(errors.SluiceError):
    """A request body went over its limit; the middleware answers 413."""


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` (``bulk_max_bytes`` for paths ending in /bulk)."""

    def __init__(self, app: ASGIApp, max_bytes: int, bulk_max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.bulk_max_bytes = bulk_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.bulk_max_bytes if scope["path"].endswith("/bulk") else self.max_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _refuse(send, limit)
                return
        seen = 0
        started = False
        too_large = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_large = True
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if too_large:
                # FastAPI turns any error while reading the body into its own 400; answer
                # 413 in its place.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _refuse(send, limit)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    body: dict[str, Any] = {"detail": f"request body is larger than the limit of {limit} bytes"}
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
