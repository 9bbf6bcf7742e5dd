"""A request that could not connect sent nothing: its rate-limit slot and window hold go back.

Over real loopback sockets, through the real executor and the gated transport: a port that
refuses connections (a socket bound there but not listening, so no other process can take
the port meanwhile), and a keep-alive connection the provider drops after reading the
second request on it (that request reached the provider: its hold stays counted).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sluice import submissions
from sluice.domain import Submission, WorkUnit
from sluice.drivers.executor import ThreadExecutor
from sluice.engine.dispatcher import acquire
from sluice.engine.usage import UsageRecorder
from sluice.overview import OverviewService
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.ratelimit.rate import Grant
from sluice.runtime import build_catalog
from sluice.settings import load_settings
from sluice.status import render
from sluice.store import db
from sluice.store.pauses import PauseStore
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository
from sluice.store.usage import UsageStore

WINDOW_KEY = "acme#window"


class RecordingLimiter(MemoryLimiter):
    """Records what becomes of each window hold and grant after the request."""

    def __init__(self) -> None:
        super().__init__(cold_start=False)
        self.kept: list[tuple[str, float]] = []
        self.released: list[str] = []
        self.given_back: list[Sequence[tuple[str, int, int]]] = []

    def hold(self, lease_id: str, key: str, seconds: float) -> None:
        self.kept.append((key, seconds))
        super().hold(lease_id, key, seconds)

    def release(self, lease_id: str, key: str) -> None:
        self.released.append(key)
        super().release(lease_id, key)

    def give_back(self, undo: Sequence[tuple[str, int, int]]) -> None:
        self.given_back.append(undo)
        super().give_back(undo)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses every connection (bound, never listening)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port where a connection is never made: it listens with a backlog of 0,
    already filled by one connection nobody accepts, so the kernel drops every further
    SYN and a connect times out before its handshake completes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    filler = socket.create_connection(sock.getsockname(), timeout=5)
    try:
        yield sock.getsockname()[1]
    finally:
        filler.close()
        sock.close()


TOKEN_AUTH = {
    "request": "POST /oauth/token",
    "body": {"client_id": "sluice", "client_secret": "not-a-secret"},
    "token_field": "access_token",
    "lifetime": "1h",
}


def world(
    tmp_path: Path,
    base_url: str,
    rate: str,
    tasks: int = 1,
    timeout: str = "1s",
    auth: dict[str, Any] | None = None,
) -> dict[str, Any]:
    table: dict[str, Any] = {
        "base_url": base_url,
        "rate_limit": rate,
        "timeout": timeout,
        "kinds": {"campaign": {"submit": "POST /campaigns", "external_id_field": "id"}},
    }
    if auth is not None:
        table["auth"] = auth
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'd.db'}",
        default_provider="acme",
        providers={"acme": table},
    )
    providers = load_providers(settings)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    submissions.create_tasks(
        TaskRepository(engine),
        build_catalog(providers, "acme"),
        [Submission(kind="campaign", payload={"name": f"c{i}"}) for i in range(tasks)],
    )
    return {"providers": providers, "engine": engine, "queue": WorkQueue(engine)}


def send(executor: ThreadExecutor, w: dict[str, Any], limiter: MemoryLimiter, task: Any) -> Grant:
    """Send ``task``'s unit once (asked again while the grant waits or expires unsent, as
    the dispatcher would on a loaded host); the grant it went under."""
    provider = w["providers"]["acme"]
    unit = WorkUnit("acme", task.operation, (task,))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        grant = executor.submit(unit, lambda: acquire(limiter, provider, unit, task.payload))
        while not executor.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        if grant.granted and not executor.take_unsent():
            return grant
        time.sleep(min(grant.retry_after_s or 0.05, 0.2))
    pytest.fail("no grant was sent within 30 s")


@pytest.mark.parametrize("port", ["refusing_port", "silent_port"])
def test_a_connection_never_made_gives_its_hold_and_slot_back(
    tmp_path: Path, port: str, request: pytest.FixtureRequest
) -> None:
    """Refused, or not made within the timeout: nothing reached the provider, so the
    window hold is released (not kept a window) and the grant's GCRA slot is given back
    (``holds.finish(..., sent=False)``)."""
    w = world(tmp_path, f"http://127.0.0.1:{request.getfixturevalue(port)}", "1/10s")
    limiter = RecordingLimiter()
    client = build_http_client(w["providers"]["acme"])
    executor = ThreadExecutor(w["queue"], w["providers"], {"acme": client}, limiter, threads=2)
    try:
        (task,) = w["queue"].claim_due(datetime.now(UTC), 10, "w", 120.0)
        grant = send(executor, w, limiter, task)
    finally:
        executor.close()
        client.close()
    assert executor.stats.outcomes == 1
    assert limiter.kept == []  # was [("acme#window", 10.0)]: kept as if sent
    assert WINDOW_KEY in limiter.released
    assert limiter.in_flight_count(WINDOW_KEY) == 0
    assert grant.undo
    assert list(grant.undo) in [list(u) for u in limiter.given_back]


@pytest.mark.parametrize("auth", [None, TOKEN_AUTH], ids=["create", "token request"])
def test_an_outage_counts_no_creates(
    tmp_path: Path, refusing_port: int, auth: dict[str, Any] | None
) -> None:
    """``sluice status`` (the overview) shows creates/s and creates in the last hour from
    the usage counters: a create that could not connect is an error and the provider shows
    paused (unreachable), but it is no create sent (it showed as one: 0.1 creates/s). The
    same when the create was never tried because its token request could not connect."""
    w = world(tmp_path, f"http://127.0.0.1:{refusing_port}", "1/10s", auth=auth)
    limiter = RecordingLimiter()
    usage = UsageRecorder(UsageStore(w["engine"]))
    client = build_http_client(w["providers"]["acme"])
    executor = ThreadExecutor(
        w["queue"],
        w["providers"],
        {"acme": client},
        limiter,
        threads=2,
        usage=usage,
        pauses=PauseStore(w["engine"]),
    )
    try:
        (task,) = w["queue"].claim_due(datetime.now(UTC), 10, "w", 120.0)
        send(executor, w, limiter, task)
    finally:
        executor.close()
        client.close()
        usage.close()
    totals = UsageStore(w["engine"]).totals(datetime(2000, 1, 1, tzinfo=UTC))
    assert totals.get(("acme", "error")) == 1
    assert totals.get(("acme", "sent"), 0) == 0
    assert totals.get(("acme", "create"), 0) == 0  # was 1
    (entry,) = OverviewService(w["engine"], w["providers"]).overview()["providers"]
    assert entry["creates_per_s"] == 0
    assert entry["creates_hour"] == 0
    assert entry["errors_hour"] == 1
    console = Console(width=200, record=True)
    console.print(render({"providers": [entry]}))
    shown = console.export_text()
    assert "0.0 creates/s" in shown, shown  # was 0.1 creates/s: one create every 10 s
    assert "(unreachable)" in shown, shown  # paused: the provider cannot be reached


class DropsSecondRequest:
    """An HTTP/1.1 server on loopback: the first request on a connection is answered
    (keep-alive), the second is read in full and the connection closed unanswered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.requests_read = 0
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                for answered in (True, False):
                    if not self._read_request(conn):
                        break
                    self.requests_read += 1
                    if answered:
                        body = b'{"id": "x-1"}'
                        conn.sendall(
                            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                        )

    @staticmethod
    def _read_request(conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            body += chunk
        return True

    def close(self) -> None:
        self.sock.close()


def test_a_failure_on_a_reused_connection_keeps_its_hold(tmp_path: Path) -> None:
    """The second create goes out on the pooled keep-alive connection and the provider
    drops it unanswered: it reached the provider, so its hold is kept a window and its
    slot stays spent, like the first one's."""
    server = DropsSecondRequest()
    w = world(tmp_path, f"http://127.0.0.1:{server.port}", "100/10s", tasks=2)
    limiter = RecordingLimiter()
    client = build_http_client(w["providers"]["acme"])
    executor = ThreadExecutor(w["queue"], w["providers"], {"acme": client}, limiter, threads=2)
    try:
        first, second = w["queue"].claim_due(datetime.now(UTC), 10, "w", 120.0)
        send(executor, w, limiter, first)
        send(executor, w, limiter, second)
    finally:
        executor.close()
        client.close()
        server.close()
    assert server.connections == 1  # the second request reused the first's connection
    assert server.requests_read == 2
    assert [key for key, _ in limiter.kept] == [WINDOW_KEY, WINDOW_KEY]
    assert limiter.given_back == []
