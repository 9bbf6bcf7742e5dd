"""One table of time units: durations, rate windows and usage headers read units alike."""

from __future__ import annotations

import pytest

from sluice.ratelimit import parse_rate
from sluice.units import UNIT_S, format_duration, parse_duration


@pytest.mark.parametrize("unit", sorted(UNIT_S))
def test_durations_and_rate_windows_share_every_unit(unit: str) -> None:
    """Every unit of the table means the same seconds in a duration and in a rate's window."""
    assert parse_duration(f"2{unit}") == pytest.approx(2 * UNIT_S[unit])
    assert parse_rate(f"3/2{unit}").window_s == pytest.approx(2 * UNIT_S[unit])


@pytest.mark.parametrize("text", ["5m", "5/m"])
def test_m_alone_is_refused_everywhere(text: str) -> None:
    """'m' could be minutes or milliseconds: neither a duration nor a rate accepts it."""
    parse = parse_rate if "/" in text else parse_duration
    with pytest.raises(ValueError, match=r"duration|rate"):
        parse(text)


@pytest.mark.parametrize("seconds", [0.25, 1.0, 90.0, 120.0, 3600.0, 86400.0, 1.5])
def test_formatted_durations_parse_back(seconds: float) -> None:
    """format_duration writes text that parse_duration reads back to the same seconds."""
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["3651d", "99999999d", 1e300, "315576000000s"])
def test_a_duration_longer_than_ten_years_is_refused(text: str | float) -> None:
    """Times are computed as now +/- a duration; past ten years it is a typo, and past
    about 8,000 years it overflowed a date (a traceback from `sluice db prune`)."""
    with pytest.raises(ValueError, match=r"must be at most 3650d \(ten years\)"):
        parse_duration(text)
    assert parse_duration("3650d") == 3650 * 86400
