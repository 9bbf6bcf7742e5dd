"""Send permits: with adversarial grant-to-send delays, network jitter and lost limiter
state, no key ever sees more than its limit arrive in any sliding window."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice import errors
from sluice.clock import FakeClock
from sluice.ratelimit import LimitSpec, MemoryLimiter, Rate, gcra, sendgate
from sluice.ratelimit.base import monotonic_us

KEYS = ("dsp", "dsp:write")

# One request: how long to wait before asking (None: ask greedily, waiting retry_after_s
# when refused), which keys it needs, how long its sender takes to reach the send check
# (as a fraction of twice the send window, so about half the requests come too late),
# where in the allowed network jitter it lands, and whether the limiter loses its state
# (a Redis flush, a process restart) just before it asks.
requests = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(0, 1_500_000)),
        st.sets(st.sampled_from(KEYS), min_size=1),
        st.floats(0.0, 2.0),
        st.floats(0.0, 1.0),
        st.booleans(),
    ),
    max_size=120,
)


def network_jitter_us(spec: LimitSpec, margin: float, catch_up_us: int) -> int:
    """N for one key: what the slack leaves after the catch-up and the send window."""
    slack = gcra.slack_us(spec.rate, margin)
    credit = gcra.credit_us(spec.rate, margin, catch_up_us)
    return slack - credit - sendgate.send_within_us(spec, margin, catch_up_us)


def max_in_window(arrivals_us: list[int], limit: int, window_us: int) -> bool:
    """Whether every ``limit + 1`` arrivals span at least ``window_us`` (half-open windows)."""
    ordered = sorted(arrivals_us)
    return all(
        last - first >= window_us for first, last in zip(ordered, ordered[limit:], strict=False)
    )


@settings(max_examples=300, deadline=None)
@given(
    rates=st.fixed_dictionaries(
        {key: st.tuples(st.integers(1, 8), st.integers(10_000, 2_000_000)) for key in KEYS}
    ),
    margin=st.one_of(st.just(0.015), st.floats(0.001, 0.1)),
    catch_up_us=st.one_of(st.just(2_000), st.integers(0, 50_000)),
    schedule=requests,
)
def test_no_window_holds_more_than_the_limit_at_the_provider(
    rates: dict[str, tuple[int, int]],
    margin: float,
    catch_up_us: int,
    schedule: list[tuple[int | None, set[str], float, float, bool]],
) -> None:
    """Whatever the grant times, send delays, state losses and network jitter within N, the
    arrivals on each key never exceed its limit in any window, and a request whose sender
    is within its send window is always let through."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=margin, catch_up_s=catch_up_us / 1e6)
    specs = {
        key: LimitSpec(key, Rate(limit, window / 1e6)) for key, (limit, window) in rates.items()
    }
    arrivals: dict[str, list[int]] = {key: [] for key in KEYS}
    for gap_us, keys, lateness, jitter, lose_state in schedule:
        if lose_state:
            limiter = MemoryLimiter(clock=clock, margin=margin, catch_up_s=catch_up_us / 1e6)
        clock.advance((gap_us or 0) / 1e6)
        request = [specs[key] for key in sorted(keys)]
        grant = limiter.acquire(request)
        if not grant.granted and gap_us is None:
            clock.advance(grant.retry_after_s)
            grant = limiter.acquire(request)
            assert grant.granted, "waiting exactly retry_after_s must be enough"
        if not grant.granted:
            continue
        # On a fake clock the question and the decision share one instant: the worst case,
        # since the whole send window is then spent after the decision.
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
            assert delay_us > window_us
            continue
        assert delay_us <= window_us
        network = min(network_jitter_us(spec, margin, catch_up_us) for spec in request)
        arrived_us = decided_us + delay_us + round(jitter * network)
        for key in keys:
            arrivals[key].append(arrived_us)
    for key, (limit, window_us) in rates.items():
        assert max_in_window(arrivals[key], limit, window_us), (key, limit, window_us)


def test_without_the_send_check_one_late_sender_puts_the_provider_over() -> None:
    """The failure the permit prevents: a grant sent 15 ms late next to punctual ones puts 51
    requests in one second of a 50/s limit."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=0.015, catch_up_s=0.002, cold_start=False)
    spec = [LimitSpec("dsp", Rate(50, 1.0))]
    sent_us: list[int] = []
    late_permit: sendgate.SendPermit | None = None
    for n in range(60):
        grant = limiter.acquire(spec)
        if not grant.granted:
            clock.advance(grant.retry_after_s)
            grant = limiter.acquire(spec)
        now_us = monotonic_us(clock)
        if n == 0:
            late_permit = sendgate.SendPermit(
                now_us / 1e6,
                grant.send_within_s,
                itertools.repeat((now_us + 15_000) / 1e6).__next__,
            )
            sent_us.append(now_us + 15_000)  # what an unchecked sender would do
        else:
            sent_us.append(now_us)
    assert not max_in_window(sent_us, 50, 1_000_000)
    assert late_permit is not None
    with pytest.raises(errors.GrantExpired, match="nothing was sent"):
        late_permit.admit()
    assert max_in_window(sent_us[1:], 50, 1_000_000)


def test_a_permit_lets_exactly_one_request_through() -> None:
    """A second request under one grant is refused: one grant, one request."""
    permit = sendgate.SendPermit(0.0, 0.01, lambda: 0.001)
    with sendgate.bound(permit):
        sendgate.admit_current()
        with pytest.raises(errors.GrantSpent):
            sendgate.admit_current()
    assert permit.delay_s == pytest.approx(0.001)


def test_send_window_with_the_default_margin() -> None:
    """At 50/s with margin 1.5% and 2 ms catch-up, a grant has 6.5 ms to be sent, leaving
    6.5 ms for the network."""
    spec = LimitSpec("dsp", Rate(50, 1.0))
    assert sendgate.send_within_us(spec, 0.015, 2_000) == 6_500
    assert network_jitter_us(spec, 0.015, 2_000) == 6_500
    assert sendgate.send_within_s([], 0.015, 2_000) == sendgate.UNBOUNDED
