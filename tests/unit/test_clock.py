"""``clock.as_utc``: the same instant in UTC, or InvalidValue when UTC cannot hold it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice import errors
from sluice.clock import as_utc

offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


moments = st.one_of(
    st.datetimes(timezones=offsets),
    st.datetimes(max_value=datetime(1, 1, 2), timezones=offsets),
    st.datetimes(min_value=datetime(9999, 12, 30), timezones=offsets),
)


@given(moment=moments)
def test_as_utc_keeps_the_instant_or_refuses_with_invalid_value(moment: datetime) -> None:
    """Any aware datetime becomes the same instant in UTC; one whose UTC time falls before
    year 1 or after year 9999 raises InvalidValue naming it (it was an OverflowError)."""
    offset = moment.utcoffset()
    assert offset is not None
    naive = moment.replace(tzinfo=None)
    fits = (
        naive >= datetime.min + offset if offset > timedelta(0) else naive <= datetime.max + offset
    )

    if fits:
        converted = as_utc(moment)
        assert converted.tzinfo is UTC
        assert converted == moment
    else:
        with pytest.raises(errors.InvalidValue) as refused:
            as_utc(moment)
        assert (
            str(refused.value) == f"{moment.isoformat()} is out of range in UTC (years 1 to 9999)"
        )


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_as_utc_refuses_the_edges_of_the_range(text: str) -> None:
    with pytest.raises(errors.InvalidValue, match="out of range in UTC"):
        as_utc(datetime.fromisoformat(text))
