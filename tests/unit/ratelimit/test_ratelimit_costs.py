"""Costs and bursts: whatever the costs, bursts, times and state losses, no key ever holds
more than its limit in units (costs summed) in any sliding window.

The check is brute force: every window [t, t + W) that starts at a grant is summed.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice import errors
from sluice.clock import FakeClock
from sluice.engine.rates import lowered
from sluice.ratelimit import LimitSpec, MemoryLimiter, Rate, gcra, sendgate
from sluice.ratelimit.base import clock_us, monotonic_us

KEYS = ("dsp", "dsp:write", "dsp:adv=1")


def units_fit(grants: list[tuple[int, int]], limit: int, window_us: int) -> bool:
    """Brute force: every window [t, t + window_us) holds at most ``limit`` units."""
    ordered = sorted(grants)
    for start, _ in ordered:
        if sum(cost for at, cost in ordered if start <= at < start + window_us) > limit:
            return False
    return True


def record(
    granted: dict[str, list[tuple[int, int]]], request: list[LimitSpec], clock: FakeClock
) -> None:
    """A grant of ``request`` now: each key's units at this instant."""
    for spec in request:
        granted[spec.key].append((clock_us(clock), spec.cost))


def assert_each_key_fits(
    granted: dict[str, list[tuple[int, int]]], limits: dict[str, tuple[int, int, int]]
) -> None:
    for key, (limit, window_us, _) in limits.items():
        assert units_fit(granted[key], limit, window_us), (key, limits[key])


@st.composite
def key_limits(draw: st.DrawFn) -> tuple[int, int, int]:
    """(limit, window_us, burst) with 0 <= burst < limit."""
    limit = draw(st.integers(1, 12))
    window_us = draw(st.integers(1, 3_000_000))
    burst = draw(st.one_of(st.just(0), st.integers(0, limit - 1)))
    return limit, window_us, burst


steps = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(0, 2_000_000)),
        st.sets(st.sampled_from(KEYS), min_size=1),
        st.integers(1, 12),  # the cost asked for, cut to what each key's burst allows
        st.booleans(),  # the limiter loses its state before this step
    ),
    max_size=120,
)


def request_for(
    keys: set[str], cost: int, limits: dict[str, tuple[int, int, int]]
) -> list[LimitSpec]:
    # One cost per request, as the engine charges it; it must fit every key's burst room.
    fitting = min([cost] + [limits[key][2] + 1 for key in keys])
    return [
        LimitSpec(key, Rate(limits[key][0], limits[key][1] / 1e6), fitting, limits[key][2])
        for key in sorted(keys)
    ]


@settings(max_examples=300, deadline=None)
@given(
    limits=st.fixed_dictionaries({key: key_limits() for key in KEYS}),
    margin=st.one_of(st.just(0.0), st.just(0.015), st.floats(0.0, 0.1)),
    catch_up_us=st.one_of(st.just(0), st.integers(0, 50_000)),
    schedule=steps,
)
def test_units_never_exceed_the_limit_in_any_sliding_window(
    limits: dict[str, tuple[int, int, int]],
    margin: float,
    catch_up_us: int,
    schedule: list[tuple[int | None, set[str], int, bool]],
) -> None:
    """Random costs, bursts, times and state losses: each key's units stay within its limit
    in every window, and a refused request asked again after exactly retry_after_s is
    granted."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=margin, catch_up_s=catch_up_us / 1e6)
    granted: dict[str, list[tuple[int, int]]] = {key: [] for key in KEYS}
    for gap_us, keys, cost, lose_state in schedule:
        if lose_state:
            limiter = MemoryLimiter(clock=clock, margin=margin, catch_up_s=catch_up_us / 1e6)
        clock.advance((gap_us or 0) / 1e6)
        request = request_for(keys, cost, limits)
        grant = limiter.acquire(request)
        if not grant.granted:
            assert (grant.reason, grant.retry_after_s > 0) == ("rate", True)
            if gap_us is not None:
                continue
            clock.advance(grant.retry_after_s)
            grant = limiter.acquire(request)
            assert grant.granted, "waiting exactly retry_after_s must be enough"
        record(granted, request, clock)
    assert_each_key_fits(granted, limits)


@settings(max_examples=200, deadline=None)
@given(
    limits=st.fixed_dictionaries(
        {
            key: st.tuples(st.integers(1, 10), st.integers(10_000, 2_000_000)).flatmap(
                lambda lw: st.tuples(st.just(lw[0]), st.just(lw[1]), st.integers(0, lw[0] - 1))
            )
            for key in KEYS
        }
    ),
    margin=st.one_of(st.just(0.015), st.floats(0.001, 0.1)),
    catch_up_us=st.one_of(st.just(2_000), st.integers(0, 50_000)),
    schedule=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(0, 300_000)),
            st.sets(st.sampled_from(KEYS), min_size=1),
            st.integers(1, 10),
            st.floats(0.0, 1.0),  # lateness of the sender, in send windows (x2)
            st.floats(0.0, 1.0),  # network jitter, in units of N
        ),
        max_size=100,
    ),
)
def test_costs_keep_the_send_gate_guarantee(
    limits: dict[str, tuple[int, int, int]],
    margin: float,
    catch_up_us: int,
    schedule: list[tuple[int | None, set[str], int, float, float]],
) -> None:
    """With costs and bursts, senders late by up to twice their send window and network
    jitter up to N: the units *arriving* on each key never exceed its limit in any window."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=margin, catch_up_s=catch_up_us / 1e6)
    arrivals: dict[str, list[tuple[int, int]]] = {key: [] for key in KEYS}
    for gap_us, keys, cost, lateness, jitter in schedule:
        clock.advance((gap_us or 0) / 1e6)
        request = request_for(keys, cost, limits)
        grant = limiter.acquire(request)
        if not grant.granted and gap_us is None:
            clock.advance(grant.retry_after_s)
            grant = limiter.acquire(request)
        if not grant.granted:
            continue
        decided_us = monotonic_us(clock)
        window_us = gcra.to_us(grant.send_within_s)
        delay_us = round(lateness * 2 * window_us)
        permit = sendgate.SendPermit(
            decided_us / 1e6,
            grant.send_within_s,
            itertools.repeat((decided_us + delay_us) / 1e6).__next__,
        )
        try:
            permit.admit()
        except errors.GrantExpired:
            continue
        network = min(
            gcra.slack_us(s.rate, margin, s.burst)
            - gcra.credit_us(s.rate, margin, catch_up_us, s.burst)
            - sendgate.send_within_us(s, margin, catch_up_us)
            for s in request
        )
        arrived_us = decided_us + delay_us + round(jitter * network)
        for spec in request:
            arrivals[spec.key].append((arrived_us, spec.cost))
    for key, (limit, window_us, _) in limits.items():
        assert units_fit(arrivals[key], limit, window_us), (key, limits[key])


