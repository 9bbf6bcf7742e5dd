"""Rate-limit signals: 429 + Retry-After, reset headers, Meta's 400 codes, bare 429."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from sluice.clock import FakeClock
from sluice.providers.base import Failed, RateLimited, Transient

from .fakes import ACME, FakeDsp, client_for, make_provider, task, with_changes

NOW = datetime(2026, 1, 1, tzinfo=UTC)
META_SIGNAL: dict[str, Any] = {
    "codes": [17, 613, 80000, 80004],
    "code_field": "error.code",
    "usage_header": "X-Business-Use-Case-Usage",
    "usage_field": "estimated_time_to_regain_access",
    "usage_unit": "min",
}


def submit_answer(
    answer: httpx.Response, signal: Mapping[str, object] | None = None
) -> RateLimited | Transient | Failed | object:
    """Submit once against a DSP that gives ``answer``."""
    dsp = FakeDsp()
    dsp.script(answer)
    table = with_changes(ACME, rate_limit_signal=dict(signal)) if signal is not None else ACME
    provider = make_provider(table, clock=FakeClock(NOW))
    return provider.submit(client_for(provider, dsp), task())


def test_retry_after_as_http_date_is_seconds_from_now() -> None:
    """Retry-After may be an HTTP date; the pause is the time left until it."""
    decision = submit_answer(
        httpx.Response(429, headers={"Retry-After": "Thu, 01 Jan 2026 00:00:30 GMT"})
    )
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == 30.0


@pytest.mark.parametrize(
    ("reset", "kind", "expected"),
    [
        (f"{NOW.timestamp() + 12.5:.3f}", "auto", 12.5),
        (f"{NOW.timestamp() + 12.5:.3f}", "epoch", 12.5),
        (str(int((NOW.timestamp() + 8) * 1000)), "auto", 8.0),
        ("20", "auto", 20.0),
        ("20", "delta", 20.0),
    ],
)
def test_reset_header_epoch_or_delta(reset: str, kind: str, expected: float) -> None:
    """X-RateLimit-Reset is read as epoch seconds, epoch ms or a delta."""
    decision = submit_answer(
        httpx.Response(429, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}),
        {"reset_header": "X-RateLimit-Reset", "reset_kind": kind},
    )
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == pytest.approx(expected)
    assert "X-RateLimit-Reset" in decision.detail


@pytest.mark.parametrize(
    ("headers", "signal"),
    [
        ({"X-RateLimit-Reset": f"{NOW.timestamp() - 4:.0f}"}, {"reset_kind": "epoch"}),
        ({"X-RateLimit-Reset": str(int((NOW.timestamp() - 4) * 1000))}, {"reset_kind": "auto"}),
        ({"Retry-After": "Wed, 31 Dec 2025 23:59:56 GMT"}, {}),
    ],
)
def test_a_reset_seconds_in_the_past_on_a_refusal_is_no_time(
    headers: dict[str, str], signal: dict[str, str]
) -> None:
    """A DSP whose clock runs behind sends a reset already past while it still refuses. That
    paused 0 s and every call went again at once (59 calls in a 3 s refusal at a fake DSP 5 s
    behind, 20/s); it is the default pause now. A reset just past (the answer's own travel
    time) still reads as 0."""
    decision = submit_answer(
        httpx.Response(429, headers={"X-RateLimit-Remaining": "0", **headers}),
        {"reset_header": "X-RateLimit-Reset", "default_pause": "20s", **signal},
    )
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == 20.0
    just_past = submit_answer(
        httpx.Response(429, headers={"X-RateLimit-Reset": f"{NOW.timestamp() - 0.3:.3f}"}),
        {"reset_header": "X-RateLimit-Reset", "default_pause": "20s"},
    )
    assert isinstance(just_past, RateLimited)
    assert just_past.retry_after_s == 0.0


def test_meta_code_in_400_body_with_usage_header_is_rate_limited() -> None:
    """Meta's 400 + code 17 pauses for estimated_time_to_regain_access minutes."""
    usage = {"act_1": [{"type": "ads_management", "estimated_time_to_regain_access": 2}]}
    decision = submit_answer(
        httpx.Response(
            400,
            json={"error": {"message": "User request limit reached", "code": 17}},
            headers={"X-Business-Use-Case-Usage": json.dumps(usage)},
        ),
        META_SIGNAL,
    )
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == 120.0
    assert "error code 17" in decision.detail


def test_meta_fractional_minutes_are_honoured() -> None:
    """The sandbox sends fractions of a minute so 1 s windows stay fast."""
    usage = {"app": [{"estimated_time_to_regain_access": 0.0125}]}
    decision = submit_answer(
        httpx.Response(
            400,
            json={"error": {"code": 80004}},
            headers={"X-Business-Use-Case-Usage": json.dumps(usage)},
        ),
        META_SIGNAL,
    )
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == pytest.approx(0.75)


def test_meta_zero_minutes_while_refusing_is_not_a_time() -> None:
    """Meta counts whole minutes: under a minute left reads 0 while it still refuses. That
    paused 0 s, and every call went again at once, each refused and counted against the
    quota (59 calls in a 3 s refusal at a fake DSP, 20/s). It is the default pause now."""
    usage = {"act_1": [{"type": "ads_management", "estimated_time_to_regain_access": 0}]}
    decision = submit_answer(
        httpx.Response(
            400,
            json={"error": {"message": "User request limit reached", "code": 17}},
            headers={"X-Business-Use-Case-Usage": json.dumps(usage)},
        ),
        {**META_SIGNAL, "default_pause": "20s"},
    )
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == 20.0
    assert not decision.said_when


def test_meta_other_400_is_still_a_validation_failure() -> None:
    """A 400 whose code is not a rate-limit code is a normal failure."""
    decision = submit_answer(
        httpx.Response(400, json={"error": {"message": "Invalid parameter", "code": 100}}),
        META_SIGNAL,
    )
    assert decision == Failed("Invalid parameter")


def test_bare_429_uses_the_default_pause() -> None:
    """A 429 with no headers pauses for default_pause."""
    decision = submit_answer(httpx.Response(429), {"default_pause": "45s"})
    assert decision == RateLimited(45.0, "HTTP 429; pause 45s (default pause)", said_when=False)


def test_absurd_pause_is_capped_at_max_pause() -> None:
    """A reset header misread by a provider bug never pauses beyond max_pause."""
    decision = submit_answer(
        httpx.Response(429, headers={"Retry-After": "99999999"}), {"max_pause": "10min"}
    )
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == 600.0


def test_garbage_retry_after_falls_back_to_default_pause() -> None:
    """An unreadable Retry-After is ignored, not a crash."""
    decision = submit_answer(
        httpx.Response(429, headers={"Retry-After": "soon-ish"}), {"default_pause": "3s"}
    )
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == 3.0


def test_rate_limit_answers_are_rate_limited_for_polls_too() -> None:
    """Every request counts, polls included: a poll's 429 is a RateLimited decision."""
    dsp = FakeDsp()
    dsp.script(httpx.Response(429, headers={"Retry-After": "1"}))
    provider = make_provider(ACME)
    decisions = provider.poll(client_for(provider, dsp), [task(external_id="cam-1")])
    assert decisions[1] == RateLimited(1.0, "HTTP 429; pause 1s (Retry-After)")
