"""Idle connections on a stack (``transport.ConnectionStack``), against a real HTTP/1.1
server on loopback that records which connection each request came on.

The connection given back last is taken first, so requests handed round many threads
one at a time keep one connection warm; a connection the server closed is passed over and
the request goes once, on another; one closed under its answer is not kept; closing the
transport closes every one still open. The gate still sees every request.
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

import httpcore
import httpx
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluice import errors
from sluice.providers import transport as transport_module
from sluice.providers.transport import ConnectionStack, GatedBackend, gated_transport
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
            recorder.requests.append((self.client_address[1], self.path.split("?")[0]))
        body = self.path.encode()  # each answer names its request: no answer goes astray
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
        self.ports: dict[Any, int] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.recorder.lock:
            self.recorder.opened.append(client_address[1])
            self.ports[request] = client_address[1]
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.recorder.lock:  # not getpeername(): a socket the client reset has none
            port = self.ports.pop(request)
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


def stacked_client(srv: Server, keepalive_s: float = 5.0) -> httpx.Client:
    limits = httpx.Limits(max_connections=2, keepalive_expiry=keepalive_s)
    transport = gated_transport(limits, stacked=True)
    assert isinstance(transport._pool, ConnectionStack)
    host, port = srv.server_address[:2]
    return httpx.Client(base_url=f"http://{host!s}:{port}", transport=transport)


def stack_of(client: httpx.Client) -> ConnectionStack:
    stack = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(stack, ConnectionStack)
    return stack


def idle(client: httpx.Client) -> list[Any]:
    return [c for stacked in stack_of(client)._idle.values() for _, c in stacked]


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
    assert response.content == path.encode()
    return response.status_code


class _Clock:
    """httpcore's keep-alive clock, moved by hand (``httpcore._sync.http11.time``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("stacked", [True, False], ids=["stack", "httpcore-pool"])
def test_a_low_rate_handed_round_the_threads_keeps_one_connection_warm(
    server: Server, monkeypatch: pytest.MonkeyPatch, stacked: bool
) -> None:
    """One request every 2 s (keep-alive 5 s) handed to four threads in turn, as the
    executor's pool hands them out: every request goes on the one connection. A request
    that must connect first spends its grant's send window on the handshake (1.5 ms for a
    per-second limit at the default margin). httpcore's pool does the same (the reference)."""
    clock = _Clock()
    monkeypatch.setattr(httpcore._sync.http11, "time", clock)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32, keepalive_expiry=5.0)
    host, port = server.server_address[:2]
    transport = gated_transport(limits, stacked=stacked)
    with httpx.Client(base_url=f"http://{host!s}:{port}", transport=transport) as client:
        workers = [Worker() for _ in range(4)]
        for _ in range(4):
            for worker in workers:
                clock.now += 2.0
                worker.run(lambda: get(client))
        for worker in workers:
            worker.end()
    assert len(server.recorder.requests) == 16
    assert len(server.recorder.opened) == 1


@pytest.mark.parametrize("stacked", [True, False], ids=["stack", "httpcore-pool"])
def test_an_idle_connection_to_an_origin_no_longer_used_is_closed_after_its_keep_alive(
    monkeypatch: pytest.MonkeyPatch, stacked: bool
) -> None:
    """Requests to a few origins one after the other (targets may be absolute URLs, with
    a placeholder in the host): a connection idle past its keep-alive is closed as other
    requests come, whatever their origin, as httpcore's pool does (the reference). Kept
    until a request to its own origin met it, each origin ever used would hold a socket
    open for the life of the worker."""
    clock = _Clock()
    monkeypatch.setattr(httpcore._sync.http11, "time", clock)
    monkeypatch.setattr(transport_module, "time", clock, raising=False)
    servers = [Server() for _ in range(3)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32, keepalive_expiry=5.0)
    try:
        with httpx.Client(transport=gated_transport(limits, stacked=stacked)) as client:
            for srv in servers:
                host, port = srv.server_address[:2]
                assert client.get(f"http://{host!s}:{port}/ok").content == b"/ok"
                clock.now += 6.0  # past the keep-alive of the connection just used
            for srv in servers[:-1]:
                assert srv.recorder.wait_closed(srv.recorder.opened[0])
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def test_requests_at_once_each_have_a_connection_and_give_it_back(server: Server) -> None:
    """Four answers open at once hold four connections; closed, all four wait on the stack,
    and the one given back last is taken first."""
    with stacked_client(server) as client:
        held = [
            client.send(client.build_request("GET", f"/held{i}"), stream=True) for i in range(4)
        ]
        assert len(server.recorder.opened) == 4
        assert idle(client) == []
        for response in held:
            response.read()
            response.close()
        assert len(idle(client)) == 4
        last = server.recorder.requests[3][0]
        get(client)
        assert server.recorder.requests[-1][0] == last
    assert len(server.recorder.opened) == 4


def test_many_threads_at_once_each_answer_goes_to_its_request(server: Server) -> None:
    """Eight threads, 40 requests each, all at once: every request arrives once, every
    answer is its own request's, and no more connections open than requests in flight."""
    with stacked_client(server) as client:

        def send(thread: int) -> None:
            for i in range(40):
                get(client, f"/t{thread}-{i}")

        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S * 6)
        assert not any(thread.is_alive() for thread in threads)
        paths = sorted(p for _, p in server.recorder.requests)
        assert paths == sorted(f"/t{n}-{i}" for n in range(8) for i in range(40))
        assert len(server.recorder.opened) <= 8
        assert len(idle(client)) == len(server.recorder.opened)


