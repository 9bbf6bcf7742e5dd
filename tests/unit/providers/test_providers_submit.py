"""Submitting: every answer a DSP can give becomes exactly one decision."""

from __future__ import annotations

import errno
import json
import logging
import socket
import ssl
import threading
from typing import Any

import httpx
import pytest

from sluice.clock import FakeClock
from sluice.domain import EXTERNAL_ID_MAX_CHARS
from sluice.providers.base import Accepted, Failed, RateLimited, Transient

from .fakes import ACME, FakeDsp, client_for, make_provider, refused, task, with_changes


@pytest.fixture
def dsp() -> FakeDsp:
    return FakeDsp()


def test_created_object_id_is_read_from_the_configured_field(dsp: FakeDsp) -> None:
    """A 2xx with the id at external_id_field is Accepted, not yet completed."""
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task(payload={"name": "Spring"}))
    assert decision == Accepted(external_id="cam-1", completed=False)
    assert dsp.sent_json() == {"name": "Spring"}
    assert dsp.requests[0].url == "http://acme.test/campaigns"


def test_payload_carries_client_ref_and_parent_external_id(dsp: FakeDsp) -> None:
    """client_ref_field and parent_field are written into the body before sending."""
    provider = make_provider(ACME)
    ref = task(kind="ad_group", client_ref="ref-9", parent_external_id="cam-42")
    decision = provider.submit(client_for(provider, dsp), ref)
    assert decision == Accepted(external_id="adg-1", completed=False)
    assert dsp.sent_json() == {
        "name": "Spring sale",
        "client_ref": "ref-9",
        "campaign_id": "cam-42",
    }


def test_kind_without_status_on_provider_without_poll_completes_at_once(dsp: FakeDsp) -> None:
    """A kind with no status request and no batch poll is synchronous."""
    provider = make_provider(ACME)
    assert provider.is_synchronous("note")
    assert not provider.is_synchronous("campaign")
    decision = provider.submit(client_for(provider, dsp), task(kind="note"))
    assert decision == Accepted(external_id="not-1", completed=True)


def test_validation_error_fails_with_message_and_field_path(dsp: FakeDsp) -> None:
    """A 400 with a message and a field is Failed('field: message')."""
    dsp.script(
        httpx.Response(
            400,
            json={
                "error": {
                    "code": "INVALID_REQUEST",
                    "message": "Invalid IP range: 192.168.1.256",
                    "field": "include[3]",
                }
            },
        )
    )
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert decision == Failed("include[3]: Invalid IP range: 192.168.1.256")


def test_unreadable_4xx_fails_with_status_and_body_excerpt(dsp: FakeDsp) -> None:
    """A 4xx whose body has no message field still names the status and shows the body."""
    dsp.script(httpx.Response(422, text="budget too small"))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert decision == Failed("HTTP 422: budget too small")


def test_configured_transient_code_on_409_is_retried_without_ambiguity(dsp: FakeDsp) -> None:
    """409 PARENT_NOT_READY is Transient and not ambiguous (nothing was created)."""
    dsp.script(httpx.Response(409, json={"error": {"code": "PARENT_NOT_READY", "message": "wait"}}))
    provider = make_provider(with_changes(ACME, errors={"transient_codes": ["PARENT_NOT_READY"]}))
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert not decision.ambiguous
    assert "PARENT_NOT_READY" in decision.message


def test_409_without_configured_code_is_a_failure(dsp: FakeDsp) -> None:
    """Without transient_codes a 409 is a permanent refusal."""
    dsp.script(httpx.Response(409, json={"error": {"code": "PARENT_NOT_READY", "message": "wait"}}))
    provider = make_provider(ACME)
    assert provider.submit(client_for(provider, dsp), task()) == Failed("wait")


@pytest.mark.parametrize("status", [500, 502, 504, 408, 425])
def test_server_errors_are_ambiguous_transients_for_writes(dsp: FakeDsp, status: int) -> None:
    """5xx, 408 and 425 after a create may hide a created object."""
    dsp.script(httpx.Response(status, json={"error": {"message": "boom"}}))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert decision == Transient(f"HTTP {status}: boom", ambiguous=True)


def test_503_with_retry_after_is_transient_with_delay(dsp: FakeDsp) -> None:
    """503 + Retry-After is a transient with retry_after_s by default."""
    dsp.script(httpx.Response(503, headers={"Retry-After": "7"}))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert decision.retry_after_s == 7.0
    assert decision.ambiguous


