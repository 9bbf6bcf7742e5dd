"""Window holds: whatever happens between a request's send and its answer, no window of the
provider's clock sees more than the limit arrive (``sluice/ratelimit/holds.py``).

The property test runs the real ``holds.acquire``/``holds.finish`` against a
``MemoryLimiter`` on a ``FakeClock`` in an event simulation, and judges the arrivals with a
brute-force sliding window: each request is stamped anywhere between its send and its
answer (a provider that stalls and then stamps a queue at once, a network that delays some
requests by seconds), some senders die without finishing, some grants expire unsent.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.clock import FakeClock
from sluice.engine.rates import lowered
from sluice.ratelimit import LimitSpec, MemoryLimiter, Rate, holds
from sluice.ratelimit.base import InFlight, monotonic_us
from sluice.ratelimit.rate import Grant

TIMEOUT_S = 1.0
US = 1_000_000


def spans_at_least(arrivals_us: list[int], limit: int, window_us: int) -> bool:
    """Whether every ``limit + 1`` arrivals span at least ``window_us`` (brute force)."""
    ordered = sorted(arrivals_us)
    for first in range(len(ordered)):
        inside = [t for t in ordered[first:] if t - ordered[first] < window_us]
        if len(inside) > limit:
            return False
    return True


@dataclass(frozen=True)
class Request:
    gap_us: int
    """How long after the previous request's first ask this one first asks."""
    rtt_us: int
    """Send to answer."""
    stamp: float
    """Where between send and answer the provider stamps it (0: at once, 1: as it answers)."""
    finish_after_us: int
    """How long after the answer its sender gets round to finishing (GIL, busy host)."""
    dies: bool
    """The sender dies after sending: the hold lapses at its ttl, never finished."""
    unsent: bool
    """The grant expires at the send gate: nothing is sent, the hold is given back."""


request_strategy = st.builds(
    Request,
    gap_us=st.integers(0, 400_000),
    rtt_us=st.integers(0, 2_000_000),
    stamp=st.floats(0.0, 1.0),
    finish_after_us=st.integers(0, 500_000),
    dies=st.booleans(),
    unsent=st.booleans(),
)


def simulate(
    spec: LimitSpec,
    requests: list[Request],
    *,
    margin: float,
    catch_up_s: float,
    use_holds: bool = True,
    sent_grants: list[int] | None = None,
    late: list[float] | None = None,
    costs: list[int] | None = None,
    arrival_costs: list[int] | None = None,
) -> list[int]:
    """Run ``requests`` through the limiter (greedy senders), return the arrival stamps
    (and the grant times of the requests that were sent into ``sent_grants``).

    With ``late`` (one share in [0, 1] per request), grants are asked for a provider that
    judges no spacing and request ``i`` is sent ``late[i]`` of its send window after its
    grant (a thread descheduled that long). With ``costs``, request ``i`` costs
    ``costs[i]`` units of the limit; each arrival's cost goes into ``arrival_costs``.
    """
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=margin, catch_up_s=catch_up_s, cold_start=False)
    start = monotonic_us(clock)
    order = itertools.count()
    events: list[tuple[int, int, str, int, Grant | None, float]] = []
    at = start
    for index, request in enumerate(requests):
        at += request.gap_us
        heapq.heappush(events, (at, next(order), "ask", index, None, 0.0))
    arrivals: list[int] = []
    while events:
        when, _, kind, index, grant, since = heapq.heappop(events)
        now = monotonic_us(clock)
        if when > now:
            clock.advance((when - now) / US)
        request = requests[index]
        if kind == "finish":
            assert grant is not None
            holds.finish(limiter, grant, sent=True, since_answer_s=since)
            continue
        asked = spec if costs is None else replace(spec, cost=costs[index % len(costs)])
        if use_holds:
            grant = holds.acquire(
                limiter, [asked], in_flight=None, timeout_s=TIMEOUT_S, judges_spacing=late is None
            )
        else:
            grant = limiter.acquire([spec])
        if not grant.granted:
            retry_us = max(1, min(round(grant.retry_after_s * US), 50_000))
            heapq.heappush(events, (when + retry_us, next(order), "ask", index, None, 0.0))
            continue
        if request.unsent:
            holds.finish(limiter, grant, sent=False)
            continue
        if sent_grants is not None:
            sent_grants.append(when)
        # Sent this share of its send window after the grant (a slow thread, a busy host).
        sent_at = when
        if late is not None:
            sent_at += int(late[index % len(late)] * grant.send_within_s * US)
        answer = sent_at + request.rtt_us
        arrivals.append(sent_at + int(request.stamp * request.rtt_us))
        if arrival_costs is not None:
            arrival_costs.append(asked.cost)
        if not request.dies:
            done = answer + request.finish_after_us
            since = request.finish_after_us / US
            heapq.heappush(events, (done, next(order), "finish", index, grant, since))
    return arrivals


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 6),
    window_us=st.integers(10_000, 2_000_000),
    margin=st.one_of(st.just(0.005), st.floats(0.0001, 0.05)),
    catch_up_s=st.one_of(st.just(0.002), st.floats(0.0, 0.05)),
    requests=st.lists(request_strategy, max_size=40),
)
def test_no_window_at_the_provider_holds_more_than_the_limit(
    limit: int, window_us: int, margin: float, catch_up_s: float, requests: list[Request]
) -> None:
    """Stamped anywhere between send and answer, at most ``limit`` arrive in any window;
    and slots given back by unsent grants never let the *sent* grants crowd a window."""
    spec = LimitSpec("dsp", Rate(limit, window_us / US))
    sent: list[int] = []
    arrivals = simulate(spec, requests, margin=margin, catch_up_s=catch_up_s, sent_grants=sent)
    assert spans_at_least(arrivals, limit, window_us)
    assert spans_at_least(sent, limit, window_us)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 6),
    window_us=st.integers(10_000, 2_000_000),
    margin=st.one_of(st.just(0.005), st.floats(0.0001, 0.05)),
    requests=st.lists(request_strategy, max_size=40),
    late=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
)
def test_grants_sent_late_still_keep_every_window_at_the_provider(
    limit: int, window_us: int, margin: float, requests: list[Request], late: list[float]
) -> None:
    """A provider that judges no spacing: grants sent anywhere in their (wide) send
    window, stamped anywhere between send and answer, still never crowd a window."""
    spec = LimitSpec("dsp", Rate(limit, window_us / US))
    arrivals = simulate(spec, requests, margin=margin, catch_up_s=0.002, late=late)
    assert spans_at_least(arrivals, limit, window_us)


