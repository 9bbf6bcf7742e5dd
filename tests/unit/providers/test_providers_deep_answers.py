"""Answers nested too deeply to parse (JSON bodies and usage headers ~3,000 levels deep) are
read like any other unreadable answer: never a RecursionError out of the provider."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from sluice.clock import FakeClock
from sluice.masking import Redactor
from sluice.providers import signals
from sluice.providers.answers import NOT_JSON, AnswerReader, json_body
from sluice.providers.base import Failed, RateLimited, Transient
from sluice.providers.config import ErrorsConfig, SignalConfig

from .fakes import ACME, FakeDsp, client_for, make_provider, task, with_changes

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DEEP = 3000
DEEP_JSON = '{"a": ' * DEEP + "1" + "}" * DEEP
META_SIGNAL: dict[str, Any] = {
    "codes": [17],
    "code_field": "error.code",
    "usage_header": "X-Business-Use-Case-Usage",
    "usage_field": "estimated_time_to_regain_access",
    "usage_unit": "min",
    "usage_percent_fields": ["call_count"],
    "default_pause": "7s",
}
AUTH = {
    "request": "POST /oauth/token",
    "body": {"client_id": "sluice"},
    "token_field": "access_token",
    "lifetime": "1h",
}


def deep_value(depth: int) -> Any:
    """A value ``depth`` objects and lists deep, built without a parser."""
    value: Any = {"retry_delay": "2s"}
    for level in range(depth):
        value = {"error": value} if level % 2 else [value]
    return value


def submit(*answers: httpx.Response, table: dict[str, Any] | None = None) -> object:
    """One submit against a DSP that answers ``answers`` in turn."""
    dsp = FakeDsp()
    dsp.script(*answers)
    provider = make_provider(table or ACME, clock=FakeClock(NOW))
    return provider.submit(client_for(provider, dsp), task())


def test_a_body_too_deep_to_parse_is_not_json() -> None:
    """json_body reads a body nested beyond the parser's reach as not JSON."""
    response = httpx.Response(200, content=DEEP_JSON.encode())

    assert json_body(response) is NOT_JSON


@pytest.mark.parametrize("status", [200, 201, 400, 500])
def test_a_submit_answered_with_a_body_too_deep_to_parse_is_decided(status: int) -> None:
    """A create answered with such a body is decided as a body that is not JSON: a 2xx
    without its id and a 5xx are transient, a 4xx fails quoting the start of the body."""
    decision = submit(httpx.Response(status, content=DEEP_JSON.encode()))

    if status == 400:
        assert isinstance(decision, Failed)
        assert decision.message.startswith('HTTP 400: {"a": {"a"')
    else:
        assert isinstance(decision, Transient), decision


def test_a_poll_answered_with_a_body_too_deep_to_parse_is_transient() -> None:
    """A status answer nested too deeply is an unreadable status: transient for that task."""
    dsp = FakeDsp()
    dsp.script(httpx.Response(200, content=DEEP_JSON.encode()))
    provider = make_provider(ACME, clock=FakeClock(NOW))

    decisions = provider.poll(client_for(provider, dsp), [task(external_id="cam-1")])

    assert isinstance(decisions[1], Transient), decisions


def test_a_429_whose_usage_header_is_too_deep_to_parse_pauses_for_the_default() -> None:
    """Meta's usage header nested too deeply is ignored like one that is not JSON: the pause
    is the default one, and the limit readings skip it."""
    decision = submit(
        httpx.Response(
            429,
            json={"error": {"code": 17}},
            headers={"X-Business-Use-Case-Usage": DEEP_JSON},
        ),
        table=with_changes(ACME, rate_limit_signal=META_SIGNAL),
    )

    assert decision == RateLimited(7.0, "HTTP 429; pause 7s (default pause)", said_when=False)


def test_limit_readings_skip_a_usage_header_too_deep_to_parse_with_a_warning() -> None:
    """read_limits drops such a usage header, warning once that it cannot be read."""
    config = SignalConfig(
        usage_header="X-App-Usage", usage_percent_fields=("call_count",), retry_after_header=None
    )
    warnings: list[tuple[str, str]] = []

    found = signals.read_limits(
        httpx.Headers({"X-App-Usage": DEEP_JSON}),
        config,
        NOW.timestamp(),
        lambda header, reason: warnings.append((header, reason)),
    )

    assert found == []
    assert warnings == [("X-App-Usage", "not JSON (nested too deeply)")]
    assert signals.usage_seconds(DEEP_JSON, "estimated_time_to_regain_access", 60.0) is None


def test_readers_of_a_parsed_body_follow_any_depth() -> None:
    """A body the parser could follow is walked without recursion limits: a retry delay
    and a field path nested deeper than Python's stack are found or ignored, never raised."""
    config = SignalConfig(retry_delay_field="retry_delay", retry_after_header=None)
    body = deep_value(5000)

    pause, source = signals.pause_for(httpx.Headers(), config, NOW.timestamp(), body)
    reader = AnswerReader(
        ErrorsConfig(message_fields=("message",), field_path_fields=("path",)), Redactor()
    )
    field_path: Any = "budget"
    for _ in range(5000):
        field_path = [field_path]
    message = reader.message(httpx.Response(400), {"message": "bad value", "path": field_path})

    assert (pause, source) == (2.0, "retry_delay")
    assert message == "bad value"


@pytest.mark.parametrize("status", [200, 400])
def test_a_token_answer_too_deep_to_parse_is_transient(status: int) -> None:
    """The token endpoint answering such a body is a token problem (transient), named as
    when its answer is not JSON."""
    decision = submit(
        httpx.Response(status, content=DEEP_JSON.encode()),
        table=with_changes(ACME, auth=AUTH),
    )

    expected = (
        "token answer from acme has no access_token"
        if status == 200
        else "token request to acme answered HTTP 400"
    )
    assert decision == Transient(expected)


def test_a_usage_header_at_a_readable_depth_still_counts() -> None:
    """A usage header nested a few levels (Meta's shape) is read as before."""
    usage = {"act_1": [{"call_count": 95, "estimated_time_to_regain_access": 2}]}
    config = SignalConfig(usage_header="X-App-Usage", usage_percent_fields=("call_count",))

    found = signals.read_limits(
        httpx.Headers({"X-App-Usage": json.dumps(usage)}), config, NOW.timestamp()
    )

    assert [reading.used_fraction for reading in found] == [0.95]
    assert found[0].reset_s == 120.0
