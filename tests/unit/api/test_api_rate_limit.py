"""The API's own limit per key (SLUICE_API_RATE_LIMIT), on Sluice's limiter: a key over its
rate gets 429 with Retry-After and nothing is written; other keys and later requests pass."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from sluice import errors
from sluice.clock import FakeClock
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.memory import MemoryLimiter
from sluice.ratelimit.rate import Grant

if TYPE_CHECKING:
    from conftest import SecuredApi

Make = Callable[..., "SecuredApi"]


def limited(make_secured: Make, rate: str, **fields: object) -> SecuredApi:
    """An API limited to ``rate`` per key, its limiter on the API's fake clock."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock, margin=0.0, cold_start=False)  # as the API builds its own
    api = make_secured(api_rate_limit=rate, api_limiter=limiter, **fields)
    api.limiter_clock = clock  # type: ignore[attr-defined]
    return api


def test_a_key_over_its_rate_gets_429_with_retry_after(make_secured: Make) -> None:
    """At 2/min, a key's third request in a minute is 429 with Retry-After in whole seconds,
    writes nothing, and leaves other keys alone; after the wait it passes again."""
    api = limited(make_secured, "2/min")
    submitter = api.auth("submitter")
    assert api.client.get("/api/tasks", headers=submitter).status_code == 200
    api.limiter_clock.advance(30)  # type: ignore[attr-defined]
    assert api.client.get("/api/tasks", headers=submitter).status_code == 200
    before = api.written()

    refused = api.client.post("/api/tasks", json=api.campaign(), headers=submitter)

    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert "retry in 30 s" in refused.json()["detail"]
    assert api.written() == before
    assert api.client.get("/api/tasks", headers=api.auth("viewer")).status_code == 200
    api.limiter_clock.advance(30)  # type: ignore[attr-defined]
    created = api.client.post("/api/tasks", json=api.campaign(), headers=submitter)
    assert created.status_code == 201


def test_refusals_for_role_spend_nothing_of_the_limit(make_secured: Make) -> None:
    """403s do not count against a key's rate: after three of them at 1/min, the key's
    first allowed request still passes."""
    api = limited(make_secured, "1/min")

    denied = [
        api.client.post("/api/tasks", json=api.campaign(), headers=api.auth("viewer"))
        for _ in range(3)
    ]

    assert [r.status_code for r in denied] == [403, 403, 403]
    assert api.client.get("/api/tasks", headers=api.auth("viewer")).status_code == 200


def test_retry_after_is_at_least_one_second(make_secured: Make) -> None:
    """At 20/s the wait is 50 ms, announced as Retry-After: 1 (whole seconds)."""
    api = limited(make_secured, "20/s")
    viewer = api.auth("viewer")

    assert api.client.get("/api/tasks", headers=viewer).status_code == 200
    second = api.client.get("/api/tasks", headers=viewer)

    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"


def test_the_open_loopback_mode_is_not_limited(make_secured: Make) -> None:
    """Requests without a key on the open loopback mode are never refused for rate."""
    api = limited(make_secured, "1/min", auth="auto", host="127.0.0.1")

    statuses = {api.client.get("/api/tasks").status_code for _ in range(5)}

    assert statuses == {200}


def test_a_bad_rate_is_a_config_error(make_secured: Make) -> None:
    """SLUICE_API_RATE_LIMIT that is not a rate refuses to build the API, naming the
    setting and the form expected, not the value given (it may be a misplaced secret)."""
    with pytest.raises(errors.ConfigError, match="api_rate_limit: must be a rate") as info:
        make_secured(api_rate_limit="hunter2-fast")
    assert "hunter2" not in str(info.value)


