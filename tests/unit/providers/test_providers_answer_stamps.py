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
from sluice.providers.transport import GatedStream, arrival_age_s, read_stamped, stamped_socket
from sluice.ratelimit import sendgate

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"),
    reason="the kernel's receive stamps are read on Linux, x86-64 and arm64",
)

HEAD = b"GET /v1/status HTTP/1.1\r\nHost: dsp\r\n\r\n"
BODY = b'{"name": "Spring sale"}'
SIZED_HEAD = b"POST /v1/campaigns HTTP/1.1\r\nHost: dsp\r\nContent-Length: %d\r\n\r\n" % len(BODY)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture(scope="module", autouse=True)
def stamping_on() -> Iterator[None]:
    """Keep the host's receive stamping on for these tests. Linux turns it on for the whole
    host a moment after the first socket asks (a deferred job): a packet arriving before
    that has no stamp. A stamped socket held open, and one probe seen stamped, rule that out."""
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()[:2]) as probe,
    ):
        sender, _ = listener.accept()
        with sender:
            probe.setsockopt(socket.SOL_SOCKET, transport.SO_TIMESTAMPNS, 1)
            for _ in range(500):
                sender.sendall(b"x")
                if transport.read_stamped(probe, 16, 10)[1] > 0:
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the kernel stamped no packet in 5 s")
            yield


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


@pytest.mark.parametrize("request_parts", [[HEAD], [SIZED_HEAD, BODY]], ids=["head", "joined"])
def test_an_answer_read_late_is_noted_when_it_reached_this_host(request_parts: list[bytes]) -> None:
    """The answer was in the socket before the thread slept; it reads it afterwards, and
    the answer is noted before the read (when it came), not at it. Both ways a request is
    written: its head alone, or head and body held and written together."""
    with provider() as address, pytest.MonkeyPatch.context() as patch:
        # A late read is what is tested, not the 100 ms past which a stamp is not used.
        patch.setattr(transport, "MAX_STAMP_AGE_NS", 60 * 10**9)
        gated, sock = connect(address)
        permit = sendgate.SendPermit(time.monotonic(), 60.0)
        with sendgate.bound(permit):
            for part in request_parts:
                gated.write(part)
            wait_readable(sock)
            time.sleep(0.2)  # a thread descheduled before it reads
            read_from = time.monotonic()
            assert gated.read(65536) == ANSWER
        gated.close()
    assert permit.answered_at is not None
    admitted = permit.asked_at + (permit.delay_s or 0.0)
    assert admitted <= permit.answered_at < read_from


def test_bytes_that_came_before_the_request_are_noted_when_read() -> None:
    """Bytes already waiting when the request was admitted cannot be its answer: their
    stamp is older than the admission, so the read's instant is noted instead."""
    stamps: list[int] = []

    def spied(sock: socket.socket, max_bytes: int, timeout: float | None) -> tuple[bytes, int]:
        data, stamp = read_stamped(sock, max_bytes, timeout)
        stamps.append(stamp)
        return data, stamp

    with provider(answer_first=True) as address, pytest.MonkeyPatch.context() as patch:
        patch.setattr(transport, "read_stamped", spied)
        patch.setattr(transport, "MAX_STAMP_AGE_NS", 60 * 10**9)  # not the age: the admission
        gated, sock = connect(address)
        wait_readable(sock)
        permit = sendgate.SendPermit(time.monotonic(), 60.0)
        with sendgate.bound(permit):
            gated.write(HEAD)
            read_from = time.monotonic()
            gated.read(65536)
        gated.close()
    assert stamps
    assert stamps[0] > 0  # the bytes came stamped: the admission check refused the stamp
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


