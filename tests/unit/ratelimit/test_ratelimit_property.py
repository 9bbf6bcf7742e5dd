"""Property: whatever the request times and rates, no key ever exceeds its limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.clock import FakeClock
from sluice.ratelimit import LimitSpec, MemoryLimiter, Rate
from sluice.ratelimit.base import clock_us

KEYS = ("dsp", "dsp:write", "dsp:adv=1")

# (limit, window in whole microseconds): exact integers keep the window check exact.
limits_and_windows = st.tuples(st.integers(1, 8), st.integers(1, 3_000_000))
# A step waits a random time then asks, or (None) asks greedily: when refused it waits
# exactly retry_after_s and asks again, which must be granted. Greedy runs grant on the
# very microsecond the limiter allows, where an off-by-one in the bound would show.
steps = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(0, 2_000_000)),
        st.sets(st.sampled_from(KEYS), min_size=1),
    ),
    max_size=150,
)


def assert_sliding_window_holds(times_us: list[int], limit: int, window_us: int) -> None:
    """At most ``limit`` grants in every half-open window [t, t + window_us)."""
    for first, last in zip(times_us, times_us[limit:], strict=False):
        assert last - first >= window_us, (limit, window_us, first, last)


@settings(max_examples=300, deadline=None)
@given(
    rates=st.fixed_dictionaries({key: limits_and_windows for key in KEYS}),
    margin=st.one_of(st.just(0.0), st.just(0.01), st.floats(0.0, 0.1)),
    catch_up_us=st.one_of(st.just(0), st.integers(0, 50_000)),
    schedule=steps,
)
def test_grants_never_exceed_limit_in_any_sliding_window(
    rates: dict[str, tuple[int, int]],
    margin: float,
    catch_up_us: int,
    schedule: list[tuple[int | None, set[str]]],
) -> None:
    """For random request times, rates, key sets and catch-up credits, each key stays within
    its limit, and a refused request asked again after exactly its retry_after_s is granted."""
    clock = FakeClock()
    limiter = MemoryLimiter(
        clock=clock, margin=margin, catch_up_s=catch_up_us / 1e6, cold_start=False
    )
    specs = {
        key: LimitSpec(key, Rate(limit, window_us / 1e6))
        for key, (limit, window_us) in rates.items()
    }
    granted: dict[str, list[int]] = {key: [] for key in KEYS}
    for gap_us, keys in schedule:
        clock.advance((gap_us or 0) / 1e6)
        request = [specs[key] for key in sorted(keys)]
        grant = limiter.acquire(request)
        if not grant.granted:
            assert (grant.reason, grant.retry_after_s > 0) == ("rate", True)
            if gap_us is not None:
                continue
            clock.advance(grant.retry_after_s)
            grant = limiter.acquire(request)
            assert grant.granted, "waiting exactly retry_after_s must be enough"
        for key in keys:
            granted[key].append(clock_us(clock))
    for key, (limit, window_us) in rates.items():
        assert_sliding_window_holds(granted[key], limit, window_us)
