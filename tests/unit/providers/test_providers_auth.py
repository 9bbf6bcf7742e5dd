"""Token auth: fetched once, reused, refreshed on expiry and after a 401."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from sluice import errors
from sluice.clock import FakeClock
from sluice.providers.base import Accepted, RateLimited, Transient
from sluice.ratelimit import MemoryLimiter, sendgate

from .fakes import ACME, FakeDsp, client_for, make_provider, refused, task, with_changes

AUTH = {
    "request": "POST /oauth/token",
    "body": {"client_id": "sluice", "client_secret": "${ACME_SECRET}"},
    "token_field": "access_token",
    "lifetime": "1h",
}
SECRET = "s3cret-client-value"


class TokenDsp(FakeDsp):
    """A fake DSP that hands out numbered tokens and accepts only the live one."""

    def __init__(self, expires_in: int | None = 60) -> None:
        super().__init__()
        self.expires_in = expires_in
        self.valid: str | None = None
        self.token_requests: list[dict[str, str]] = []
        self._numbers = itertools.count(1)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            self.token_requests.append(json.loads(request.content))
            self.valid = f"tok-{next(self._numbers)}"
            answer: dict[str, object] = {"access_token": self.valid, "token_type": "bearer"}
            if self.expires_in is not None:
                answer["expires_in"] = self.expires_in
            return httpx.Response(200, json=answer)
        if request.headers.get("Authorization") != f"Bearer {self.valid}":
            self.requests.append(request)
            return httpx.Response(
                401, json={"error": {"code": "UNAUTHORIZED", "message": "bad token"}}
            )
        return super().__call__(request)


def test_token_is_fetched_once_and_sent_on_every_call() -> None:
    """The first call fetches a token with the expanded body; later calls reuse it."""
    dsp, clock = TokenDsp(), FakeClock()
    provider = make_provider(
        with_changes(ACME, auth=AUTH), environ={"ACME_SECRET": SECRET}, clock=clock
    )
    client = client_for(provider, dsp)
    assert provider.submit(client, task(task_id=1)) == Accepted("cam-1", completed=False)
    assert provider.submit(client, task(task_id=2)) == Accepted("cam-2", completed=False)
    assert dsp.token_requests == [{"client_id": "sluice", "client_secret": SECRET}]
    assert all(r.headers["Authorization"] == "Bearer tok-1" for r in dsp.requests)


def test_token_is_refreshed_before_it_expires() -> None:
    """Past expires_in minus the refresh margin, a new token is fetched."""
    dsp, clock = TokenDsp(expires_in=60), FakeClock()
    provider = make_provider(
        with_changes(ACME, auth=AUTH), environ={"ACME_SECRET": SECRET}, clock=clock
    )
    client = client_for(provider, dsp)
    provider.submit(client, task())
    clock.advance(29)
    provider.submit(client, task())
    assert len(dsp.token_requests) == 1
    clock.advance(2)
    assert isinstance(provider.submit(client, task()), Accepted)
    assert len(dsp.token_requests) == 2
    assert dsp.requests[-1].headers["Authorization"] == "Bearer tok-2"


@pytest.mark.parametrize("expires_in", [20, "20"])
def test_a_token_shorter_than_the_refresh_margin_is_still_reused(expires_in: int | str) -> None:
    """A token living 20 s, under the 30 s refresh margin, was fetched again before every
    call: one token request per request. It is now kept for half its life at least. An
    ``expires_in`` sent as text (some OAuth servers do) counts as the number it holds."""
    dsp, clock = TokenDsp(), FakeClock()
    dsp.expires_in = expires_in  # type: ignore[assignment]
    provider = make_provider(
        with_changes(ACME, auth=AUTH), environ={"ACME_SECRET": SECRET}, clock=clock
    )
    client = client_for(provider, dsp)
    for _ in range(5):
        assert isinstance(provider.submit(client, task()), Accepted)
        clock.advance(1)
    assert len(dsp.token_requests) == 1
    clock.advance(10)
    assert isinstance(provider.submit(client, task()), Accepted)
    assert len(dsp.token_requests) == 2


def test_401_drops_the_token_and_the_next_attempt_gets_a_new_one() -> None:
    """A token revoked early gives one Transient, then the retry succeeds with a fresh token."""
    dsp, clock = TokenDsp(), FakeClock()
    provider = make_provider(
        with_changes(ACME, auth=AUTH), environ={"ACME_SECRET": SECRET}, clock=clock
    )
    client = client_for(provider, dsp)
    provider.submit(client, task())
    dsp.valid = "revoked-elsewhere"
    decision = provider.submit(client, task())
    assert isinstance(decision, Transient)
    assert not decision.ambiguous
    assert "401" in decision.message
    assert isinstance(provider.submit(client, task()), Accepted)
    assert len(dsp.token_requests) == 2


def test_failed_token_request_is_transient_without_the_body() -> None:
    """A refused token request retries later; the message names the status, not the secret."""
    dsp = FakeDsp()
    dsp.script(httpx.Response(400, json={"error": "invalid_client", "echo": SECRET}))
    provider = make_provider(with_changes(ACME, auth=AUTH), environ={"ACME_SECRET": SECRET})
    decision = provider.submit(client_for(provider, dsp), task())
    assert decision == Transient("token request to acme answered HTTP 400 (invalid_client)")


@pytest.mark.parametrize(
    ("exc", "paused"),
    [
        (refused(), True),
        (httpx.ConnectTimeout("timed out"), True),
        (httpx.PoolTimeout("no free connection"), False),
    ],
)
def test_an_unreachable_token_endpoint_pauses_the_provider(exc: Exception, paused: bool) -> None:
    """No token can be had from a host that takes no connection: nothing can be sent, so
    the provider pauses (no attempt spent) as when its API itself cannot be reached. A full
    local pool is no outage: a transient failure."""
    dsp = FakeDsp()
    dsp.script(exc)
    provider = make_provider(with_changes(ACME, auth=AUTH), environ={"ACME_SECRET": SECRET})
    decision = provider.submit(client_for(provider, dsp), task())
    message = f"could not reach the token endpoint of acme: {type(exc).__name__}"
    if paused:
        assert decision == RateLimited(1.0, message, said_when=False, unreachable=True)
    else:
        assert decision == Transient(message)


def test_token_answer_without_token_is_transient() -> None:
    """An answer lacking token_field is a transient problem naming the field."""
    dsp = FakeDsp()
    dsp.script(httpx.Response(200, json={"token": "elsewhere"}))
    provider = make_provider(with_changes(ACME, auth=AUTH), environ={"ACME_SECRET": SECRET})
    decision = provider.submit(client_for(provider, dsp), task())
    assert decision == Transient("token answer from acme has no access_token")


def test_form_encoded_token_request() -> None:
    """body_format = 'form' sends the body as application/x-www-form-urlencoded (OAuth2)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "abcd1234"})
        return httpx.Response(201, json={"campaign_id": "c1"})

    auth = {
        "request": "POST /token",
        "body": {"grant_type": "client_credentials"},
        "body_format": "form",
    }
    provider = make_provider(with_changes(ACME, auth=auth))
    client = httpx.Client(base_url=provider.base_url, transport=httpx.MockTransport(handler))
    assert provider.submit(client, task()) == Accepted("c1", completed=False)
    assert seen[0].content == b"grant_type=client_credentials"
    assert seen[1].headers["Authorization"] == "Bearer abcd1234"


