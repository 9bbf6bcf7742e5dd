"""Connections kept per sending thread (``transport.ThreadConnections``), against a real
HTTP/1.1 server on loopback that records which connection each request came on.

Each thread reuses its own keep-alive connection; a connection the server closed is passed
over and the request goes once, on a new one; a thread that ends closes its connections,
and closing the transport closes every one still open. The gate still sees every request.
"""

from __future__ import annotations

import gc
import queue
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluice import errors
from sluice.providers.transport import GatedBackend, ThreadConnections, gated_transport
from sluice.ratelimit import sendgate

WAIT_S = 10.0
"""Longest wait for the server to see a connection closed (a bound, not a timing)."""


class Recorder:
    """What the server saw: each request's connection (client port), connections closed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[int, str]] = []
        self.opened: list[int] = []
        self.closed: set[int] = set()
        self.changed = threading.Condition(self.lock)

    def wait_closed(self, port: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: port in self.closed, WAIT_S)

    def open_ports(self) -> set[int]:
        with self.lock:
            return set(self.opened) - self.closed


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_GET(self) -> None:
        recorder = self.server.recorder
        with recorder.lock:
            recorder.requests.append((self.client_address[1], self.path))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/close":  # announced: the client knows not to reuse it
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        if self.path in ("/close", "/drop"):  # "/drop": closed after, unannounced
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.recorder = Recorder()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.recorder.lock:
            self.recorder.opened.append(client_address[1])
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        port = request.getpeername()[1]
        super().shutdown_request(request)
        with self.recorder.changed:
            self.recorder.closed.add(port)
            self.recorder.changed.notify_all()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def per_thread_client(srv: Server) -> httpx.Client:
    transport = gated_transport(httpx.Limits(max_connections=2), per_thread=True)
    assert isinstance(transport._pool, ThreadConnections)
    host, port = srv.server_address[:2]
    return httpx.Client(base_url=f"http://{host!s}:{port}", transport=transport)


class Worker:
    """A thread that runs what it is given, one call at a time, and hands back the result."""

    def __init__(self) -> None:
        self._calls: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._results: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                self._results.put((True, call()))
            except BaseException as exc:
                self._results.put((False, exc))

    def run(self, call: Callable[[], Any]) -> Any:
        self._calls.put(call)
        ok, value = self._results.get(timeout=WAIT_S)
        if not ok:
            raise value
        return value

    def end(self) -> None:
        self._calls.put(None)
        self.thread.join(WAIT_S)
        gc.collect()


def get(client: httpx.Client, path: str = "/ok") -> int:
    response = client.get(path)
    response.raise_for_status()
    return response.status_code


def test_each_thread_keeps_one_connection(server: Server) -> None:
    """Four threads, 20 requests each: four connections, each thread's requests on its own."""
    with per_thread_client(server) as client:
        workers = [Worker() for _ in range(4)]
        ports: dict[int, set[int]] = {}
        for _ in range(20):
            for index, worker in enumerate(workers):
                before = len(server.recorder.requests)
                worker.run(lambda: get(client))
                ports.setdefault(index, set()).add(server.recorder.requests[before][0])
        for worker in workers:
            worker.end()
    assert all(len(used) == 1 for used in ports.values())
    assert len(set().union(*ports.values())) == 4
    assert len(server.recorder.requests) == 80
    assert len(server.recorder.opened) == 4


@pytest.mark.parametrize("path", ["/close", "/drop"])
def test_a_connection_the_server_closed_is_replaced_and_nothing_goes_twice(
    server: Server, path: str
) -> None:
    """Announced (``Connection: close``) or not, a closed connection is passed over: the
    next request goes once, on a new connection."""
    with per_thread_client(server) as client:
        worker = Worker()
        worker.run(lambda: get(client, path))
        first = server.recorder.requests[0][0]
        assert server.recorder.wait_closed(first)
        worker.run(lambda: get(client))
        worker.end()
    assert [p for _, p in server.recorder.requests] == [path, "/ok"]
    assert server.recorder.requests[1][0] != first


def test_a_thread_that_ends_closes_its_connection(server: Server) -> None:
    with per_thread_client(server) as client:
        worker = Worker()
        worker.run(lambda: get(client))
        port = server.recorder.requests[0][0]
        worker.end()
        assert server.recorder.wait_closed(port)
        assert get(client) == 200  # the client goes on, on the main thread's connection


