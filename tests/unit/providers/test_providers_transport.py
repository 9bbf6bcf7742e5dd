"""The gated transport: a request's send permit is admitted as its head is written, and a
grant too old to use sends nothing."""

from __future__ import annotations

import pytest

from sluice import errors
from sluice.providers.transport import GatedStream, body_length, starts_a_request
from sluice.ratelimit import sendgate


class RecordingStream:
    """Stands in for a socket stream: keeps what was written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.written.append(buffer)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b"HTTP/1.1 201 Created\r\n\r\n"


HEAD = b"POST /v1/campaigns HTTP/1.1\r\nHost: dsp\r\n\r\n"
BODY = b'{"name": "GET lucky"}'


def stream() -> tuple[GatedStream, RecordingStream]:
    inner = RecordingStream()
    return GatedStream(inner), inner  # type: ignore[arg-type]


def test_only_a_request_head_counts_as_the_start_of_a_request() -> None:
    """Heads start with a method and a space; bodies and partial words do not."""
    assert starts_a_request(HEAD)
    assert starts_a_request(b"GET /v1/status?ids=1 HTTP/1.1\r\n\r\n")
    assert not starts_a_request(BODY)
    assert not starts_a_request(b"GETTING")


def test_the_head_is_admitted_and_the_body_follows_under_the_same_grant() -> None:
    """Head and body of one request go under one permit, which is then used."""
    gated, inner = stream()
    permit = sendgate.SendPermit(0.0, 0.005, lambda: 0.001)
    with sendgate.bound(permit):
        gated.write(HEAD)
        gated.write(BODY)
    assert inner.written == [HEAD, BODY]
    assert permit.used
    assert permit.written_s == pytest.approx(0.001)


def test_a_late_grant_writes_nothing() -> None:
    """A grant past its send window raises GrantExpired before any byte is written."""
    gated, inner = stream()
    with (
        sendgate.bound(sendgate.SendPermit(0.0, 0.005, lambda: 0.0051)),
        pytest.raises(errors.GrantExpired),
    ):
        gated.write(HEAD)
    assert inner.written == []


def test_a_second_request_under_one_grant_is_refused() -> None:
    """One grant, one request: a second head under the same permit is not written."""
    gated, inner = stream()
    with sendgate.bound(sendgate.SendPermit(0.0, 0.005, lambda: 0.001)):
        gated.write(HEAD)
        with pytest.raises(errors.GrantSpent):
            gated.write(HEAD)
    assert inner.written == [HEAD]


def test_without_a_permit_requests_are_written_as_they_come() -> None:
    """Outside the engine (no permit bound) the stream writes everything."""
    gated, inner = stream()
    gated.write(HEAD)
    assert inner.written == [HEAD]


def test_the_default_transport_writes_through_the_gate() -> None:
    """The client Sluice builds for a provider writes every connection through GatedStream."""
    import httpx

    from sluice.providers.transport import GatedBackend, gated_transport

    transport = gated_transport(httpx.Limits(max_connections=2))
    assert isinstance(transport._pool._network_backend, GatedBackend)  # type: ignore[attr-defined]
    transport.close()


def test_the_answer_is_noted_when_its_first_bytes_are_read() -> None:
    """The first read after the request was written marks the answer (window holds keep
    their place a window from then); a read before the request was admitted does not."""
    gated, _ = stream()
    now = [0.001]
    written: list[bool] = []
    permit = sendgate.SendPermit(
        0.0, 0.005, lambda: now[0], on_written=lambda _: written.append(True)
    )
    with sendgate.bound(permit):
        gated.read(65536)
        assert permit.answered_at is None
        gated.write(HEAD)
        assert written == [True]
        now[0] = 0.040
        gated.read(65536)
        now[0] = 0.090
        gated.read(65536)
    assert permit.answered_at == pytest.approx(0.040)
    assert permit.since_answer_s() == pytest.approx(0.050)


SIZED_HEAD = b"POST /v1/campaigns HTTP/1.1\r\nHost: dsp\r\nContent-Length: %d\r\n\r\n" % len(BODY)


def test_a_head_announcing_its_body_is_written_with_it_in_one_call() -> None:
    """Head and body leave together: a thread that lost the CPU between two writes sent the
    body tens of milliseconds after its head, when a provider judging whole requests counts it."""
    gated, inner = stream()
    permit = sendgate.SendPermit(0.0, 0.005, lambda: 0.001)
    with sendgate.bound(permit):
        gated.write(SIZED_HEAD)
        assert inner.written == []
        assert not permit.used
        gated.write(BODY[:5])
        gated.write(BODY[5:])
        gated.write(b"")  # h11's end of a Content-Length message
    assert inner.written == [SIZED_HEAD + BODY, b""]
    assert permit.used
    assert permit.written_s == pytest.approx(0.001)


def test_a_grant_that_expires_while_the_body_is_handed_over_writes_nothing() -> None:
    """The check is made as the joined request is written: too late by then, nothing goes."""
    now = [0.001]
    gated, inner = stream()
    with sendgate.bound(sendgate.SendPermit(0.0, 0.005, lambda: now[0])):
        gated.write(SIZED_HEAD)
        now[0] = 0.0051
        with pytest.raises(errors.GrantExpired):
            gated.write(BODY)
    assert inner.written == []


def test_a_sized_head_under_an_old_or_used_grant_fails_at_once() -> None:
    """An expired grant or a second request under one grant fails at the head, as before."""
    gated, inner = stream()
    with (
        sendgate.bound(sendgate.SendPermit(0.0, 0.005, lambda: 0.0051)),
        pytest.raises(errors.GrantExpired),
    ):
        gated.write(SIZED_HEAD)
    permit = sendgate.SendPermit(0.0, 0.005, lambda: 0.001)
    with sendgate.bound(permit):
        gated.write(SIZED_HEAD)
        gated.write(BODY)
        with pytest.raises(errors.GrantSpent):
            gated.write(SIZED_HEAD)
    assert inner.written == [SIZED_HEAD + BODY]


def test_the_announced_length_is_read_from_the_head() -> None:
    """Content-Length in any case; none, or not a number, is None."""
    assert body_length(SIZED_HEAD) == len(BODY)
    assert body_length(b"POST / HTTP/1.1\r\ncontent-length:  12 \r\n\r\n") == 12
    assert body_length(HEAD) is None
    assert body_length(b"POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n") is None


class FailingBackend:
    """A network backend whose connections fail as ``exc`` (refused, timed out)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def connect_tcp(self, *args: object, **kwargs: object) -> None:
        raise self.exc


