"""The wide catch-up of held keys judged by windows only (``gcra.wide_credit_us``).

Such a key's window at the provider rests on the holds (``test_ratelimit_holds.py`` sends
their grants late and stamps them anywhere before the answer); these check what the GCRA
still promises with the wider credit, that lateness within it is made up, and that giving
a slot back stays exact.
"""

from __future__ import annotations

import itertools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sluice.clock import FakeClock
from sluice.ratelimit import Grant, LimitSpec, Rate, gcra, holds
from sluice.ratelimit.memory import MemoryLimiter, monotonic_us

US = 1_000_000

rates = st.builds(
    Rate,
    limit=st.integers(1, 200),
    window_s=st.integers(1_000, 120_000_000).map(lambda us: us / US),
)


@given(
    rate=rates,
    margin=st.floats(0.0, 0.05),
    catch_up_us=st.integers(0, 100_000),
    burst_share=st.floats(0.0, 0.99),
)
def test_the_wide_credit_is_never_below_the_ordinary_one_and_a_lowered_one_stays_narrow(
    rate: Rate, margin: float, catch_up_us: int, burst_share: float
) -> None:
    burst = min(rate.limit - 1, int(burst_share * rate.limit))
    spacing = gcra.spacing_us(rate, margin, burst)
    ordinary = gcra.credit_us(rate, margin, catch_up_us, burst)
    wide = gcra.wide_credit_us(rate, margin, catch_up_us, burst)
    narrow = gcra.wide_credit_us(rate, margin, catch_up_us, burst, lowered=True)
    assert wide == max(ordinary, gcra.WIDE_CATCH_UP_US)
    assert ordinary <= narrow <= wide
    assert narrow <= max(ordinary, gcra.LOWERED_WIDE_CATCH_UP_US)
    if ordinary < spacing:
        # A lowered key never takes two missed slots at once.
        assert narrow < spacing


@given(
    limit=st.integers(1, 200),
    window_ms=st.integers(1, 60_000),
    pace_share=st.floats(0.01, 0.99),
)
def test_a_lowered_wide_key_keeps_the_narrow_credit(
    limit: int, window_ms: int, pace_share: float
) -> None:
    """A pin, a learned rate or a quota's pace is a promise only the GCRA bound keeps: its
    key gets at most half a spacing of catch-up, never the burst of missed slots."""
    configured = LimitSpec("dsp", Rate(limit, window_ms / 1000))
    slower = Rate(limit, window_ms / 1000 / pace_share)
    lowered = LimitSpec("dsp", slower, held=configured.rate)
    p = gcra.plan([lowered], 0.005, 2_000, wide={"dsp"})["dsp"]
    assert p.credit == min(
        gcra.wide_credit_us(rate, 0.005, 2_000, lowered=True) for rate in (slower, configured.rate)
    )
    assert p.credit <= max(gcra.credit_us(slower, 0.005, 2_000), p.spacing // 2)
    assert gcra.plan([configured], 0.005, 2_000, wide={"dsp"})["dsp"].credit == max(
        gcra.credit_us(configured.rate, 0.005, 2_000), gcra.WIDE_CATCH_UP_US
    )


def wide_limiter(
    margin: float = 0.005, catch_up_s: float = 0.002
) -> tuple[FakeClock, MemoryLimiter]:
    clock = FakeClock()
    return clock, MemoryLimiter(clock=clock, margin=margin, catch_up_s=catch_up_s, cold_start=False)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 60),
    window_us=st.integers(10_000, 2_000_000),
    gaps_us=st.lists(
        st.one_of(st.integers(0, 80_000), st.integers(0, 600_000)), min_size=1, max_size=150
    ),
)
def test_wide_grants_keep_the_gcra_bound_with_their_credit(
    limit: int, window_us: int, gaps_us: list[int]
) -> None:
    """Consecutive grants at least ``s - credit`` apart, any ``L + 1`` at least
    ``L * s - credit``: the bounds of gcra's proof, with the wide credit in them."""
    clock, limiter = wide_limiter()
    spec = LimitSpec("dsp", Rate(limit, window_us / US))
    p = gcra.plan([spec], 0.005, gcra.to_us(0.002), wide={"dsp"})["dsp"]
    granted: list[int] = []
    for gap in gaps_us:
        clock.advance(gap / US)
        if limiter.acquire([spec], wide={"dsp"}).granted:
            granted.append(monotonic_us(clock))
    for a, b in itertools.pairwise(granted):
        assert b - a >= p.spacing - p.credit
    for i in range(len(granted) - limit):
        assert granted[i + limit] - granted[i] >= limit * p.spacing - p.credit


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(2, 60),
    lateness_share=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=120),
)
def test_lateness_within_the_wide_credit_is_made_up(
    limit: int, lateness_share: list[float]
) -> None:
    """A caller that asks each time up to the credit after its slot (a quarter of a second:
    a loaded host's late wake-ups, a window held past its round trip) keeps the schedule:
    grant ``k`` comes no later than the first grant plus ``k`` spacings plus the credit,
    and the schedule ends where it would have without any lateness."""
    clock, limiter = wide_limiter()
    spec = LimitSpec("dsp", Rate(limit, 1.0))
    p = gcra.plan([spec], 0.005, gcra.to_us(0.002), wide={"dsp"})["dsp"]
    assert p.credit == gcra.WIDE_CATCH_UP_US == 250_000
    # Take what the key allows now (an idle key: one grant), then keep to the schedule.
    while limiter.acquire([spec], wide={"dsp"}).granted:
        pass
    first_slot = limiter._tats["dsp"]
    for k, share in enumerate(lateness_share):
        # Asked late by up to the credit, measured from the slot; at once when that is past.
        ask = first_slot + k * p.spacing + int(share * p.credit)
        clock.advance(max(0, ask - monotonic_us(clock)) / US)
        assert limiter.acquire([spec], wide={"dsp"}).granted
        assert monotonic_us(clock) <= first_slot + k * p.spacing + p.credit
    # Not a microsecond of the lateness was lost: the schedule is where it started.
    assert limiter._tats["dsp"] == first_slot + len(lateness_share) * p.spacing