def test_a_heavy_request_after_a_paced_run_waits_for_its_last_unit() -> None:
    """10/s paced, then a cost-5 request: granting it at the next slot would put 14 units
    in one second; it waits until 5 slots' worth of room is there."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    light = LimitSpec("dsp", Rate(10, 1.0), cost=1, burst=4)
    heavy = LimitSpec("dsp", Rate(10, 1.0), cost=5, burst=4)
    sent: list[tuple[int, int]] = []
    for _ in range(9):
        grant = limiter.acquire([light])
        if not grant.granted:
            clock.advance(grant.retry_after_s)
            assert limiter.acquire([light]).granted
        sent.append((clock_us(clock), 1))
    refused = limiter.acquire([heavy])
    assert not refused.granted
    clock.advance(refused.retry_after_s)
    assert limiter.acquire([heavy]).granted
    sent.append((clock_us(clock), 5))
    assert units_fit(sent, 10, 1_000_000)


def test_a_stream_of_heavy_requests_uses_the_limit_less_its_burst_room() -> None:
    """150/min of writes, every request costing 5: 146 units a minute (97%), not half."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    heavy = LimitSpec("dsp:write", Rate(150, 60.0), cost=5, burst=4)
    start = clock_us(clock)
    units = 0
    while clock_us(clock) - start < 600_000_000:
        grant = limiter.acquire([heavy])
        if grant.granted:
            units += 5
        else:
            clock.advance(grant.retry_after_s)
    assert 1455 <= units <= 1465  # 146 per minute over ten minutes


@settings(max_examples=300, deadline=None)
@given(
    limits=st.fixed_dictionaries({key: key_limits() for key in KEYS}),
    margin=st.one_of(st.just(0.0), st.just(0.005), st.floats(0.0, 0.1)),
    catch_up_us=st.one_of(st.just(0), st.just(2_000), st.integers(0, 50_000)),
    schedule=st.lists(
        st.tuples(
            st.integers(0, 1_000_000),
            st.sets(st.sampled_from(KEYS), min_size=1),
            st.integers(1, 12),
            # a ceiling in force for this request: none, or the rate slowed n times,
            # written as the full count or as a single unit (a pin of 1 per window)
            st.one_of(st.none(), st.tuples(st.integers(2, 10), st.booleans())),
        ),
        max_size=120,
    ),
)
def test_a_rate_lowered_while_a_key_runs_keeps_it_within_its_configured_limit(
    limits: dict[str, tuple[int, int, int]],
    margin: float,
    catch_up_us: int,
    schedule: list[tuple[int, set[str], int, tuple[int, bool] | None]],
) -> None:
    """Pins, learned rates and a quota's pace lower a key's rate from one request to the
    next (``engine.rates.lowered``): whatever the order, no window of the configured limit
    holds more than its units. The room a request may take ahead of the key's TAT used to
    grow with the lowered spacing: 14 units of 10 in a second (a review, 2026-12-04)."""
    clock = FakeClock()
    limiter = MemoryLimiter(
        clock=clock, margin=margin, catch_up_s=catch_up_us / 1e6, cold_start=False
    )
    granted: dict[str, list[tuple[int, int]]] = {key: [] for key in KEYS}
    for gap_us, keys, cost, ceiling in schedule:
        clock.advance(gap_us / 1e6)
        request = request_for(keys, cost, limits)
        if ceiling is not None:
            slower, one = ceiling
            request = [
                lowered(
                    spec,
                    Rate(1, spec.rate.window_s * slower / spec.rate.limit)
                    if one
                    else Rate(spec.rate.limit, spec.rate.window_s * slower),
                )
                for spec in request
            ]
        if limiter.acquire(request).granted:
            record(granted, request, clock)
    assert_each_key_fits(granted, limits)