def units_within(arrivals_us: list[int], costs: list[int], limit: int, window_us: int) -> bool:
    """Whether no window of ``window_us`` holds more than ``limit`` units (brute force)."""
    ordered = sorted(zip(arrivals_us, costs, strict=True))
    for first, (start, _) in enumerate(ordered):
        if sum(c for t, c in ordered[first:] if t - start < window_us) > limit:
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(2, 8),
    window_us=st.integers(10_000, 2_000_000),
    margin=st.one_of(st.just(0.005), st.floats(0.0001, 0.05)),
    requests=st.lists(request_strategy, max_size=40),
    costs=st.lists(st.integers(1, 5), min_size=1, max_size=40),
    late=st.one_of(st.none(), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40)),
)
def test_requests_that_cost_several_units_never_crowd_a_window(
    limit: int,
    window_us: int,
    margin: float,
    requests: list[Request],
    costs: list[int],
    late: list[float] | None,
) -> None:
    """A provider that counts units (a heavy write costs 5): requests of mixed costs,
    stamped anywhere between send and answer, sent on time or late, never put more than
    ``limit`` units into a window (each takes as many holds as it costs)."""
    costs = [min(c, limit) for c in costs]
    spec = LimitSpec("dsp", Rate(limit, window_us / US), burst=max(costs) - 1)
    charged: list[int] = []
    arrivals = simulate(
        spec,
        requests,
        margin=margin,
        catch_up_s=0.002,
        late=late,
        costs=costs,
        arrival_costs=charged,
    )
    assert units_within(arrivals, charged, limit, window_us)


def test_without_holds_a_stalled_provider_sees_more_than_the_limit() -> None:
    """The same simulation without holds fails: the property test above can fail.

    2 per second, spaced 0.5 s apart: the first request is stamped as it is answered 0.9 s
    later, the second at once, so with the third at 1.0 s three arrive within 0.1 s.
    """
    spec = LimitSpec("dsp", Rate(2, 1.0))
    stalled = Request(0, 900_000, 1.0, 0, dies=False, unsent=False)
    quick = Request(400_000, 0, 0.0, 0, dies=False, unsent=False)
    late_quick = Request(500_000, 0, 0.0, 0, dies=False, unsent=False)
    requests = [stalled, quick, late_quick]
    plain = simulate(spec, requests, margin=0.0, catch_up_s=0.0, use_holds=False)
    assert not spans_at_least(plain, 2, US)
    held = simulate(spec, requests, margin=0.0, catch_up_s=0.0)
    assert spans_at_least(held, 2, US)
    # The third waited for the first's answer plus a window: 0.9 s + 1 s after the start.
    assert max(held) - min(held) >= US