@settings(max_examples=300, deadline=None)
@given(
    burst=st.integers(0, 5),
    wide=st.booleans(),
    steps=st.lists(
        st.tuples(st.integers(0, 30_000), st.booleans(), st.integers(0, 10)),
        min_size=1,
        max_size=80,
    ),
)
def test_giving_back_a_grant_never_undoes_a_sent_one(
    burst: int, wide: bool, steps: list[tuple[int, bool, int]]
) -> None:
    """Grants with the wide credit (a spacing and more) or the ordinary one, with or
    without a burst, some given back later (any earlier one): the TAT never drops below
    what a grant that was sent (not given back) left, which is what every bound rests on;
    and a give-back that takes effect leaves the key exactly as that grant found it."""
    clock, limiter = wide_limiter()
    spec = LimitSpec("dsp", Rate(50, 1.0), burst=burst)
    keys = {"dsp"} if wide else set()
    grants: list[Grant] = []
    given: set[int] = set()
    for gap, give, back in steps:
        clock.advance(gap / US)
        grant = limiter.acquire([spec], wide=keys)
        if grant.granted:
            assert [(key, after) for key, _, after in grant.undo] == [("dsp", limiter._tats["dsp"])]
            grants.append(grant)
        if give and grants:
            index = max(0, len(grants) - 1 - back)
            if index not in given:
                given.add(index)
                before = limiter._tats["dsp"]
                limiter.give_back(grants[index].undo)
                _, found, left = grants[index].undo[0]
                assert limiter._tats["dsp"] == (found if before == left else before)
        sent = [g.undo[0][2] for i, g in enumerate(grants) if i not in given]
        assert limiter._tats.get("dsp", 0) >= max(sent, default=0)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 60),
    window_us=st.integers(10_000, 2_000_000),
    gaps_us=st.lists(st.integers(0, 600_000), min_size=1, max_size=60),
)
def test_a_wide_key_never_opens_with_more_than_one_grant(
    limit: int, window_us: int, gaps_us: list[int]
) -> None:
    """Asked as often as it allows after any pause: a grant that finds the key further
    behind than its credit (idle) is followed by no other at the same instant, unless
    the ordinary credit itself covers a spacing (``KeyPlan.idle_credit``)."""
    clock, limiter = wide_limiter()
    spec = LimitSpec("dsp", Rate(limit, window_us / US))
    p = gcra.plan([spec], 0.005, gcra.to_us(0.002), wide={"dsp"})["dsp"]
    assert p.idle_credit is not None
    for gap in gaps_us:
        clock.advance(gap / US)
        now = monotonic_us(clock)
        idle = now - limiter._tats.get("dsp", 0) > p.credit
        granted = 0
        while limiter.acquire([spec], wide={"dsp"}).granted:
            granted += 1
        if idle:
            assert granted == 1 + p.idle_credit // p.spacing