def test_closing_the_transport_closes_every_threads_connection(server: Server) -> None:
    client = per_thread_client(server)
    workers = [Worker() for _ in range(3)]
    for worker in workers:
        worker.run(lambda: get(client))
    client.close()
    for port in {p for p, _ in server.recorder.requests}:
        assert server.recorder.wait_closed(port)
    for worker in workers:
        worker.end()


def test_a_late_grant_sends_nothing_on_a_threads_connection(server: Server) -> None:
    """The gate is under every connection: a grant past its send window writes nothing."""
    with per_thread_client(server) as client:
        assert isinstance(client._transport._pool, ThreadConnections)  # type: ignore[attr-defined]
        assert isinstance(client._transport._pool._options["network_backend"], GatedBackend)  # type: ignore[attr-defined]
        get(client)  # the connection is open: only the request itself is refused
        with (
            sendgate.bound(sendgate.SendPermit(0.0, 0.005, lambda: 1.0)),
            pytest.raises(errors.GrantExpired),
        ):
            client.get("/late")
        assert get(client) == 200
    assert [p for _, p in server.recorder.requests] == ["/ok", "/ok"]


def test_a_refused_connect_is_noted_as_nothing_sent() -> None:
    """No server on the port: the connect fails before a byte, and the permit says so."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = gated_transport(httpx.Limits(max_connections=2), per_thread=True)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport) as client:
        permit = sendgate.SendPermit(0.0, 5.0, lambda: 0.001)
        with sendgate.bound(permit), pytest.raises(httpx.ConnectError):
            client.get("/")
        assert permit.nothing_sent
        assert transport._pool._mine() == []  # type: ignore[attr-defined]


class ThreadConnectionsMachine(RuleBasedStateMachine):
    """Threads come and go, send requests, and the server closes connections under them.

    Invariants: every request arrives once; a connection is opened only when the thread
    sending has none it can use (its first request, or after the server closed its
    last); the server holds no connection of a thread that ended; closing the transport
    closes them all.
    """

    def __init__(self) -> None:
        super().__init__()
        self.server = Server()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = per_thread_client(self.server)
        self.workers: list[Worker] = []
        self.connected: list[bool] = []
        """Whether each worker has a connection the server has not closed (the model)."""
        self.sent = 0
        self.expected_opened = 0
        self.ended_ports: set[int] = set()
        self.ports: list[int | None] = []

    @rule()
    def start_thread(self) -> None:
        if len(self.workers) < 4:
            self.workers.append(Worker())
            self.connected.append(False)
            self.ports.append(None)

    @precondition(lambda self: bool(self.workers))
    @rule(data=st.data(), path=st.sampled_from(["/ok", "/ok", "/close", "/drop"]))
    def request(self, data: st.DataObject, path: str) -> None:
        index = data.draw(st.integers(0, len(self.workers) - 1))
        before = len(self.server.recorder.requests)
        assert self.workers[index].run(lambda: get(self.client, path)) == 200
        self.sent += 1
        if not self.connected[index]:
            self.expected_opened += 1
        port = self.server.recorder.requests[before][0]
        self.ports[index] = port
        self.connected[index] = path == "/ok"
        if path != "/ok":
            assert self.server.recorder.wait_closed(port)

    @precondition(lambda self: bool(self.workers))
    @rule(data=st.data())
    def end_thread(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.workers) - 1))
        worker = self.workers.pop(index)
        self.connected.pop(index)
        port = self.ports.pop(index)
        worker.end()
        if port is not None:
            assert self.server.recorder.wait_closed(port)
            self.ended_ports.add(port)

    @invariant()
    def each_request_arrived_once(self) -> None:
        assert len(self.server.recorder.requests) == self.sent

    @invariant()
    def connections_open_only_when_needed(self) -> None:
        assert len(self.server.recorder.opened) == self.expected_opened

    @invariant()
    def no_connection_outlives_its_thread(self) -> None:
        assert not (self.server.recorder.open_ports() & self.ended_ports)

    def teardown(self) -> None:
        self.client.close()
        for port in self.server.recorder.open_ports():
            assert self.server.recorder.wait_closed(port)
        for worker in self.workers:
            worker.end()
        self.server.shutdown()
        self.server.server_close()


ThreadConnectionsMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=15, deadline=None
)
test_thread_connections_machine = ThreadConnectionsMachine.TestCase
