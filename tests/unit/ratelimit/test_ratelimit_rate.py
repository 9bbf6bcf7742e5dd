"""Rate parsing and the limiter's value types."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice import errors
from sluice.ratelimit import Grant, InFlight, LimitSpec, Rate, parse_rate
from sluice.units import MAX_DURATION_S, UNIT_S


@pytest.mark.parametrize(
    ("text", "limit", "window_s"),
    [
        ("10/s", 10, 1.0),
        ("40/min", 40, 60.0),
        ("300/min", 300, 60.0),
        ("1000/h", 1000, 3600.0),
        ("5/2s", 5, 2.0),
        ("3/1.5s", 3, 1.5),
        (" 7 / 10 minutes ", 7, 600.0),
        ("100000/d", 100000, 86400.0),
        ("10/SEC", 10, 1.0),
    ],
)
def test_parse_rate_accepts_documented_forms(text: str, limit: int, window_s: float) -> None:
    """Every documented rate form parses to its count and window in seconds."""
    assert parse_rate(text) == Rate(limit=limit, window_s=window_s)


@pytest.mark.parametrize(
    "text", ["", "10", "10/", "/s", "ten/s", "10/m", "10/fortnight", "-1/s", "0/s", "5/0s"]
)
def test_parse_rate_rejects_bad_text_naming_it_and_the_forms(text: str) -> None:
    """A bad rate raises ValueError quoting the text and listing the accepted forms."""
    with pytest.raises(ValueError, match="invalid rate") as info:
        parse_rate(text)
    assert repr(text) in str(info.value)
    assert "'10/s'" in str(info.value)
    assert "min" in str(info.value)


def test_rate_interval_is_window_over_limit() -> None:
    """interval_s spreads the window evenly across the limit."""
    assert parse_rate("40/min").interval_s == pytest.approx(1.5)
    assert parse_rate("5/2s").interval_s == pytest.approx(0.4)


def test_rate_str_parses_back_to_itself() -> None:
    """A Rate's text form is the one configuration writes, and parse_rate reads it back."""
    for text in ["10/s", "40/min", "1000/h", "3/d", "5/2s", "3/1.5s", "7/90s", "2/500ms"]:
        rate = parse_rate(text)
        assert str(rate) == text
        assert parse_rate(str(rate)) == rate


@given(
    limit=st.integers(min_value=1, max_value=10**6),
    count=st.integers(min_value=1, max_value=10**4),
    unit=st.sampled_from(sorted(UNIT_S)),
)
def test_any_rate_str_parses_back(limit: int, count: int, unit: str) -> None:
    """Whatever its window, a Rate's text parses back to the same limit and window (to the
    precision format_duration writes, as for durations in test_units)."""
    rate = Rate(limit, count * UNIT_S[unit])
    if rate.window_s > MAX_DURATION_S:
        with pytest.raises(errors.InvalidValue, match="at most 3650d"):
            parse_rate(str(rate))
        return
    back = parse_rate(str(rate))
    assert (back.limit, back.window_s) == (rate.limit, pytest.approx(rate.window_s))


@pytest.mark.parametrize(
    ("limit", "window_s"),
    [(0, 1.0), (-3, 1.0), (1, 0.0), (1, -1.0), (1, float("inf")), (True, 1.0)],
)
def test_rate_refuses_nonsense_values(limit: int, window_s: float) -> None:
    """A Rate with a non-positive limit or window cannot exist."""
    with pytest.raises(ValueError, match="rate"):
        Rate(limit=limit, window_s=window_s)


def test_limit_spec_and_in_flight_refuse_empty_or_nonsense() -> None:
    """Empty keys, caps below one and non-positive lease TTLs are refused up front."""
    with pytest.raises(ValueError, match="key"):
        LimitSpec("", parse_rate("1/s"))
    with pytest.raises(ValueError, match="max_in_flight"):
        InFlight("dsp", 0, 10.0)
    with pytest.raises(ValueError, match="ttl_s"):
        InFlight("dsp", 1, 0.0)


def test_grant_refuses_unknown_reason() -> None:
    """A Grant's reason is one of the documented values."""
    with pytest.raises(ValueError, match="unknown grant reason 'busy'"):
        Grant(False, 1.0, "busy")