def test_lifetime_is_used_when_the_answer_has_no_expiry() -> None:
    """Without expires_in the configured lifetime (1h) applies."""
    dsp, clock = TokenDsp(expires_in=None), FakeClock()
    provider = make_provider(
        with_changes(ACME, auth=AUTH), environ={"ACME_SECRET": SECRET}, clock=clock
    )
    client = client_for(provider, dsp)
    provider.submit(client, task())
    clock.advance(3000)
    provider.submit(client, task())
    assert len(dsp.token_requests) == 1
    clock.advance(600)
    provider.submit(client, task())
    assert len(dsp.token_requests) == 2


LIMITED_AUTH = {**AUTH, "rate_limit": "1/s"}


def test_token_requests_take_grants_of_their_own() -> None:
    """With [auth] rate_limit, each token request waits for a grant on acme:auth: a token
    dropped by a 401 is fetched again only one spacing after the first."""
    dsp, clock = TokenDsp(), FakeClock()
    limiter = MemoryLimiter(clock=clock, cold_start=False)
    provider = make_provider(
        with_changes(ACME, auth=LIMITED_AUTH),
        environ={"ACME_SECRET": SECRET},
        clock=clock,
        limiter=limiter,
    )
    assert [spec.key for spec in provider.token_limits()] == ["acme:auth"]
    client = client_for(provider, dsp)
    start = clock.monotonic()
    provider.submit(client, task())
    dsp.valid = "revoked-elsewhere"
    provider.submit(client, task())  # 401: the token is dropped
    assert isinstance(provider.submit(client, task()), Accepted)
    assert len(dsp.token_requests) == 2
    assert clock.monotonic() - start == pytest.approx(1.01)  # one spacing of 1/s, margin 1%