@settings(max_examples=300, deadline=None)
@given(
    first=key_limits(),
    second=key_limits(),
    margin=st.one_of(st.just(0.0), st.just(0.005), st.floats(0.0, 0.1)),
    catch_up_us=st.one_of(st.just(0), st.just(2_000), st.integers(0, 50_000)),
    schedule=st.lists(st.tuples(st.integers(0, 1_000_000), st.integers(1, 12)), max_size=80),
)
def test_a_key_listed_twice_stays_within_both_limits(
    first: tuple[int, int, int],
    second: tuple[int, int, int],
    margin: float,
    catch_up_us: int,
    schedule: list[tuple[int, int]],
) -> None:
    """Two rules on one key (same scope and window): every window of either length holds
    no more than either count. Keeping the spec with the larger spacing let ``5/s`` paced
    and ``10/s`` with burst 9 send 10 at once (a review, 2026-12-04)."""
    clock = FakeClock()
    limiter = MemoryLimiter(
        clock=clock, margin=margin, catch_up_s=catch_up_us / 1e6, cold_start=False
    )
    granted: list[tuple[int, int]] = []
    for gap_us, cost in schedule:
        clock.advance(gap_us / 1e6)
        fitting = min(cost, first[2] + 1, second[2] + 1)
        request = [
            LimitSpec("dsp", Rate(limit, window_us / 1e6), fitting, burst)
            for limit, window_us, burst in (first, second)
        ]
        try:
            grant = limiter.acquire(request)
        except errors.InvalidValue:
            continue  # the cost does not fit the combined count: a config error
        if grant.granted:
            granted.append((clock_us(clock), fitting))
    for limit, window_us, _ in (first, second):
        assert units_fit(granted, limit, window_us)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 1000),
    window_s=st.sampled_from([0.5, 1.0, 60.0, 3600.0]),
    burst_share=st.floats(0.0, 0.99),
    slower=st.floats(1.0, 1000.0),
    count=st.integers(1, 50),
)
def test_a_lowered_key_keeps_its_shape_at_the_ceilings_pace(
    limit: int, window_s: float, burst_share: float, slower: float, count: int
) -> None:
    """A ceiling ``slower`` times below the configured rate, whatever count it is written
    with (a pin of ``1/s``, a learned rate), spaces the key's grants exactly ``slower``
    times wider and keeps its count, cost and burst. Written with the ceiling's own count
    (raised to ``burst + 1``), a key with a burst ran up to ``burst + 1`` times slower
    than the ceiling (a review, 2026-12-05)."""
    burst = min(limit - 1, int(limit * burst_share))
    spec = LimitSpec("k", Rate(limit, window_s), 1, burst)
    ceiling = Rate(count, count * window_s * slower / limit)
    low = lowered(spec, ceiling)
    assert (low.rate.limit, low.cost, low.burst, low.held_rate) == (limit, 1, burst, spec.rate)
    spacing = spec.rate.window_s / (limit - burst)
    assert low.rate.window_s / (limit - burst) == pytest.approx(spacing * slower)


def test_a_pin_on_a_key_with_a_burst_runs_at_the_pins_pace() -> None:
    """A ``10/s`` key with burst 4 pinned to ``1/s``: a tenth of its grants over a minute
    of steady demand (six a second configured, 0.6 pinned), not a fiftieth."""
    for ceiling, expected in ((None, 6.0), (Rate(1, 1.0), 0.6)):
        clock = FakeClock()
        limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
        spec = LimitSpec("k", Rate(10, 1.0), 1, 4)
        if ceiling is not None:
            spec = lowered(spec, ceiling)
        granted = 0
        for _ in range(60_000):
            granted += limiter.acquire([spec]).granted
            clock.advance(0.001)
        assert granted / 60 == pytest.approx(expected, rel=0.05)
