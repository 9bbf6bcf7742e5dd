"""When an answer came: the kernel's receive stamp, not the moment a thread read it.

Window holds keep a place until a window after the answer reached this host
(sluice/ratelimit/holds.py); on a loaded host a thread reads it milliseconds later. These
tests use real loopback connections (httpcore's own stream under the gated one), so the
stamps are the kernel's."""

from __future__ import annotations

import platform
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import httpcore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.providers import transport
from sluice.providers.transport import GatedStream, arrival_age_s, stamped_socket
from sluice.ratelimit import sendgate

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"),
    reason="the kernel's receive stamps are read on Linux, x86-64 and arm64",
)

HEAD = b"GET /v1/status HTTP/1.1\r\nHost: dsp\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@contextmanager
def provider(*, answer_first: bool = False) -> Iterator[tuple[str, int]]:
    """A loopback server that answers one request (or sends its answer at once, before any
    request: bytes that cannot be the answer to what comes next)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            if answer_first:
                conn.sendall(ANSWER)
                conn.recv(65536)
            else:
                conn.recv(65536)
                conn.sendall(ANSWER)
            # Nothing more until the client closes: a later segment (this side's close)
            # merged into the one waiting in the client's buffer would carry its own stamp.
            conn.recv(65536)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        listener.close()
        server.join(timeout=10)


def connect(address: tuple[str, int]) -> tuple[GatedStream, socket.socket]:
    inner = httpcore.SyncBackend().connect_tcp(*address, timeout=10)
    sock = inner.get_extra_info("socket")
    return GatedStream(inner), sock


def wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 30)[0], "no answer came"


def test_an_answer_read_late_is_noted_when_it_reached_this_host() -> None:
    """The answer was in the socket before the thread slept; it reads it afterwards, and
    the answer is noted no later than when it was seen to be there."""
    with provider() as address:
        gated, sock = connect(address)
        permit = sendgate.SendPermit(time.monotonic(), 60.0)
        with sendgate.bound(permit):
            gated.write(HEAD)
            wait_readable(sock)
            seen_there = time.monotonic()
            time.sleep(0.05)  # a thread descheduled before it reads
            read_from = time.monotonic()
            assert gated.read(65536) == ANSWER
        gated.close()
    assert permit.answered_at is not None
    admitted = permit.asked_at + (permit.delay_s or 0.0)
    assert admitted <= permit.answered_at <= seen_there < read_from
    assert permit.since_answer_s() >= read_from - seen_there


def test_bytes_that_came_before_the_request_are_noted_when_read() -> None:
    """Bytes already waiting when the request was admitted cannot be its answer: their
    stamp is older than the admission, so the read's instant is noted instead."""
    with provider(answer_first=True) as address:
        gated, sock = connect(address)
        wait_readable(sock)
        permit = sendgate.SendPermit(time.monotonic(), 60.0)
        with sendgate.bound(permit):
            gated.write(HEAD)
            read_from = time.monotonic()
            gated.read(65536)
        gated.close()
    assert permit.answered_at is not None
    assert permit.answered_at >= read_from


def test_a_read_with_no_request_under_way_is_a_plain_read() -> None:
    """Outside a permit (or before its request was admitted) nothing is noted."""
    with provider(answer_first=True) as address:
        gated, sock = connect(address)
        wait_readable(sock)
        permit = sendgate.SendPermit(time.monotonic(), 60.0)
        with sendgate.bound(permit):
            assert gated.read(65536) == ANSWER
        gated.close()
    assert permit.answered_at is None


def test_only_plain_tcp_sockets_are_stamped() -> None:
    """A stream without a socket (a test's, a mock's) or over a Unix socket is read as
    before; so is TLS (an ``ssl.SSLSocket`` is not a plain socket)."""
    assert stamped_socket(SimpleNamespace()) is None
    assert stamped_socket(SimpleNamespace(get_extra_info=lambda _: None)) is None
    left, right = socket.socketpair()
    with left, right:
        assert stamped_socket(SimpleNamespace(get_extra_info=lambda _: left)) is None
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()[:2]) as client,
    ):
        assert stamped_socket(SimpleNamespace(get_extra_info=lambda _: client)) is client


def test_a_read_that_times_out_raises_as_httpcore_does() -> None:
    """The stamped read maps errors as httpcore's stream does (the pool relies on them)."""
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()[:2]) as client,
        pytest.raises(httpcore.ReadTimeout),
    ):
        transport.read_stamped(client, 1024, 0.01)


class SteppingClocks:
    """A monotonic clock and a wall clock that may be set by ``step`` at one instant."""

    def __init__(self, gap: float, step: float, step_at: float) -> None:
        self.now = 0.0
        self.gap, self.step, self.step_at = gap, step, step_at

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.gap + (self.step if self.now >= self.step_at else 0.0)


@settings(max_examples=300, deadline=None)
@given(
    gap=st.floats(1e9, 2e9),  # the wall clock: seconds since 1970
    step=st.floats(-3600, 3600),
    write_at=st.floats(0, 100),
    to_arrival=st.floats(0, 30),
    to_read=st.floats(0, 30),
    step_after=st.floats(-5, 70),
)
def test_an_arrival_is_never_aged_more_than_it_is_whatever_the_wall_clock_does(
    gap: float, step: float, write_at: float, to_arrival: float, to_read: float, step_after: float
) -> None:
    """The stamp is on the wall clock, which may be set while a request is out (before or
    after its answer came); the age it gives never exceeds the true one, so a hold kept
    from it is never shorter than a window after the answer. With no step it is exact."""
    clocks = SteppingClocks(gap, step, write_at + step_after)
    clocks.now = write_at
    gap_at_write = clocks.time() - clocks.monotonic()
    clocks.now = write_at + to_arrival
    stamp = clocks.time()
    clocks.now = write_at + to_arrival + to_read
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transport, "time", clocks)
        age = arrival_age_s(stamp, gap_at_write)
    true_age = clocks.now - (write_at + to_arrival)
    assert 0.0 <= age <= true_age + 1e-6  # float rounding at 2e9 s
    if not write_at < clocks.step_at <= clocks.now:
        assert age == pytest.approx(true_age, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(
    asked_at=st.floats(0, 1000),
    delay=st.floats(0, 1),
    to_read=st.floats(0, 60),
    age=st.floats(0, 120),
)
def test_an_answer_is_noted_between_its_admission_and_its_read(
    asked_at: float, delay: float, to_read: float, age: float
) -> None:
    """Whatever age the transport reports, the answer is noted no earlier than the request
    was admitted and no later than the read; at its arrival when that is in between."""
    now = [asked_at + delay]
    permit = sendgate.SendPermit(asked_at, 60.0, lambda: now[0])
    permit.admit()
    admitted = now[0]
    now[0] += to_read
    permit.answered(age)
    assert permit.answered_at is not None
    assert admitted - 1e-9 <= permit.answered_at <= now[0]
    if age > 0 and now[0] - age >= admitted:
        assert permit.answered_at == now[0] - age