def test_a_hold_is_kept_a_window_after_the_answer_then_frees() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    spec = LimitSpec("dsp", Rate(1, 1.0))
    grant = holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S)
    assert grant.granted
    assert len(grant.holds) == 1
    clock.advance(3.0)  # a slow answer: the place stays held meanwhile (ttl 2 * 1 + 1 + 1)
    assert limiter.acquire([], in_flight=InFlight("dsp#window", 1, 1.0)).reason == "in_flight"
    holds.finish(limiter, grant, sent=True, since_answer_s=0.25)
    refused = holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S)
    assert not refused.granted
    assert refused.reason == "in_flight"
    assert abs(refused.retry_after_s - 0.75) < 1e-6
    # The refused request gave its spacing slot back: at 0.75 s both are free.
    clock.advance(0.75)
    assert holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S).granted


def test_an_unsent_grant_gives_its_hold_back_at_once() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    spec = LimitSpec("dsp", Rate(1, 0.001))
    first = holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S)
    holds.finish(limiter, first, sent=False)
    clock.advance(0.001)
    assert holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S).granted


def test_a_refused_hold_gives_back_the_in_flight_lease() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    spec = LimitSpec("dsp", Rate(1, 0.01))
    cap = InFlight("dsp", 5, 60.0)
    first = holds.acquire(limiter, [spec], in_flight=cap, timeout_s=TIMEOUT_S)
    assert first.granted
    clock.advance(0.01)  # the rate allows another, the hold does not (first not answered)
    refused = holds.acquire(limiter, [spec], in_flight=cap, timeout_s=TIMEOUT_S)
    assert refused.reason == "in_flight"
    # Only the first request's lease is live on the cap: 4 more fit, not 3.
    for _ in range(4):
        assert limiter.acquire([], in_flight=cap).granted
    assert not limiter.acquire([], in_flight=cap).granted


@settings(max_examples=100, deadline=None)
@given(
    shares=st.lists(st.floats(0.3, 0.95), min_size=2, max_size=12),
    rtt_ms=st.integers(0, 20),
)
def test_holds_never_hold_back_a_key_paced_below_its_configured_limit(
    shares: list[float], rtt_ms: int
) -> None:
    """A key whose rate in force moves (a learned rate dropping and climbing, written as the
    configured count over a longer window) and whose senders follow its grants: the holds,
    kept on the configured window, never refuse a grant. Held on the lowered window instead,
    they kept each place several windows long and, as the pace climbed, refused grants the
    pace allowed (a 20/s key stalled for most of a second in ``bench.adaptive``)."""
    configured = Rate(100, 1.0)
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=0.005, catch_up_s=0.002, cold_start=False)
    finishes: list[tuple[int, int, Grant]] = []
    order = itertools.count()
    for share in shares:
        spec = LimitSpec("dsp", Rate(100, 1.0 / share), held=configured)
        phase_end = monotonic_us(clock) + 3 * US
        while monotonic_us(clock) < phase_end:
            now = monotonic_us(clock)
            while finishes and finishes[0][0] <= now:
                _, _, done = heapq.heappop(finishes)
                holds.finish(limiter, done, sent=True)
            grant = holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S)
            if grant.granted:
                heapq.heappush(finishes, (now + rtt_ms * 1000, next(order), grant))
                continue
            assert grant.reason != "in_flight", f"held back at {share:.2f} of the limit"
            wait_us = max(1, round(grant.retry_after_s * US))
            if finishes:
                wait_us = min(wait_us, max(1, finishes[0][0] - now))
            clock.advance(wait_us / US)


def test_only_short_windows_are_held_and_the_stricter_cap_wins() -> None:
    caps = holds.hold_caps(
        [
            LimitSpec("dsp", Rate(50, 1.0)),
            LimitSpec("dsp", Rate(40, 2.0)),
            LimitSpec("dsp:adv=1", Rate(1000, 3600.0)),
        ],
        timeout_s=10.0,
    )
    assert [(c.in_flight.key, c.in_flight.max_in_flight, c.window_s) for c in caps] == [
        ("dsp#window", 40, 2.0)
    ]
    assert caps[0].in_flight.ttl_s == 2 * 10.0 + 2.0 + 1.0


