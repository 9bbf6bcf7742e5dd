"""ASGI middleware refusing request bodies over a size limit, and bulk batches over their
item limit, with 413 while the body is still arriving; and JSON bodies that are not UTF-8
with 415, at their first bytes."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice import errors


class BodyTooLarge(errors.SluiceError):
    """A request body went over its limit; the middleware answers 413."""


class TooManyItems(errors.SluiceError):
    """A bulk body named more items than its limit; the middleware answers 413."""


class BodyNotUtf8(errors.SluiceError):
    """A JSON body in UTF-16 or UTF-32; the middleware answers 415."""


# RFC 8259 requires UTF-8; RFC 4627 section 3 tells the other encodings apart by their
# first four bytes (JSON text starts with ASCII, so UTF-16 and UTF-32 put NULs there).
_BYTE_ORDER_MARKS = (
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\xfe\xff", "UTF-16BE"),
    (b"\xff\xfe", "UTF-16LE"),
)


def other_encoding(head: bytes) -> str | None:
    """The encoding of a JSON text starting with ``head`` (its first 4 bytes, or all of a
    shorter body) when it is not UTF-8, else None; a UTF-8 byte order mark is UTF-8."""
    for mark, name in _BYTE_ORDER_MARKS:
        if head.startswith(mark):
            return f"{name} (byte order mark)"
    if b"\x00" not in head[:4]:
        return None
    if head[:3] == b"\x00\x00\x00":
        return "UTF-32BE"
    if head[1:4] == b"\x00\x00\x00":
        return "UTF-32LE"
    return "UTF-16BE" if head[:1] == b"\x00" else "UTF-16LE"


def _json_body(scope: Scope) -> bool:
    """Whether the request's body is read as JSON: a JSON media type, or none given."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            media: bytes = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


_KEEP_ONLY_STRUCTURE = bytes(b for b in range(256) if b not in b'{}[]"')


class ItemCounter:
    """Counts the objects directly inside an array member of a JSON body's top-level
    object (the ``tasks`` of a bulk batch) as the body arrives, chunk by chunk.

    Escaped backslashes and quotes are dropped first, so every quote left opens or closes
    a string; everything but brackets and quotes goes next, and splitting at the quotes
    leaves the brackets outside strings (a brace inside a name does not count). Only those
    are looked at one by one, so a 10,000-item batch costs a few ms, all in C but the last
    step. It does not validate: a malformed body is the JSON parser's to refuse afterwards
    (for valid JSON the count is exact, however the body is cut).
    """

    def __init__(self) -> None:
        self.count = 0
        self._open: list[int] = []  # the open brackets, as bytes
        self._in_string = False
        self._backslash = b""  # a chunk's last, unpaired backslash, for the next chunk

    def feed(self, chunk: bytes) -> int:
        """Take the next chunk; returns the count so far."""
        data = (self._backslash + chunk).replace(b"\\\\", b"")
        self._backslash = b""
        if data.endswith(b"\\"):
            self._backslash, data = b"\\", data[:-1]
        parts = data.replace(b'\\"', b"").translate(None, _KEEP_ONLY_STRUCTURE).split(b'"')
        outside = b"".join(parts[1::2] if self._in_string else parts[::2])
        if len(parts) % 2 == 0:
            self._in_string = not self._in_string
        opened = self._open
        for byte in outside:
            if byte == 0x7B or byte == 0x5B:  # { [
                if byte == 0x7B and len(opened) == 2 and opened[1] == 0x5B and opened[0] == 0x7B:
                    self.count += 1
                opened.append(byte)
            elif opened:
                opened.pop()
        return self.count


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` (``bulk_max_bytes`` for paths ending in /bulk), and
    bodies of ``bulk_path`` with more than ``bulk_max_items`` items, as soon as the count
    goes over: the rest of the body is never read."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        bulk_max_bytes: int,
        *,
        bulk_path: str = "/api/tasks/bulk",
        bulk_max_items: int | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.bulk_max_bytes = bulk_max_bytes
        self.bulk_path = bulk_path
        self.bulk_max_items = bulk_max_items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.bulk_max_bytes if scope["path"].endswith("/bulk") else self.max_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _refuse(send, 413, _too_many_bytes(limit))
                return
        seen = 0
        started = False
        refusal: tuple[int, str] | None = None
        # The body's first bytes, until there are 4 to tell its encoding by (None: told).
        head: bytes | None = b"" if _json_body(scope) else None
        counter = (
            ItemCounter()
            if self.bulk_max_items is not None and scope["path"] == self.bulk_path
            else None
        )

        async def limited_receive() -> Message:
            nonlocal seen, refusal, head
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                seen += len(body)
                if seen > limit:
                    refusal = (413, _too_many_bytes(limit))
                    raise BodyTooLarge
                if head is not None:
                    head += body[: 4 - len(head)]
                    if len(head) >= 4 or not message.get("more_body", False):
                        encoding = other_encoding(head)
                        head = None
                        if encoding is not None:
                            refusal = (
                                415,
                                f"request body must be UTF-8 JSON; this one is {encoding}",
                            )
                            raise BodyNotUtf8
                if counter is not None and counter.feed(body) > (self.bulk_max_items or 0):
                    refusal = (
                        413,
                        f"a bulk batch holds at most {self.bulk_max_items} tasks; "
                        "this one has more",
                    )
                    raise TooManyItems
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refusal:
                # FastAPI turns any error while reading the body into its own 400; answer
                # the refusal in its place.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _refuse(send, *refusal)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, TooManyItems, BodyNotUtf8):
            if not started:
                await _refuse(send, *(refusal or (413, _too_many_bytes(limit))))


def _too_many_bytes(limit: int) -> str:
    return f"request body is larger than the limit of {limit} bytes"


async def _refuse(send: Send, status: int, detail: str) -> None:
    body: dict[str, Any] = {"detail": detail}
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
