"""The rate in force: the lowest of configured and every ceiling, never above configured."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given
from hypothesis import strategies as st

from sluice.clock import FakeClock
from sluice.engine.rates import Ceiling, RatesInForce, per_second
from sluice.ratelimit import holds
from sluice.ratelimit.rate import LimitSpec, Rate


class Table:
    """A ceiling source whose content the test sets (stands for a store table)."""

    def __init__(self) -> None:
        self.found: dict[str, list[Ceiling]] = {}
        self.reads = 0
        self.fail = False

    def ceilings(self) -> Mapping[str, Sequence[Ceiling]]:
        self.reads += 1
        if self.fail:
            raise RuntimeError("database away")
        return {key: list(found) for key, found in self.found.items()}


SPEC = LimitSpec("acme:write", Rate(50, 1.0))


def test_no_ceiling_leaves_the_configured_rate() -> None:
    rates = RatesInForce([Table()], clock=FakeClock())
    assert rates.apply([SPEC]) == [SPEC]
    assert rates.in_force(SPEC).source == "configured"


def test_the_lowest_ceiling_rules_and_says_where_it_comes_from() -> None:
    pins, learned = Table(), Table()
    pins.found["acme:write"] = [Ceiling("pinned", Rate(30, 1.0), "by alice")]
    learned.found["acme:write"] = [Ceiling("learned", Rate(20, 1.0), "429s")]
    learned.found["other"] = [Ceiling("learned", Rate(1, 1.0))]
    rates = RatesInForce([pins, learned], clock=FakeClock())
    (applied,) = rates.apply([SPEC])
    # The configured count over a window stretched to the ceiling's pace (20/s).
    assert applied == LimitSpec("acme:write", Rate(50, 2.5), held=Rate(50, 1.0))
    assert rates.in_force(SPEC).source == "learned"
    assert rates.in_force(SPEC).reason == "429s"


def test_a_ceiling_above_the_configured_rate_is_ignored() -> None:
    pins = Table()
    pins.found["acme:write"] = [Ceiling("pinned", Rate(6000, 60.0))]
    rates = RatesInForce([pins], clock=FakeClock())
    assert rates.apply([SPEC]) == [SPEC]


def test_ceilings_are_cached_for_the_refresh_period_and_kept_when_a_source_fails() -> None:
    clock = FakeClock()
    pins = Table()
    pins.found["acme:write"] = [Ceiling("pinned", Rate(10, 1.0))]
    rates = RatesInForce([pins], clock=clock, refresh_s=0.5)
    assert rates.in_force(SPEC).rate == Rate(10, 1.0)
    pins.found.clear()
    clock.advance(0.2)
    assert rates.in_force(SPEC).rate == Rate(10, 1.0)
    assert pins.reads == 1
    pins.fail = True
    clock.advance(0.5)
    assert rates.in_force(SPEC).rate == Rate(10, 1.0)
    pins.fail = False
    clock.advance(0.5)
    assert rates.in_force(SPEC).rate == SPEC.rate


rates_st = st.builds(Rate, st.integers(1, 10_000), st.sampled_from([0.5, 1.0, 60.0, 3600.0]))


@given(configured=rates_st, ceilings=st.lists(rates_st, max_size=4))
def test_in_force_is_the_minimum_and_never_above_configured(
    configured: Rate, ceilings: list[Rate]
) -> None:
    table = Table()
    table.found["k"] = [Ceiling("pinned", rate) for rate in ceilings]
    rate = RatesInForce([table], clock=FakeClock()).in_force(LimitSpec("k", configured)).rate
    assert per_second(rate) == min(per_second(r) for r in [configured, *ceilings])
    assert per_second(rate) <= per_second(configured)


def test_a_ceiling_paces_the_grants_and_leaves_the_holds_on_the_configured_window() -> None:
    """A learned 19.5/s on a 100/s key is written as 100 per 5.1 s: the grants keep that
    pace, the holds keep the provider's own second (not five of them)."""
    learned = Table()
    configured = LimitSpec("acme", Rate(100, 1.0))
    learned.found["acme"] = [Ceiling("learned", Rate(100, 100 / 19.5))]
    rates = RatesInForce([learned], clock=FakeClock())
    (applied,) = rates.apply([configured])
    assert applied.rate == Rate(100, 100 / 19.5)
    assert applied.held_rate == Rate(100, 1.0)
    (cap,) = holds.hold_caps([applied], timeout_s=10.0)
    assert (cap.in_flight.max_in_flight, cap.window_s) == (100, 1.0)
    assert configured.held_rate is configured.rate