@pytest.mark.parametrize(
    "retry_after", ["99999999", "Tue, 05 Dec 2099 00:00:00 GMT", "999999999999999999999"]
)
def test_a_huge_retry_after_on_a_5xx_waits_no_longer_than_max_pause(
    dsp: FakeDsp, retry_after: str
) -> None:
    """Retry-After on a plain 5xx delays that task's retry. A broken one (years away) left
    the task waiting years; like a rate-limit signal's pause it is capped at max_pause."""
    dsp.script(httpx.Response(503, headers={"Retry-After": retry_after}))
    provider = make_provider(with_changes(ACME, rate_limit_signal={"max_pause": "10min"}))
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert decision.retry_after_s == 600.0


def test_503_configured_as_rate_limit_status_pauses(dsp: FakeDsp) -> None:
    """A TTD-like provider lists 503 among rate-limit statuses: it is RateLimited."""
    dsp.script(httpx.Response(503, headers={"Retry-After": "7"}))
    provider = make_provider(with_changes(ACME, rate_limit_signal={"statuses": [429, 503]}))
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == 7.0
    # A server error to a create: it may have been committed (looked up before a resend).
    assert decision.ambiguous


def test_429_is_rate_limited_not_a_failure(dsp: FakeDsp) -> None:
    """429 + Retry-After pauses the provider for the time given."""
    dsp.script(httpx.Response(429, headers={"Retry-After": "3"}))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == 3.0
    assert "429" in decision.detail
    assert not decision.ambiguous


@pytest.mark.parametrize("exc", [refused(), httpx.ConnectTimeout("timed out")])
def test_an_unreachable_provider_is_paused_not_failed(dsp: FakeDsp, exc: Exception) -> None:
    """A connection never made cannot have created anything, and says the provider is down:
    a pause of Sluice's own (not counted as an attempt), not a transient failure."""
    dsp.script(exc)
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, RateLimited)
    assert decision.unreachable
    assert not decision.ambiguous
    assert not decision.said_when
    assert decision.retry_after_s == 1.0  # retry_base
    assert "acme unreachable" in decision.detail


@pytest.mark.parametrize(
    "cause",
    [
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        TimeoutError("timed out"),
    ],
)
def test_failures_that_say_the_host_is_down_pause_it(dsp: FakeDsp, cause: BaseException) -> None:
    """A host down or cut off, or a name server that does not answer: paused, not failed."""
    dsp.script(_connect_error(cause))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, RateLimited)
    assert decision.unreachable


def test_unreachable_pauses_double_per_spell_and_start_again_after_an_answer(
    dsp: FakeDsp,
) -> None:
    """Each failure after a pause has run out doubles it (up to retry_max, at most 30 s);
    failures of requests already under way wait out what is left; an answer resets it."""
    clock = FakeClock()
    provider = make_provider(with_changes(ACME, retry_base="1s", retry_max="10s"), clock=clock)
    client = client_for(provider, dsp)

    def pause() -> float | None:
        dsp.script(refused())
        decision = provider.submit(client, task())
        assert isinstance(decision, RateLimited)
        assert decision.unreachable
        return decision.retry_after_s

    pauses = []
    for _ in range(6):
        pauses.append(pause())
        clock.advance(pauses[-1] or 0.0)
    assert pauses == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert pause() == 10.0
    clock.advance(4.0)
    assert pause() == 6.0  # under way when the pause began: what is left of it
    clock.advance(6.0)
    assert isinstance(provider.submit(client, task()), Accepted)
    assert pause() == 1.0


def _connect_error(cause: BaseException) -> httpx.ConnectError:
    error = httpx.ConnectError(str(cause))
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    "exc",
    [
        httpx.PoolTimeout("no free connection"),
        httpx.UnsupportedProtocol("ftp"),
        _connect_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known")),
        _connect_error(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")),
        _connect_error(ssl.SSLCertVerificationError(1, "certificate verify failed")),
        httpx.ConnectError("no cause to read"),
    ],
)
def test_failures_to_send_that_do_not_say_the_provider_is_down_stay_transient(
    dsp: FakeDsp, exc: Exception
) -> None:
    """Nothing was sent, so not ambiguous, but a full local pool, a bad URL, a name that does
    not resolve or a TLS handshake that fails is no outage: a configuration that stays wrong
    must end its tasks in Error after max_attempts, not pause them for good."""
    dsp.script(exc)
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert not decision.ambiguous
    assert "acme unreachable" in decision.message


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
    ],
)
def test_lost_answers_after_sending_are_ambiguous(dsp: FakeDsp, exc: Exception) -> None:
    """A timeout or a drop after the request left may hide a created object."""
    dsp.script(exc)
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert decision.ambiguous
    assert "POST /campaigns" in decision.message