@pytest.mark.parametrize("path", ["/close", "/drop"])
def test_a_connection_the_server_closed_is_replaced_and_nothing_goes_twice(
    server: Server, path: str
) -> None:
    """Announced (``Connection: close``) or not, a closed connection is passed over: the
    next request goes once, on a new connection."""
    with stacked_client(server) as client:
        get(client, path)
        first = server.recorder.requests[0][0]
        assert server.recorder.wait_closed(first)
        get(client)
    assert [p for _, p in server.recorder.requests] == [path, "/ok"]
    assert server.recorder.requests[1][0] != first


@pytest.mark.parametrize("how", ["announced", "unread"])
def test_a_connection_closed_under_its_answer_is_not_kept(server: Server, how: str) -> None:
    """A connection closed as its answer ends (``Connection: close``, or an answer closed
    before it was read to the end) is closed, not put back: it would never count as
    expired, and the stack would grow by one each time."""
    with stacked_client(server) as client:
        for _ in range(5):
            if how == "announced":
                get(client, "/close")
            else:
                with client.stream("GET", "/ok"):
                    pass  # closed unread: httpcore closes the connection under it
        assert idle(client) == []
        get(client)
        assert len(idle(client)) == 1
        assert not idle(client)[0].is_closed()


def test_closing_the_transport_closes_every_connection(server: Server) -> None:
    client = stacked_client(server)
    held = [client.send(client.build_request("GET", "/ok"), stream=True) for _ in range(3)]
    held[0].read()
    held[0].close()  # one idle, two still answering
    client.close()
    for port in {p for p, _ in server.recorder.requests}:
        assert server.recorder.wait_closed(port)


def test_a_late_grant_sends_nothing(server: Server) -> None:
    """The gate is under every connection: a grant past its send window writes nothing."""
    with stacked_client(server) as client:
        assert isinstance(stack_of(client)._options["network_backend"], GatedBackend)
        get(client)  # the connection is open: only the request itself is refused
        with (
            sendgate.bound(sendgate.SendPermit(0.0, 0.005, lambda: 1.0)),
            pytest.raises(errors.GrantExpired),
        ):
            client.get("/late")
        get(client)
    assert [p for _, p in server.recorder.requests] == ["/ok", "/ok"]


def test_a_refused_connect_is_noted_as_nothing_sent() -> None:
    """No server on the port: the connect fails before a byte, and the permit says so."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = gated_transport(httpx.Limits(max_connections=2), stacked=True)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport) as client:
        permit = sendgate.SendPermit(0.0, 5.0, lambda: 0.001)
        with sendgate.bound(permit), pytest.raises(httpx.ConnectError):
            client.get("/")
        assert permit.nothing_sent
        assert idle(client) == []


class ConnectionStackMachine(RuleBasedStateMachine):
    """Requests come one at a time or stay open, and the server closes connections under
    them; the model is the stack: each idle connection, good or closed by the server
    unannounced (``/drop``: the client learns it only when it takes it).

    Invariants: every request arrives once; a connection opens only when no good one is
    idle; the idle connections are the model's, in its order; the connections the server
    holds open are the good idle ones and those answering. Closing the transport closes
    them all.
    """

    def __init__(self) -> None:
        super().__init__()
        self.server = Server()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = stacked_client(self.server)
        self.sent = 0
        self.opened = 0
        self.stack: list[bool] = []
        """Idle connections, the top last: True good, False closed by the server."""
        self.held: list[httpx.Response] = []

    def _take(self) -> None:
        while self.stack:
            if self.stack.pop():
                return
        self.opened += 1

    @rule(path=st.sampled_from(["/ok", "/ok", "/close", "/drop"]))
    def request(self, path: str) -> None:
        before = len(self.server.recorder.requests)
        self._take()
        assert get(self.client, path) == 200
        self.sent += 1
        if path != "/close":
            self.stack.append(path == "/ok")
        if path != "/ok":
            assert self.server.recorder.wait_closed(self.server.recorder.requests[before][0])

    @precondition(lambda self: len(self.held) < 3)
    @rule()
    def hold_an_answer(self) -> None:
        self._take()
        self.held.append(self.client.send(self.client.build_request("GET", "/held"), stream=True))
        self.sent += 1

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def close_an_answer(self, data: st.DataObject) -> None:
        response = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        assert response.read() == b"/held"
        response.close()
        self.stack.append(True)

    @invariant()
    def each_request_arrived_once(self) -> None:
        assert len(self.server.recorder.requests) == self.sent

    @invariant()
    def connections_open_only_when_none_is_idle(self) -> None:
        assert len(self.server.recorder.opened) == self.opened

    @invariant()
    def the_idle_connections_are_the_models(self) -> None:
        assert [not c.has_expired() for c in idle(self.client)] == self.stack

    @invariant()
    def the_server_holds_the_good_idle_and_the_answering(self) -> None:
        assert len(self.server.recorder.open_ports()) == self.stack.count(True) + len(self.held)

    def teardown(self) -> None:
        self.client.close()
        for port in self.server.recorder.open_ports():
            assert self.server.recorder.wait_closed(port)
        self.server.shutdown()
        self.server.server_close()


ConnectionStackMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=15, deadline=None
)
test_connection_stack_machine = ConnectionStackMachine.TestCase
