"""The sandbox's sliding-log limiter, checked exactly against a brute-force reference."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.sandbox.config import LimitSpec
from sluice.sandbox.limiter import SandboxLimiter


def _limiter(limit: int, window_s: float, **spec: str) -> SandboxLimiter:
    return SandboxLimiter([LimitSpec(name="app", limit=limit, window_s=window_s, **spec)])


def _in_window(times: list[float], end: float, window_s: float) -> int:
    """Brute force: how many of ``times`` lie in the half-open window (end - W, end]."""
    return sum(1 for t in times if t <= end and end - t < window_s)


def test_admits_exactly_limit_then_refuses_until_the_oldest_leaves() -> None:
    """With 3 per 1 s, the 4th call is refused until the 1st is a full second old."""
    limiter = _limiter(3, 1.0)
    assert all(limiter.arrive(t, write=False, app_key="a").admitted for t in (0.0, 0.2, 0.4))
    refused = limiter.arrive(0.5, write=False, app_key="a")
    assert not refused.admitted
    assert refused.free_at == 1.0
    assert not limiter.arrive(0.999, write=False, app_key="a").admitted
    assert limiter.arrive(1.0, write=False, app_key="a").admitted


def test_refused_requests_do_not_consume_budget_but_count_as_arrivals() -> None:
    """Refusals leave the budget alone yet raise max_seen and the refused counter."""
    limiter = _limiter(2, 10.0)
    verdicts = [limiter.arrive(float(t), write=True, app_key="a").admitted for t in range(5)]
    assert verdicts == [True, True, False, False, False]
    log = limiter.snapshot()["app:a"]
    assert (log.max_seen, log.refused, len(log.admitted)) == (5, 3, 2)
    assert limiter.arrive(10.0, write=True, app_key="a").admitted


def test_keys_and_scopes_are_separate_budgets() -> None:
    """Each app has its own budget; read and write limits only see their own calls."""
    limiter = SandboxLimiter(
        [
            LimitSpec(name="reads", scope="read", limit=1, window_s=60.0),
            LimitSpec(name="writes", scope="write", limit=1, window_s=60.0),
            LimitSpec(name="adv", per="advertiser", scope="write", limit=5, window_s=60.0),
        ]
    )
    assert limiter.arrive(0.0, write=False, app_key="a").admitted
    assert limiter.arrive(0.0, write=False, app_key="b").admitted
    assert limiter.arrive(0.0, write=True, app_key="a", advertiser_id="adv-1").admitted
    assert not limiter.arrive(0.0, write=False, app_key="a").admitted
    refused = limiter.arrive(0.0, write=True, app_key="a", advertiser_id="adv-1")
    assert [r.limit_key for r in refused.refusals] == ["writes:a"]
    assert set(limiter.snapshot()) == {"reads:a", "reads:b", "writes:a", "adv:adv-1"}


def test_a_refusal_by_one_limit_is_not_logged_as_admitted_by_another() -> None:
    """A call refused by the app limit does not eat the advertiser's budget."""
    limiter = SandboxLimiter(
        [
            LimitSpec(name="app", limit=1, window_s=60.0),
            LimitSpec(name="adv", per="advertiser", limit=2, window_s=60.0),
        ]
    )
    for _ in range(3):
        limiter.arrive(0.0, write=True, app_key="a", advertiser_id="adv-1")
    assert len(limiter.snapshot()["adv:adv-1"].admitted) == 1


def test_a_clock_stepping_back_cannot_sneak_calls_in() -> None:
    """An arrival stamped earlier than the last one is judged at the last time seen."""
    limiter = _limiter(1, 1.0)
    assert limiter.arrive(5.0, write=False, app_key="a").admitted
    assert not limiter.arrive(3.0, write=False, app_key="a").admitted


arrivals = st.lists(
    st.integers(min_value=0, max_value=5_000).map(lambda ms: ms / 1000), max_size=200
).map(sorted)


@settings(max_examples=300, deadline=None)
@given(
    times=arrivals,
    limit=st.integers(min_value=1, max_value=8),
    window_ms=st.integers(min_value=1, max_value=2_000),
)
def test_never_admits_more_than_limit_in_any_window_and_refuses_only_when_full(
    times: list[float], limit: int, window_ms: int
) -> None:
    """No window of W seconds holds more than N admitted calls; each refusal faced N already."""
    window_s = window_ms / 1000
    limiter = _limiter(limit, window_s)
    admitted: list[float] = []
    for now in times:
        verdict = limiter.arrive(now, write=False, app_key="a")
        before = _in_window(admitted, now, window_s)
        if verdict.admitted:
            assert before < limit
            admitted.append(now)
        else:
            assert before == limit
            assert verdict.free_at > now
    for end in admitted:
        assert _in_window(admitted, end, window_s) <= limit


@settings(max_examples=300, deadline=None)
@given(
    times=arrivals,
    limit=st.integers(min_value=1, max_value=8),
    window_ms=st.integers(min_value=1, max_value=2_000),
)
def test_max_seen_is_the_exact_busiest_window_of_arrivals(
    times: list[float], limit: int, window_ms: int
) -> None:
    """max_seen equals the brute-force maximum of arrivals in any W-second window."""
    window_s = window_ms / 1000
    limiter = _limiter(limit, window_s)
    for now in times:
        limiter.arrive(now, write=False, app_key="a")
    expected = max((_in_window(times, end, window_s) for end in times), default=0)
    seen = limiter.snapshot()["app:a"].max_seen if times else 0
    assert seen == expected


def test_free_at_is_after_now_despite_float_rounding() -> None:
    """A refusal's free_at lies after the refused arrival even where t + W rounds down."""
    limiter = _limiter(1, 0.001)  # 0.015 - 0.014 < 0.001 in floats, yet 0.014 + 0.001 == 0.015
    assert limiter.arrive(0.014, write=False, app_key="a").admitted
    verdict = limiter.arrive(0.015, write=False, app_key="a")
    assert not verdict.admitted
    assert verdict.free_at > 0.015