def test_held_grants_get_a_quarter_to_half_a_spacing_to_be_sent_in() -> None:
    """A quarter spacing on a quiet host, up to 0.35 when recent send delays need it."""
    limiter = MemoryLimiter(clock=FakeClock(), margin=0.005, catch_up_s=0.002, cold_start=False)
    specs = [LimitSpec("a", Rate(50, 1.0))]
    grant = limiter.acquire(specs)
    assert grant.send_within_s == 0.0015  # the limiter alone: (5 ms slack - 2 ms) / 2
    assert holds.send_within_s(specs, grant, recent_delay_s=0.001) == 0.005
    assert holds.send_within_s(specs, grant, recent_delay_s=0.0048) == pytest.approx(0.006)
    assert holds.send_within_s(specs, grant, recent_delay_s=0.050) == pytest.approx(0.007)
    clock = FakeClock()
    fresh = MemoryLimiter(clock=clock, margin=0.005, catch_up_s=0.002, cold_start=False)
    held = holds.acquire(fresh, specs, in_flight=None, timeout_s=1)
    assert 0.005 <= held.send_within_s <= 0.007
    mixed = holds.acquire(
        limiter,
        [LimitSpec("b", Rate(50, 1.0)), LimitSpec("b:day", Rate(100_000, 86_400.0))],
        in_flight=None,
        timeout_s=1,
    )
    assert mixed.granted
    assert mixed.send_within_s < 0.005


def test_a_provider_that_judges_no_spacing_lets_held_grants_go_late() -> None:
    """Up to the shortest held window, never past the timeout; long windows unchanged."""
    limiter = MemoryLimiter(clock=FakeClock(), margin=0.005, catch_up_s=0.002, cold_start=False)
    second = [LimitSpec("a", Rate(50, 1.0))]
    late = holds.acquire(limiter, second, in_flight=None, timeout_s=10, judges_spacing=False)
    assert late.granted
    assert late.send_within_s == 1.0
    minute = [LimitSpec("m", Rate(100, 60.0))]
    short = holds.acquire(limiter, minute, in_flight=None, timeout_s=5, judges_spacing=False)
    assert short.send_within_s == 5.0
    mixed = [LimitSpec("b", Rate(50, 1.0)), LimitSpec("b:day", Rate(100_000, 86_400.0))]
    kept = holds.acquire(limiter, mixed, in_flight=None, timeout_s=10, judges_spacing=False)
    assert kept.granted
    assert kept.send_within_s < 0.005
    strict = holds.acquire(limiter, [LimitSpec("c", Rate(50, 1.0))], in_flight=None, timeout_s=10)
    assert 0.005 <= strict.send_within_s <= 0.007
    # A rate lowered to 2/min (a pin) spaces grants 30 s apart: the window stays within the
    # timeout, or the request could go after its own hold lapsed (2 x 5 + 1 + 1 s).
    pinned = lowered(LimitSpec("d", Rate(10, 1.0)), Rate(2, 60.0))
    slow = holds.acquire(limiter, [pinned], in_flight=None, timeout_s=5, judges_spacing=False)
    assert slow.granted
    assert slow.send_within_s == 5.0
    assert slow.send_within_s < holds.hold_caps([pinned], 5)[0].in_flight.ttl_s - 5


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 6),
    window_us=st.integers(10_000, 2_000_000),
    send_share=st.floats(0.0, 1.0),
    requests=st.lists(request_strategy, max_size=40),
)
def test_sent_anywhere_within_a_whole_spacing_the_window_still_holds(
    limit: int, window_us: int, send_share: float, requests: list[Request]
) -> None:
    """A window-judged provider's held grants, each sent up to its whole send window late
    and then stamped anywhere before its answer, never put more than ``limit`` in a window."""
    spec = LimitSpec("dsp", Rate(limit, window_us / US))
    arrivals = simulate(
        spec,
        requests,
        margin=0.005,
        catch_up_s=0.002,
        late=[send_share],
    )
    assert spans_at_least(arrivals, limit, window_us)


def test_an_unsent_grant_gives_its_slot_back_unless_someone_followed() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    spec = LimitSpec("dsp", Rate(10, 1.0))
    first = holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S)
    clock.advance(0.05)  # the sender was descheduled past its send window
    holds.finish(limiter, first, sent=False)
    assert holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S).granted
    # Granted again at once; but this one went, and the next is 100 ms later.
    second_refused = limiter.acquire([spec])
    assert second_refused.reason == "rate"
    clock.advance(0.1)
    third = holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S)
    clock.advance(0.1)
    fourth = holds.acquire(limiter, [spec], in_flight=None, timeout_s=TIMEOUT_S)
    assert fourth.granted
    # The third was followed by the fourth: giving it back changes nothing.
    holds.finish(limiter, third, sent=False)
    assert limiter.acquire([spec]).reason == "rate"