def test_a_timed_out_create_is_looked_up_no_sooner_than_the_timeout(dsp: FakeDsp) -> None:
    """The provider may still be at work on a create Sluice stopped waiting for: the next
    step (a lookup) waits as long again, or it finds nothing yet and creates a second."""
    dsp.script(httpx.ReadTimeout("timed out"))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert decision.retry_after_s == provider.timeout_s


def test_lost_answer_on_a_read_is_not_ambiguous(dsp: FakeDsp) -> None:
    """Ambiguity only matters for writes: a timed-out poll is a plain transient."""
    dsp.script(httpx.ReadTimeout("timed out"))
    provider = make_provider(ACME)
    decisions = provider.poll(client_for(provider, dsp), [task(external_id="cam-1")])
    assert isinstance(decisions[1], Transient)
    assert not decisions[1].ambiguous
    assert decisions[1].retry_after_s is None


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (httpx.Response(200, text="<html>oops</html>"), "not JSON"),
        (httpx.Response(200, json={"status": "ok"}), "no campaign_id"),
        (httpx.Response(200, json={"error": {"message": "try later"}}), "try later"),
    ],
)
def test_unusable_success_answers_are_ambiguous_transients(
    dsp: FakeDsp, answer: httpx.Response, problem: str
) -> None:
    """A 2xx that is not JSON, lacks the id or carries an error object is retried."""
    dsp.script(answer)
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert decision.ambiguous
    assert problem in decision.message


def test_unknown_kind_fails_naming_the_known_ones(dsp: FakeDsp) -> None:
    """A task of a kind the provider does not describe is refused without a request."""
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task(kind="banner"))
    assert decision == Failed(
        "unknown kind 'banner' for provider 'acme'; known: ad_group, campaign, note"
    )
    assert dsp.requests == []


def test_payload_placeholder_in_path_is_filled_and_encoded(dsp: FakeDsp) -> None:
    """{payload.FIELD} in the request line comes from the task payload, percent-encoded."""
    table = with_changes(
        ACME,
        kinds={"campaign": {"submit": "POST /advertisers/{payload.advertiser_id}/campaigns"}},
    )
    dsp.script(httpx.Response(201, json={"id": "c-1"}))
    provider = make_provider(table)
    decision = provider.submit(
        client_for(provider, dsp), task(payload={"advertiser_id": "a/1", "name": "x"})
    )
    assert decision == Accepted("c-1", completed=True)
    assert dsp.requests[0].url.raw_path == b"/advertisers/a%2F1/campaigns"


def test_missing_payload_field_for_placeholder_fails(dsp: FakeDsp) -> None:
    """A request that cannot be built is a permanent error naming the placeholder."""
    table = with_changes(
        ACME,
        kinds={"campaign": {"submit": "POST /advertisers/{payload.advertiser_id}/campaigns"}},
    )
    provider = make_provider(table)
    decision = provider.submit(client_for(provider, dsp), task(payload={"name": "x"}))
    assert isinstance(decision, Failed)
    assert "{payload.advertiser_id}" in decision.message
    assert dsp.requests == []


def test_idempotency_header_carries_the_client_ref(dsp: FakeDsp) -> None:
    """With idempotency_header set, the client reference is sent as that header."""
    provider = make_provider(with_changes(ACME, idempotency_header="Idempotency-Key"))
    provider.submit(client_for(provider, dsp), task(client_ref="ref-77"))
    assert dsp.requests[0].headers["Idempotency-Key"] == "ref-77"


def test_401_without_auth_is_transient(dsp: FakeDsp) -> None:
    """Bad static credentials are retried (and fixed), not turned into validation errors."""
    dsp.script(httpx.Response(401, json={"error": {"message": "bad key"}}))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert not decision.ambiguous


def test_meta_style_transient_flag_is_retried(dsp: FakeDsp) -> None:
    """A 4xx whose transient_flag_field is true is a transient, not a failure."""
    dsp.script(
        httpx.Response(400, json={"error": {"message": "Please retry", "is_transient": True}})
    )
    provider = make_provider(
        with_changes(ACME, errors={"transient_flag_field": "error.is_transient"})
    )
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert "Please retry" in decision.message


