"""A small third-party DSP, written apart from Sluice's sandbox, over real HTTP on loopback.

It keeps its own arrival log, so a test counts what reached the provider rather than what
Sluice says it sent. Routes, for any kind ``K``:

- ``POST /v1/Ks``: create (the body's ``client_ref`` is kept), answers ``201 {"id": ...}``;
- ``GET /v1/Ks?client_ref=R``: lookup, ``{"data": [objects carrying R]}``;
- ``GET /v1/Ks/ID``: status, ``pending`` for the first ``reads_to_done - 1`` reads, then
  ``active``;
- ``POST /oauth/token``: a bearer token valid ``token_lifetime_s`` (and said so in
  ``expires_in``).

``hook(request)`` may answer instead (return a :class:`Reply`), before anything is done;
``after_create(request, obj)`` may replace the answer to a create that was committed (a
server error after the commit, a dropped connection).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Arrival:
    """One request as the DSP saw it (``at``: its monotonic clock, on arrival)."""

    at: float
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    reset: bool = False
    """Drop the connection (RST) instead of answering."""


class FakeDsp:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.hook: Callable[[Arrival], Reply | None] | None = None
        self.after_create: Callable[[Arrival, dict[str, Any]], Reply | None] | None = None
        self.reads_to_done = 1
        self.token_lifetime_s = 3600
        self.tokens: dict[str, float] = {}
        self.auth_required = False
        self.routed = 0
        """Requests whose answer was decided (their effect, if any, is done)."""
        self._next = 1000
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A client that stopped waiting closed its end: not worth a traceback.
        self._server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- what the DSP saw ------------------------------------------------------------

    def creates(self) -> list[Arrival]:
        return [a for a in self.arrivals if a.method == "POST" and a.path.startswith("/v1/")]

    def settled(self) -> bool:
        """Every request that arrived has had its effect (a slow one included)."""
        with self.lock:
            return self.routed == len(self.arrivals)

    def objects_per_ref(self) -> dict[str, int]:
        with self.lock:
            refs = [o["client_ref"] for o in self.objects.values()]
        return {ref: refs.count(ref) for ref in refs}

    # --- serving ---------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        dsp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _serve(self) -> None:
                at = time.monotonic()
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                arrival = Arrival(
                    at,
                    self.command,
                    split.path,
                    parse_qs(split.query),
                    dict(self.headers.items()),
                    json.loads(raw) if raw else None,
                )
                with dsp.lock:
                    dsp.arrivals.append(arrival)
                reply = dsp._route(arrival)
                with dsp.lock:
                    dsp.routed += 1
                if reply.reset:
                    linger = struct.pack("ii", 1, 0)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.close_connection = True
                    return
                data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

        return Handler

    def _route(self, arrival: Arrival) -> Reply:
        if self.hook is not None:
            reply = self.hook(arrival)
            if reply is not None:
                return reply
        if arrival.path == "/oauth/token":
            return self._token()
        if self.auth_required and not self._authorised(arrival):
            return Reply(401, {"error": {"message": "token expired", "code": "NOAUTH"}})
        parts = [p for p in arrival.path.split("/") if p]
        if arrival.method == "POST" and len(parts) == 2:
            obj = self._create(parts[1], arrival.body or {})
            if self.after_create is not None:
                replaced = self.after_create(arrival, obj)
                if replaced is not None:
                    return replaced
            return Reply(201, {"id": obj["id"]})
        if arrival.method == "GET" and len(parts) == 2:
            ref = arrival.query.get("client_ref", [None])[0]
            with self.lock:
                found = [o for o in self.objects.values() if o["client_ref"] == ref]
            return Reply(200, {"data": found})
        if arrival.method == "GET" and len(parts) == 3:
            with self.lock:
                obj = self.objects.get(parts[2])
                if obj is None:
                    return Reply(404, {"error": {"message": f"no object {parts[2]}"}})
                obj["reads"] += 1
                done = obj["reads"] >= self.reads_to_done
            return Reply(200, {"id": obj["id"], "status": "active" if done else "pending"})
        return Reply(404, {"error": {"message": "no such route"}})

    def _create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._next += 1
            obj = {
                "id": f"{kind[:3]}-{self._next}",
                "client_ref": body.get("client_ref"),
                "body": body,
                "reads": 0,
            }
            self.objects[obj["id"]] = obj
            return obj

    def _token(self) -> Reply:
        with self.lock:
            self._next += 1
            token = f"tok-{self._next}-c0ffee"
            self.tokens[token] = time.monotonic() + self.token_lifetime_s
        return Reply(200, {"access_token": token, "expires_in": self.token_lifetime_s})

    def _authorised(self, arrival: Arrival) -> bool:
        token = arrival.headers.get("Authorization", "").removeprefix("Bearer ")
        with self.lock:
            expires = self.tokens.get(token)
        return expires is not None and time.monotonic() < expires


@contextmanager
def running_dsp() -> Iterator[FakeDsp]:
    dsp = FakeDsp()
    dsp._thread.start()
    try:
        yield dsp
    finally:
        dsp._server.shutdown()
        dsp._server.server_close()
