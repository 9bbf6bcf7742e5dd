"""Request lines, placeholders, dotted paths, ${VAR} expansion and durations."""

from __future__ import annotations

import pytest

from sluice.providers.templating import (
    MISSING,
    MissingValue,
    RequestLine,
    expand_env,
    get_path,
    with_path,
)
from sluice.units import format_duration, parse_duration


def test_ids_are_comma_joined_and_each_id_is_encoded() -> None:
    """{ids} keeps its separating commas but encodes commas inside an id."""
    line = RequestLine.parse("GET /v1/status?ids={ids}", {"ids"})
    assert line.render({}, ids=["a", "b,c", "d e"]) == "/v1/status?ids=a,b%2Cc,d%20e"


def test_placeholders_are_percent_encoded() -> None:
    """Ids and references cannot break out of their path segment or query value."""
    line = RequestLine.parse("GET /x/{external_id}?ref={client_ref}", {"external_id", "client_ref"})
    assert line.render({"external_id": "a/b", "client_ref": "r&x=1"}) == "/x/a%2Fb?ref=r%26x%3D1"


def test_nested_payload_placeholder() -> None:
    """{payload.a.b} reads a nested payload field; numbers render without '.0'."""
    line = RequestLine.parse("POST /adv/{payload.owner.id}/c", {"payload"})
    assert line.render({}, {"owner": {"id": 12.0}}) == "/adv/12/c"
    with pytest.raises(MissingValue):
        line.render({}, {"owner": {}})


def test_absolute_urls_are_allowed_for_other_hosts() -> None:
    """A token endpoint on another host is written as an absolute URL."""
    line = RequestLine.parse("post https://oauth.example.com/token", set())
    assert (line.method, line.target) == ("POST", "https://oauth.example.com/token")


def test_relative_target_must_start_with_a_slash() -> None:
    """'GET statuses' is refused with the reason."""
    with pytest.raises(ValueError, match="must start with '/'"):
        RequestLine.parse("GET statuses", set())


def test_dotted_paths_read_and_write_nested_values() -> None:
    """get_path walks objects and list indexes; with_path writes without touching the input."""
    data = {"data": {"items": [{"id": 7}]}}
    assert get_path(data, "data.items.0.id") == 7
    assert get_path(data, "data.nope") is MISSING
    original = {"a": {"b": 1}}
    assert with_path(original, "a.c", 2) == {"a": {"b": 1, "c": 2}}
    assert original == {"a": {"b": 1}}


def test_env_expansion_reports_substituted_values() -> None:
    """${VAR} expands; $$ is a literal dollar; the values used are returned for redaction."""
    assert expand_env("Bearer ${T} costs $$5", {"T": "abc"}) == ("Bearer abc costs $5", ["abc"])
    with pytest.raises(ValueError, match="environment variable NOPE is not set"):
        expand_env("${NOPE}", {})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1.5min", 90.0), ("1h", 3600.0), ("1d", 86400.0), (3, 3.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    """Durations take ms, s, min, h, d or a bare number of seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5m", "soon", "-1s", True])
def test_ambiguous_or_bad_durations_are_refused(text: object) -> None:
    """'5m' is refused (minutes or milliseconds?), like nonsense and negatives."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration_is_short_and_exact() -> None:
    """Deadline messages say '1h', '90s', '250ms'."""
    assert [format_duration(s) for s in (3600, 90, 0.25, 120)] == ["1h", "90s", "250ms", "2min"]