class BrokenStream(RecordingStream):
    """A (reused) connection the provider closed: writing to it fails."""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        import httpcore

        raise httpcore.WriteError("[Errno 32] Broken pipe")


@pytest.mark.parametrize("kind", ["ConnectError", "ConnectTimeout"])
def test_a_failed_connect_is_noted_as_nothing_sent(kind: str) -> None:
    """A connection refused or not made in time fails before any request byte is written:
    the permit says nothing was sent (its holds and slot go back, drivers/executor.py)."""
    import httpcore

    from sluice.providers.transport import GatedBackend

    backend = GatedBackend(FailingBackend(getattr(httpcore, kind)("refused")))  # type: ignore[arg-type]
    permit = sendgate.SendPermit(0.0, 0.005, lambda: 0.001)
    with sendgate.bound(permit), pytest.raises(getattr(httpcore, kind)):
        backend.connect_tcp("127.0.0.1", 9)
    assert permit.nothing_sent


def test_a_write_that_fails_on_a_reused_connection_counts_as_sent() -> None:
    """The head was admitted and handed to a socket that then failed: some bytes may have
    reached the provider, so the request counts as sent (its hold is kept)."""
    import httpcore

    gated = GatedStream(BrokenStream())  # type: ignore[arg-type]
    permit = sendgate.SendPermit(0.0, 0.005, lambda: 0.001)
    with sendgate.bound(permit), pytest.raises(httpcore.WriteError):
        gated.write(HEAD)
    assert permit.used
    assert not permit.nothing_sent
    # Even were a later connect for it to fail (a retry on a new connection), it was sent.
    permit.not_connected()
    assert not permit.nothing_sent