def test_a_token_request_held_back_too_long_is_transient() -> None:
    """A token request that cannot get a grant within the provider's timeout gives up with a
    transient decision, and nothing reaches the token endpoint."""
    dsp, clock = TokenDsp(), FakeClock()
    limiter = MemoryLimiter(clock=clock, cold_start=False)
    limiter.pause("acme:auth", 60)
    provider = make_provider(
        with_changes(ACME, auth=LIMITED_AUTH),
        environ={"ACME_SECRET": SECRET},
        clock=clock,
        limiter=limiter,
    )
    decision = provider.submit(client_for(provider, dsp), task())
    assert decision == Transient("token request of acme held back (paused) for more than 10s")
    assert dsp.token_requests == []


def test_a_token_request_does_not_use_the_grant_of_the_call_it_is_for() -> None:
    """Under the send permit of a create, the token request goes under a grant of its own on
    acme:auth, and the create is checked under the create's permit."""
    dsp, clock = TokenDsp(), FakeClock()
    limiter = MemoryLimiter(clock=clock, cold_start=False)
    provider = make_provider(
        with_changes(ACME, auth=LIMITED_AUTH),
        environ={"ACME_SECRET": SECRET},
        clock=clock,
        limiter=limiter,
    )
    permit = sendgate.SendPermit(clock.monotonic(), 0.005, clock.monotonic)
    with sendgate.bound(permit):
        assert isinstance(provider.submit(client_for(provider, dsp), task()), Accepted)
    assert permit.delay_s == 0.0
    assert len(dsp.token_requests) == 1
    assert limiter.acquire(provider.token_limits()).reason == "rate"


def test_a_shared_token_limit_also_draws_on_the_provider_limit() -> None:
    """shares_provider_limit puts the provider-wide limit on token requests too."""
    auth = {**LIMITED_AUTH, "shares_provider_limit": True}
    provider = make_provider(
        with_changes(ACME, auth=auth, rate_limit="10/s"), environ={"ACME_SECRET": SECRET}
    )
    assert [spec.key for spec in provider.token_limits()] == ["acme:auth", "acme"]


def test_an_expired_grant_sends_nothing_at_all() -> None:
    """A create whose grant is past its send window raises GrantExpired before any byte
    leaves: the DSP sees no request."""
    dsp = FakeDsp()
    provider = make_provider(ACME)
    permit = sendgate.SendPermit(0.0, 0.005, lambda: 0.006)
    with sendgate.bound(permit), pytest.raises(errors.GrantExpired):
        provider.submit(client_for(provider, dsp), task())
    assert dsp.requests == []


class LateTokenDsp(TokenDsp):
    """A token endpoint reached by a thread that lost the CPU for 200 ms between its send
    check and its write, as the gated transport admits and notes it (``MockTransport``
    has no gate of its own)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            sendgate.admit_current()
            self.clock.advance(0.2)
            permit = sendgate.current()
            assert permit is not None
            permit.written()
        return super().__call__(request)


def test_a_token_request_written_late_pushes_its_keys_back() -> None:
    """A token request is a request like any other at the provider: written 200 ms after
    its grant (past its send window), it moves the keys it was granted on after the write
    ("A write that ended late" in sendgate), here the provider-wide 50/s key it shares.
    Left at the grant's decision, the next request on that key went at once with the
    catch-up credit and the one after it one request early."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, cold_start=False)
    auth = {**LIMITED_AUTH, "shares_provider_limit": True}
    provider = make_provider(
        with_changes(ACME, auth=auth, rate_limit="50/s"),
        environ={"ACME_SECRET": SECRET},
        clock=clock,
        limiter=limiter,
    )
    dsp = LateTokenDsp(clock)
    assert isinstance(provider.submit(client_for(provider, dsp), task()), Accepted)
    assert len(dsp.token_requests) == 1
    shared = [spec for spec in provider.token_limits() if spec.key == "acme"]
    after = limiter.acquire(shared)
    assert after.reason == "rate"  # was: granted at once, the slot having passed 180 ms ago
