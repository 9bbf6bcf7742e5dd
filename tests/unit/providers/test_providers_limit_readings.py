"""What answers say of the limit: X-RateLimit-*, IETF RateLimit, Meta usage, Google retry_delay;
bad values ignored with one warning, and the observer the adaptive limiter hangs on a provider."""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.clock import FakeClock
from sluice.providers import signals
from sluice.providers.base import LimitObservation, RateLimited
from sluice.providers.config import SignalConfig

from .fakes import ACME, FakeDsp, client_for, make_provider, task, with_changes

NOW_S = 1_767_225_600.0
X_RATELIMIT = SignalConfig(
    limit_header="X-RateLimit-Limit",
    remaining_header="X-RateLimit-Remaining",
    reset_header="X-RateLimit-Reset",
    reset_kind="epoch",
    ietf_headers=True,
)
META = SignalConfig(
    usage_header="X-Business-Use-Case-Usage",
    usage_percent_fields=("call_count", "total_time", "total_cputime"),
)


def read(headers: dict[str, str], config: SignalConfig = X_RATELIMIT) -> list[Any]:
    warnings: list[tuple[str, str]] = []
    found = signals.read_limits(
        httpx.Headers(headers), config, NOW_S, lambda h, r: warnings.append((h, r))
    )
    return [found, warnings]


def test_x_ratelimit_and_ietf_fields_as_the_sandbox_sends_them() -> None:
    found, warnings = read(
        {
            "X-RateLimit-Limit": "40",
            "X-RateLimit-Remaining": "12",
            "X-RateLimit-Reset": f"{NOW_S + 1.25:.3f}",
            "RateLimit-Policy": "40;w=1",
            "RateLimit": "limit=40, remaining=12, reset=1",
        }
    )
    assert warnings == []
    assert [(r.source, r.limit, r.remaining, r.reset_s, r.window_s) for r in found] == [
        ("X-RateLimit-Remaining", 40, 12, pytest.approx(1.25), None),
        ("RateLimit", 40, 12, 1, 1),
    ]


def test_ietf_structured_fields_pair_each_policy_with_its_limit() -> None:
    found, _ = read(
        {
            "RateLimit-Policy": '"burst";q=100;w=60, "day";q=1000;w=86400',
            "RateLimit": '"burst";r=5;t=30',
        },
        SignalConfig(ietf_headers=True),
    )
    assert [(r.limit, r.window_s, r.remaining, r.reset_s) for r in found] == [
        (100, 60, 5, 30),
        (1000, 86400, None, None),
    ]


def test_meta_usage_percentages_and_time_to_regain_access() -> None:
    usage = {
        "123": [
            {
                "type": "ads_management",
                "call_count": 95,
                "total_time": 20,
                "total_cputime": 10,
                "estimated_time_to_regain_access": 2,
            }
        ]
    }
    found, _ = read({"X-Business-Use-Case-Usage": json.dumps(usage)}, META)
    assert len(found) == 1
    assert found[0].used_fraction == pytest.approx(0.95)
    assert found[0].reset_s == pytest.approx(120)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.250s", 1.25),
        ("30s", 30.0),
        (7, 7.0),
        ({"seconds": 1, "nanos": 500000000}, 1.5),
        ("soon", None),
        (-3, None),
        ({"seconds": "x"}, None),
        (True, None),
        (1e12, None),
    ],
)
def test_google_retry_delay_forms(value: object, expected: float | None) -> None:
    assert signals.duration_seconds(value) == expected


def test_a_retry_delay_in_the_error_body_sets_the_pause() -> None:
    config = SignalConfig(retry_delay_field="retry_delay", retry_after_header=None)
    body = {"error": {"details": [{"quota_error_details": {"retry_delay": "2.5s"}}]}}
    pause, source = signals.pause_for(httpx.Headers(), config, NOW_S, body)
    assert (pause, source) == (2.5, "retry_delay")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-RateLimit-Limit": "-5"},
        {"X-RateLimit-Limit": "NaN"},
        {"X-RateLimit-Limit": "inf"},
        {"X-RateLimit-Limit": "1000000000000"},
        {"X-RateLimit-Remaining": "lots"},
        {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": f"{NOW_S + 365 * 86400:.0f}"},
        {"RateLimit": "limit=1e12, remaining=3, reset=1"},
        {"RateLimit": "nonsense"},
        {"RateLimit-Policy": "x;w=-1"},
    ],
)
def test_bad_values_are_ignored_with_a_warning(headers: dict[str, str]) -> None:
    found, warnings = read(headers)
    assert warnings
    for reading in found:
        assert reading.limit is None or 0 <= reading.limit <= signals.MAX_COUNT
        assert reading.reset_s is None or reading.reset_s <= signals.MAX_RESET_S