@pytest.mark.parametrize("length", [EXTERNAL_ID_MAX_CHARS, EXTERNAL_ID_MAX_CHARS + 1, 4096])
def test_an_id_longer_than_the_store_keeps_is_a_bad_answer(dsp: FakeDsp, length: int) -> None:
    """An id the store cannot keep (PostgreSQL refused it, and the writer's batch with it)
    is an ambiguous transient naming its length (looked up, never created twice); one of
    the longest length kept is accepted."""
    long_id = "c" * length
    dsp.script(httpx.Response(201, json={"campaign_id": long_id}))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    if length <= EXTERNAL_ID_MAX_CHARS:
        assert decision == Accepted(long_id, completed=False)
        return
    assert isinstance(decision, Transient)
    assert decision.ambiguous
    assert f"campaign_id of {length} characters" in decision.message
    assert f"at most {EXTERNAL_ID_MAX_CHARS}" in decision.message


def test_an_outage_is_logged_as_a_warning_when_it_begins_and_when_it_ends(
    dsp: FakeDsp, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers log at WARNING: the first failure to connect of a spell and the first answer
    after it say so there, once each (every failure is still an INFO line)."""
    clock = FakeClock()
    provider = make_provider(with_changes(ACME, retry_base="1s"), clock=clock)
    client = client_for(provider, dsp)
    caplog.set_level(logging.WARNING, logger="sluice.providers")
    for _ in range(3):
        dsp.script(refused())
        provider.submit(client, task())
        clock.advance(5.0)
    assert isinstance(provider.submit(client, task()), Accepted)
    assert isinstance(provider.submit(client, task()), Accepted)
    said = [(r.getMessage(), r.levelno) for r in caplog.records]
    assert said == [
        ("provider.unreachable_began", logging.WARNING),
        ("provider.reachable_again", logging.WARNING),
    ]
    assert caplog.records[0].__dict__["provider"] == "acme"
    assert "refused" in caplog.records[0].__dict__["detail"]


@pytest.mark.parametrize("given_id", ["cam\x00-1", "cam-\ud800", "\udfff"])
def test_an_id_the_store_would_alter_is_a_bad_answer(dsp: FakeDsp, given_id: str) -> None:
    """An id with U+0000 or a lone surrogate (JSON's "\\u0000", "\\ud800") would be stored
    with U+FFFD in their place: every status read would then ask for an object the provider
    never made (object_gone after max_attempts, naming an id it never gave). It is a bad
    answer, as an id too long is."""
    body = json.dumps({"campaign_id": given_id}).encode()  # ASCII: "\ud800" as JSON spells it
    dsp.script(httpx.Response(201, content=body, headers={"content-type": "application/json"}))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert decision.ambiguous
    assert "campaign_id" in decision.message


def test_an_outage_begins_once_when_two_requests_fail_together(
    dsp: FakeDsp, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two send threads whose connections are refused at the same moment: the spell begins
    once (one WARNING line), not once per thread that saw no spell before its own failure."""

    from sluice.providers.outage import Outage

    provider = make_provider(ACME, clock=FakeClock())
    client = client_for(provider, dsp)
    together = threading.Barrier(2, timeout=30)
    failed = Outage.failed

    def failed_together(self: Outage) -> Any:
        together.wait()  # both threads have failed to connect before either records it
        return failed(self)

    monkeypatch.setattr(Outage, "failed", failed_together)
    caplog.set_level(logging.WARNING, logger="sluice.providers")
    dsp.script(refused())
    dsp.script(refused())
    threads = [threading.Thread(target=provider.submit, args=(client, task(i))) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    began = [r for r in caplog.records if r.getMessage() == "provider.unreachable_began"]
    assert len(began) == 1


def test_an_empty_id_is_a_bad_answer(dsp: FakeDsp) -> None:
    """An empty id names no object: polled, it asked for ``/campaigns//status`` (which a
    server merging slashes reads as another resource)."""
    dsp.script(httpx.Response(201, json={"campaign_id": ""}))
    provider = make_provider(ACME)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, Transient)
    assert decision.ambiguous
    assert "campaign_id" in decision.message


def test_a_provider_that_refuses_every_other_connection_warns_once_a_minute(
    dsp: FakeDsp, caplog: pytest.LogCaptureFixture
) -> None:
    """Spells that follow each other within a minute are INFO lines only: one warning for
    the first spell's start and one for its end, then again once a minute has passed."""
    clock = FakeClock()
    provider = make_provider(with_changes(ACME, retry_base="1s"), clock=clock)
    client = client_for(provider, dsp)
    caplog.set_level(logging.WARNING, logger="sluice.providers")
    for _ in range(10):
        dsp.script(refused())
        provider.submit(client, task())
        clock.advance(2.0)
        provider.submit(client, task())
        clock.advance(2.0)
    clock.advance(60.0)
    dsp.script(refused())
    provider.submit(client, task())
    assert [r.getMessage() for r in caplog.records] == [
        "provider.unreachable_began",
        "provider.reachable_again",
        "provider.unreachable_began",
    ]