def test_only_keys_held_on_every_listing_are_wide() -> None:
    second = LimitSpec("dsp", Rate(50, 1.0))
    day = LimitSpec("dsp:adv", Rate(10_000, 86_400.0))
    both = [LimitSpec("dsp:adv", Rate(10, 1.0)), day]
    assert holds.wide_keys([second, day]) == {"dsp"}
    assert holds.wide_keys(both) == frozenset()


def test_a_spacing_judge_and_the_limiter_alone_keep_the_ordinary_credit() -> None:
    """Grants asked late: only a window judge's held key catches up."""
    spec = LimitSpec("dsp", Rate(50, 1.0))

    def second_tat(judges_spacing: bool | None) -> int:
        clock, limiter = wide_limiter()
        for _ in range(2):
            if judges_spacing is None:
                assert limiter.acquire([spec]).granted
            else:
                grant = holds.acquire(
                    limiter, [spec], in_flight=None, timeout_s=5, judges_spacing=judges_spacing
                )
                assert grant.granted
            clock.advance(0.0201 + 0.005)  # 5 ms after the slot
        return limiter._tats["dsp"] - monotonic_us(clock)

    ordinary = second_tat(True)
    assert second_tat(None) == ordinary
    credits = [
        gcra.credit_us(spec.rate, 0.005, 2_000),
        gcra.wide_credit_us(spec.rate, 0.005, 2_000),
    ]
    assert credits == [2_000, 250_000]
    # The first grant opened an idle key (with the ordinary credit either way, so its slot
    # was 18.1 ms on); the second came 7 ms after that slot: the ordinary credit lost 5 ms
    # of it, the window judge's schedule none.
    assert second_tat(False) == ordinary - (7_000 - credits[0])


def test_the_memory_sweep_never_forgets_a_tat_the_wide_credit_still_reaches() -> None:
    """A key asked exactly its whole credit (250 ms) after its slot still catches up, as it
    does on Redis (``now - tat <= credit``), also on the call that sweeps old TATs (one in
    1024): the sweep forgot a TAT exactly a credit old, and the key restarted from idle
    with the ordinary credit instead, a spacing and more off the schedule."""
    clock, limiter = wide_limiter(catch_up_s=0.0)
    spec = LimitSpec("dsp", Rate(10, 1.0))
    p = gcra.plan([spec], 0.005, 0, wide={"dsp"})["dsp"]
    assert limiter.acquire([spec], wide={"dsp"}).granted
    for _ in range(1100):  # the sweep comes at least once
        tat = limiter._tats["dsp"]
        clock.advance((tat + p.credit - monotonic_us(clock)) / US)
        grant = limiter.acquire([spec], wide={"dsp"})
        assert grant.undo == (("dsp", tat, tat + p.spacing),)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 12),
    window_ms=st.integers(100, 12_000),
    burst_share=st.floats(0.0, 0.99),
    steps=st.lists(
        st.tuples(
            st.one_of(st.just(0), st.just(gcra.WIDE_CATCH_UP_US), st.integers(0, 300_000)),
            st.integers(0, 4),
        ),
        min_size=1,
        max_size=60,
    ),
)
# 2/2s: one grant 250 ms late, one on time, a loss: the third came 1.77 s after the first
# with a cold hold of max(spacing, 1 s).
@example(limit=2, window_ms=2000, burst_share=0.0, steps=[(0, 1), (250_000, 1), (0, 1), (0, 0)])
def test_a_wide_key_keeps_its_window_across_state_losses(
    limit: int, window_ms: int, burst_share: float, steps: list[tuple[int, int]]
) -> None:
    """Requests sent and answered at once, each asked late by up to the wide credit after
    the key allows it, and the state lost now and then (its holds with it): no window of
    ``W`` holds more than ``L`` of them, before, after and across the losses."""
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, margin=0.01)  # cold: it starts as after a loss
    spec = LimitSpec("dsp", Rate(limit, window_ms / 1000), burst=int(burst_share * limit))
    sent: list[int] = []

    def ask() -> Grant:
        return holds.acquire(limiter, [spec], in_flight=None, timeout_s=1.0, judges_spacing=False)

    for late_us, lose in steps:
        if lose == 0:
            limiter.reset()
        while True:  # until the key allows it (a grant given back at once: exact)
            grant = ask()
            if grant.granted:
                holds.finish(limiter, grant, sent=False)
                break
            clock.advance(grant.retry_after_s)
        clock.advance(late_us / US)
        grant = ask()
        assert grant.granted or grant.reason == "in_flight"
        if grant.granted:
            holds.finish(limiter, grant, sent=True)
            sent.append(monotonic_us(clock))
    for first, last in zip(sent, sent[limit:], strict=False):
        assert last - first >= window_ms * 1000