header_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["NaN", "-1", "1e12", "inf", "", " ", "12", "0", "3.5", "1e400"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@given(
    limit=header_text,
    remaining=header_text,
    reset=header_text,
    ietf=header_text,
    policy=header_text,
    usage=header_text,
)
@settings(max_examples=300)
def test_no_header_text_crashes_the_readers_or_yields_unbounded_numbers(
    limit: str, remaining: str, reset: str, ietf: str, policy: str, usage: str
) -> None:
    config = X_RATELIMIT.model_copy(
        update={"usage_header": "X-App-Usage", "usage_percent_fields": ("call_count",)}
    )
    raw = {
        "X-RateLimit-Limit": limit,
        "X-RateLimit-Remaining": remaining,
        "X-RateLimit-Reset": reset,
        "RateLimit": ietf,
        "RateLimit-Policy": policy,
        "X-App-Usage": usage,
    }
    headers = httpx.Headers({k: v for k, v in raw.items() if v.isprintable() and v.isascii()})
    for reading in signals.read_limits(headers, config, NOW_S):
        for value in (reading.limit, reading.remaining):
            assert value is None or (math.isfinite(value) and 0 <= value <= signals.MAX_COUNT)
        assert reading.reset_s is None or 0 <= reading.reset_s <= signals.MAX_RESET_S
        assert reading.window_s is None or 0 < reading.window_s <= signals.MAX_RESET_S
        assert reading.used_fraction is None or 0 <= reading.used_fraction <= 100


# --- the observer on a provider ------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[LimitObservation] = []

    def observe(self, observation: LimitObservation) -> None:
        self.seen.append(observation)


def adaptive_provider(signal: dict[str, Any] | None = None) -> Any:
    table = with_changes(ACME, adaptive=True)
    if signal is not None:
        table = with_changes(table, rate_limit_signal=signal)
    return make_provider(table, clock=FakeClock(datetime(2026, 1, 1, tzinfo=UTC)))


def test_a_bare_429_on_an_adaptive_provider_pauses_briefly_and_is_observed() -> None:
    provider = adaptive_provider()
    recorder = Recorder()
    provider.watch_limits(recorder)
    dsp = FakeDsp()
    dsp.script(httpx.Response(429))
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, RateLimited)
    assert decision.retry_after_s == pytest.approx(0.1)
    assert "adaptive" in decision.detail
    assert len(recorder.seen) == 1
    seen = recorder.seen[0]
    assert seen.refused
    assert not seen.said_when
    assert [spec.key for spec in seen.limits] == [
        spec.key for spec in provider.limits_for("write", task().payload)
    ]


def test_successful_answers_with_limit_headers_are_observed_and_bad_ones_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = adaptive_provider({"limit_header": "X-RateLimit-Limit"})
    recorder = Recorder()
    provider.watch_limits(recorder)
    dsp = FakeDsp()
    for value in ("40", "-1", "-2"):
        dsp.script(httpx.Response(201, json={"id": "x"}, headers={"X-RateLimit-Limit": value}))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            provider.submit(client_for(provider, dsp), task())
    assert [r.readings[0].limit for r in recorder.seen] == [40]
    assert sum("provider.bad_limit_header" in r.getMessage() for r in caplog.records) == 1


def test_an_observer_that_raises_never_breaks_a_request() -> None:
    provider = adaptive_provider()

    class Broken:
        def observe(self, observation: LimitObservation) -> None:
            raise RuntimeError("boom")

    provider.watch_limits(Broken())
    dsp = FakeDsp()
    dsp.script(httpx.Response(429))
    assert isinstance(provider.submit(client_for(provider, dsp), task()), RateLimited)


def test_adaptive_config_errors_name_the_key() -> None:
    from sluice import errors
    from sluice.providers.config import parse_provider

    table = with_changes(ACME, adaptive={"floor": 3, "decrease": 1.5})
    with pytest.raises(errors.InvalidValue) as info:
        parse_provider("acme", table, "sluice.toml", {})
    text = str(info.value)
    assert "sluice.toml: providers.acme.adaptive.floor: must be a fraction" in text
    assert "sluice.toml: providers.acme.adaptive.decrease: must be < 1" in text
    with pytest.raises(errors.InvalidValue, match=r"adaptive\.speed: unknown key"):
        parse_provider("acme", with_changes(ACME, adaptive={"speed": 2}), "sluice.toml", {})
    parsed = parse_provider("acme", with_changes(ACME, adaptive={"floor": "2/s"}), "f", {})
    assert parsed.adaptive.enabled
    assert parsed.adaptive.floor_per_s(50.0) == 2.0