def test_an_unreachable_limiter_lets_requests_through(
    make_secured: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """With the limiter's Redis down, keyed requests still pass, and the lapse is logged."""
    from sluice.ratelimit.redis import RedisLimiter

    down = RedisLimiter.from_url("redis://127.0.0.1:1/0", namespace="sluice:test:down")
    api = make_secured(api_rate_limit="1/min", api_limiter=down)

    statuses = [
        api.client.get("/api/tasks", headers=api.auth("viewer")).status_code for _ in range(2)
    ]

    assert statuses == [200, 200]
    assert "api.rate_limit_unavailable" in caplog.text


def test_a_freshly_started_api_serves_each_keys_first_request(make_secured: Make) -> None:
    """The API's own limiter starts warm: right after start, a key's first request passes
    (no cold-start hold: the limit guards the database, not a provider); its second, within
    the minute of a 1/min limit, is 429."""
    api = make_secured(api_rate_limit="1/min")  # the limiter create_app builds itself

    first = api.client.get("/api/tasks", headers=api.auth("viewer"))
    second = api.client.get("/api/tasks", headers=api.auth("viewer"))

    assert first.status_code == 200
    assert second.status_code == 429


def test_a_burst_lets_that_many_more_through_at_once_then_paces(make_secured: Make) -> None:
    """At 6/min with api_rate_burst = 2: three requests at once pass, the fourth waits for
    the pace (6 - 2 = 4 a minute: 15 s); never more than 6 in a minute."""
    api = limited(make_secured, "6/min", api_rate_burst=2)
    viewer = api.auth("viewer")
    assert [api.client.get("/api/tasks", headers=viewer).status_code for _ in range(4)] == [
        200,
        200,
        200,
        429,
    ]
    api.limiter_clock.advance(15)  # type: ignore[attr-defined]
    assert api.client.get("/api/tasks", headers=viewer).status_code == 200


def test_a_burst_at_or_above_the_count_is_refused(make_secured: Make) -> None:
    with pytest.raises(errors.ConfigError, match="api_rate_burst: must be below"):
        limited(make_secured, "2/min", api_rate_burst=2)


def test_console_pages_count_against_the_keys_rate(make_secured: Make) -> None:
    """A console session spends its key's rate like the API: at 2/min, the third page in
    a minute is 429 with Retry-After, and so is the key's next API request (one bucket);
    the console's own files are not counted. The console was a way around the limit:
    with SLUICE_API_RATE_LIMIT=10/s a signed-in session read /ui/tasks 23.8 times a second
    while the same key's /api/tasks got 429s."""
    api = limited(make_secured, "2/min")
    form = api.client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    signed = api.client.post(
        "/ui/login",
        data={"api_key": api.tokens["submitter"], "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert signed.status_code == 303  # the sign-in is the first request of the minute

    api.limiter_clock.advance(30)  # type: ignore[attr-defined]
    assert api.client.get("/ui/tasks").status_code == 200
    refused = api.client.get("/ui/tasks")
    by_api = api.client.get("/api/tasks", headers=api.auth("submitter"))

    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert "retry in 30 s" in refused.text
    assert "Content-Security-Policy" in refused.headers
    assert by_api.status_code == 429
    assert api.client.get("/ui/static/console.css").status_code == 200
    api.limiter_clock.advance(30)  # type: ignore[attr-defined]
    assert api.client.get("/ui/tasks").status_code == 200


def test_console_sign_ins_count_against_the_keys_rate(make_secured: Make) -> None:
    """Each sign-in writes a session and an audit record: at 2/min the third sign-in in a
    minute is 429 and writes nothing (they were unmetered: a key could add sessions and
    audit records as fast as the server answered)."""
    api = limited(make_secured, "2/min")

    def sign_in() -> int:
        api.client.cookies.clear()
        form = api.client.get("/ui/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        answer = api.client.post(
            "/ui/login",
            data={"api_key": api.tokens["viewer"], "csrf_token": token.group(1)},
            follow_redirects=False,
        )
        return answer.status_code

    assert sign_in() == 303
    api.limiter_clock.advance(30)  # type: ignore[attr-defined]
    assert sign_in() == 303
    before = api.written()

    assert sign_in() == 429
    assert api.written() == before


class FlakyLimiter:
    """A limiter whose store is down (each ask fails, as a Redis behind a partition does
    after its 2 s socket timeout) until ``up`` is set; then it grants every ask."""

    def __init__(self) -> None:
        self.asked = 0
        self.up = False

    def acquire(self, limits: object, **_: object) -> Grant:
        self.asked += 1
        if not self.up:
            raise errors.LimiterError("redis limiter failed: Timeout reading from the server")
        return Grant(granted=True, retry_after_s=0.0)


def test_an_unreachable_limiter_is_asked_once_per_retry_interval_not_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the limiter's store failed, requests go through without asking it until
    LIMITER_RETRY_S has passed, when one request asks again; once it answers, every
    request is metered again. Before, each request asked it: behind a partition each paid
    the 2 s socket timeout (measured: every request of the API 2.1 s, so 40 threads served
    at most ~19 requests a second) and logged a warning of its own."""
    from sluice.api.auth import LIMITER_RETRY_S, Authenticator
    from sluice.domain import ApiKey
    from sluice.ratelimit.rate import Rate
    from sluice.settings import Settings
    from sluice.store.keys import KeyStore

    caplog.set_level(logging.INFO, logger="sluice.api.auth")
    now = [100.0]
    limiter = FlakyLimiter()
    auth = Authenticator(
        Settings(database_url="sqlite://"),
        cast(KeyStore, None),
        cast(Limiter, limiter),
        Rate(20, 1.0),
        monotonic=lambda: now[0],
    )
    key = cast(ApiKey, SimpleNamespace(id=7))

    assert [auth.over_limit(key) for _ in range(50)] == [None] * 50
    assert limiter.asked == 1
    now[0] += LIMITER_RETRY_S - 0.1
    assert auth.over_limit(key) is None
    assert limiter.asked == 1
    now[0] += 0.1
    assert [auth.over_limit(key) for _ in range(50)] == [None] * 50
    assert limiter.asked == 2
    assert caplog.text.count("api.rate_limit_unavailable") == 2

    limiter.up = True
    now[0] += LIMITER_RETRY_S
    for _ in range(5):
        auth.over_limit(key)
    assert limiter.asked == 7
    assert caplog.text.count("api.rate_limit_recovered") == 1