def test_only_httpcore_streams_over_plain_tcp_are_stamped() -> None:
    """httpcore's own stream over TCP is; a stream of another kind (a mock's, another
    backend's, which may buffer what its read returns) is read as before, and so is one over
    a Unix socket or TLS (an ``ssl.SSLSocket`` is not a plain socket)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stream = httpcore.SyncBackend().connect_tcp(*listener.getsockname()[:2], timeout=10)
        assert stamped_socket(stream) is stream.get_extra_info("socket")
        assert stamped_socket(SimpleNamespace(get_extra_info=stream.get_extra_info)) is None
        stream.close()
    assert stamped_socket(SimpleNamespace()) is None
    left, right = socket.socketpair()
    with left, right:
        assert stamped_socket(transport.SyncStream(left)) is None  # httpcore's, over Unix


def test_the_stamped_read_ends_and_fails_as_httpcore_does() -> None:
    """Timeouts, a closed connection and a closed socket come out as httpcore's stream
    gives them (the pool relies on them)."""
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()[:2]) as client,
    ):
        with pytest.raises(httpcore.ReadTimeout):
            read_stamped(client, 1024, 0.01)
        server_side, _ = listener.accept()
        server_side.close()
        assert read_stamped(client, 1024, 10)[0] == b""
    with pytest.raises(httpcore.ReadError):
        read_stamped(client, 1024, 10)


class SteppingClocks:
    """A monotonic clock and a wall clock (nanoseconds) the wall one of which may be set by
    each ``steps`` entry, ``(at, by)``."""

    def __init__(self, gap: int, steps: list[tuple[int, int]]) -> None:
        self.now = 0
        self.gap, self.steps = gap, steps

    def monotonic_ns(self) -> int:
        return self.now

    def time_ns(self) -> int:
        return self.now + self.gap + sum(by for at, by in self.steps if self.now >= at)


S = 1_000_000_000
MS = 1_000_000


def age_after(clocks: SteppingClocks, write_at: int, to_arrival: int, to_read: int) -> float:
    """The age ``arrival_age_s`` gives a packet that arrived ``to_arrival`` after a write at
    ``write_at`` and is read ``to_read`` later, on ``clocks``."""
    clocks.now = write_at
    gap_at_write = clocks.time_ns() - clocks.monotonic_ns()
    clocks.now = write_at + to_arrival
    stamp = clocks.time_ns()
    clocks.now = write_at + to_arrival + to_read
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transport, "time", clocks)
        return arrival_age_s(stamp, gap_at_write)


@settings(max_examples=300, deadline=None)
@given(
    gap=st.integers(10**18, 2 * 10**18),  # the wall clock: nanoseconds since 1970
    step=st.integers(-3600 * S, 3600 * S),
    write_at=st.integers(0, 100 * S),
    to_arrival=st.integers(0, 30 * S),
    to_read=st.integers(0, 300 * MS),
    step_after=st.integers(-5 * S, 70 * S),
)
def test_an_arrival_is_never_aged_more_than_it_is_whatever_the_wall_clock_does(
    gap: int, step: int, write_at: int, to_arrival: int, to_read: int, step_after: int
) -> None:
    """The stamp is on the wall clock, which may be set while a request is out (before or
    after its answer came); the age it gives never exceeds the true one, so a hold kept
    from it is never shorter than a window after the answer. With no step it is exact (up
    to the 100 ms past which a stamp is not used)."""
    clocks = SteppingClocks(gap, [(write_at + step_after, step)])
    age = age_after(clocks, write_at, to_arrival, to_read)
    true_age = to_read / S
    assert 0.0 <= age <= true_age
    stepped_meanwhile = write_at < write_at + step_after <= clocks.now and step != 0
    if not stepped_meanwhile and 0 < to_read <= transport.MAX_STAMP_AGE_NS:
        assert age == true_age
    if to_read > transport.MAX_STAMP_AGE_NS:
        assert age == 0.0  # too old to use: the read's instant is noted


@settings(max_examples=200, deadline=None)
@given(
    step=st.integers(1, 3600 * S),
    to_arrival=st.integers(0, 30 * S),
    to_read=st.integers(0, 300 * MS),
    back_at=st.integers(0, 30 * S),
    forward_after=st.integers(1, 30 * S),
)
def test_a_clock_set_back_and_forth_during_a_request_costs_a_hold_at_most_the_cap(
    step: int, to_arrival: int, to_read: int, back_at: int, forward_after: int
) -> None:
    """Set back and forth by the same amount, the wall clock leaves the gap between the
    clocks as it was and can make a stamp look older than it is: never by more than the
    100 ms past which no stamp is used."""
    clocks = SteppingClocks(10**18, [(back_at, -step), (back_at + forward_after, step)])
    age = age_after(clocks, 0, to_arrival, to_read)
    assert 0.0 <= age <= to_read / S + transport.MAX_STAMP_AGE_NS / S
    assert age <= transport.MAX_STAMP_AGE_NS / S


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
