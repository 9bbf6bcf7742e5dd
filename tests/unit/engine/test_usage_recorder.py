"""UsageRecorder: each count lands in the second of the clock it was counted at."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.clock import FakeClock
from sluice.engine.usage import UsageRecorder
from sluice.store.usage import UsageStore


class ListStore:
    """Keeps what each flush added (a stand-in for the database table, unit tests only)."""

    def __init__(self, failures: int = 0) -> None:
        self.added: list[dict[tuple[str, str, datetime], int]] = []
        self.failures = failures

    def add(self, counts: Mapping[tuple[str, str, datetime], int]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database down")
        self.added.append(dict(counts))


START = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 2_500_000),  # microseconds to move the clock before counting
            st.sampled_from(["sandbox", "sandbox:write"]),
            st.sampled_from(["sent", "error"]),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=40,
    ),
    failures=st.integers(0, 2),
)
def test_counts_land_in_the_second_they_were_counted_in(
    steps: list[tuple[int, str, str, int]], failures: int
) -> None:
    """Whatever the microseconds, a count is added to its clock's whole second (the same as
    ``now().replace(microsecond=0)``), and flushes that failed are added by a later one."""
    clock = FakeClock(START + timedelta(microseconds=123_457))
    store = ListStore(failures)
    recorder = UsageRecorder(cast(UsageStore, store), clock=clock)
    expected: Counter[tuple[str, str, datetime]] = Counter()
    for micros, key, metric, n in steps:
        clock.advance(micros / 1_000_000)
        recorder.count(key, metric, n)
        expected[(key, metric, clock.now().replace(microsecond=0))] += n
    for _ in range(failures + 1):
        recorder.flush()
    got: Counter[tuple[str, str, Any]] = Counter()
    for added in store.added:
        got.update(added)
    assert got == expected
    assert all(at.tzinfo is not None for _, _, at in got)
