"""The adaptive limiter: the cubic law, ceilings from answers, its lifecycle across processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from sluice.clock import FakeClock
from sluice.engine.adaptive import FORGET_AFTER_S, FORGET_EVERY_S, CubicLaw, Learner, told_ceiling
from sluice.engine.rates import RatesInForce, per_second
from sluice.providers.base import LimitObservation, LimitReading
from sluice.providers.config import AdaptiveConfig
from sluice.ratelimit.rate import LimitSpec, Rate
from sluice.store import db
from sluice.store.audit import AuditLog
from sluice.store.learned import LearnedDrop, LearnedRateStore
from sluice.store.usage import UsageStore

CONFIG = AdaptiveConfig(floor=0.05, climb=10.0, decrease=0.7, hold=1.0)
SPEC = LimitSpec("acme", Rate(100, 1.0))

rates = st.floats(min_value=0.01, max_value=10_000, allow_nan=False)
fractions = st.floats(min_value=0.01, max_value=0.99)


def drop(peak: float, low: float, at: float) -> LearnedDrop:
    return LearnedDrop("acme", "acme", 100.0, peak, low, at, 1, "test")


@given(
    configured=rates,
    floor=st.floats(min_value=0.001, max_value=1.0),
    decrease=fractions,
    climb=st.floats(min_value=0.1, max_value=600),
    peak=st.floats(min_value=-1e9, max_value=1e12, allow_nan=False),
    low=st.floats(min_value=-1e9, max_value=1e12, allow_nan=False),
    elapsed=st.floats(min_value=-1e6, max_value=1e7, allow_nan=False),
)
@settings(max_examples=300)
def test_never_above_configured_never_below_floor(
    configured: float,
    floor: float,
    decrease: float,
    climb: float,
    peak: float,
    low: float,
    elapsed: float,
) -> None:
    law = CubicLaw.of(AdaptiveConfig(floor=floor, climb=climb, decrease=decrease), configured)
    rate = law.rate_at(drop(peak, low, 1000.0), 1000.0 + elapsed)
    assert law.floor <= rate <= configured
    new_peak, new_low = law.after_refusal(drop(peak, low, 1000.0), 1000.0 + elapsed)
    assert law.floor <= new_low <= new_peak <= configured


@given(
    peak=st.floats(min_value=1, max_value=100),
    share=fractions,
    t1=st.floats(min_value=0, max_value=100),
    t2=st.floats(min_value=0, max_value=100),
)
def test_the_climb_never_goes_down(peak: float, share: float, t1: float, t2: float) -> None:
    law = CubicLaw.of(CONFIG, 100.0)
    state = drop(peak, peak * share, 0.0)
    early, late = sorted((t1, t2))
    assert law.rate_at(state, early) <= law.rate_at(state, late) + 1e-9


def test_the_climb_reaches_the_refused_rate_after_climb_and_configured_after_twice() -> None:
    law = CubicLaw.of(CONFIG, 100.0)
    state = drop(40.0, 32.0, 0.0)
    assert law.rate_at(state, 0.0) == pytest.approx(32.0)
    assert law.rate_at(state, 10.0) == pytest.approx(40.0)
    assert 40.0 < law.rate_at(state, 15.0) < 100.0
    assert law.rate_at(state, 20.0) == pytest.approx(100.0)
    # Refused again at the rate of the last refusal (a probe): a third as deep a drop, and
    # the climb levels off 2% below the rate refused at.
    assert law.after_refusal(state, 10.0) == pytest.approx((39.2, 36.0))
    # Refused again soon after the drop (the limit fell): the full decrease.
    assert law.after_refusal(state, 1.0)[1] == pytest.approx(0.7 * law.rate_at(state, 1.0))
    # Refused later in the climb, below the rate refused at (one bunched refusal, or a
    # limit a little lower): half as deep.
    assert law.rate_at(state, 3.0) < 0.95 * 40.0
    assert law.after_refusal(state, 3.0)[1] == pytest.approx(0.85 * law.rate_at(state, 3.0))


@given(
    peak=st.floats(min_value=1, max_value=100),
    share=fractions,
    elapsed=st.floats(min_value=0, max_value=100),
    delivered=st.floats(min_value=0, max_value=1000),
)
def test_a_refusal_never_raises_the_rate_in_force(
    peak: float, share: float, elapsed: float, delivered: float
) -> None:
    """Whatever the state, the rate right after a refusal is below the rate in force before."""
    law = CubicLaw.of(CONFIG, 100.0)
    state = drop(peak, peak * share, 0.0)
    cap = law.delivered_cap(state, delivered)
    before = min(law.rate_at(state, elapsed), cap)
    new_peak, new_low = law.after_refusal(state, elapsed, cap)
    assert new_low <= before + 1e-9
    assert new_low < before or before <= law.floor + 1e-9
    assert law.floor <= new_low <= new_peak <= 100.0


@given(
    low=st.floats(min_value=5, max_value=100),
    delivered=st.floats(min_value=0, max_value=1000),
)
def test_the_delivered_cap_is_twice_the_use_never_below_the_drop(
    low: float, delivered: float
) -> None:
    law = CubicLaw.of(CONFIG, 100.0)
    cap = law.delivered_cap(drop(100.0, low, 0.0), delivered)
    assert cap == pytest.approx(min(100.0, max(low, 2 * delivered)))


readings = st.builds(
    LimitReading,
    source=st.sampled_from(["X-RateLimit-Remaining", "RateLimit", "X-App-Usage"]),
    limit=st.none() | st.floats(min_value=0, max_value=1e9),
    window_s=st.none() | st.sampled_from([1.0, 60.0]),
    remaining=st.none() | st.floats(min_value=0, max_value=1e9),
    reset_s=st.none() | st.floats(min_value=0, max_value=7 * 86400),
    used_fraction=st.none() | st.floats(min_value=0, max_value=100),
)


@given(st.lists(readings, max_size=4))
@settings(max_examples=300)
def test_what_answers_say_never_raises_the_rate_nor_goes_below_floor(
    found: list[LimitReading],
) -> None:
    law = CubicLaw.of(CONFIG, per_second(SPEC.rate))
    told = told_ceiling(found, SPEC, law, CONFIG)
    if told is not None:
        per_s, reason, lasts_s = told
        assert law.floor <= per_s <= law.configured
        assert reason
        assert lasts_s >= 0


def test_a_lower_stated_limit_rules_and_the_lowest_remaining_wins() -> None:
    law = CubicLaw.of(CONFIG, 100.0)
    said = [LimitReading("X-RateLimit-Remaining", limit=40, remaining=300, reset_s=10)]
    # 300 left for 10 s is 30/s: below 40/s, so the rest is spread until the reset.
    per_s, reason, lasts = told_ceiling(said, SPEC, law, CONFIG)  # type: ignore[misc]
    assert per_s == pytest.approx(30.0)
    assert "300 left for 10s" in reason
    assert lasts == 10
    # Two headers disagree: the one with the least remaining wins.
    both = [
        LimitReading("X-RateLimit-Remaining", limit=1000, remaining=500, reset_s=10),
        LimitReading("RateLimit", limit=1000, remaining=70, reset_s=10),
    ]
    per_s, reason, _ = told_ceiling(both, SPEC, law, CONFIG)  # type: ignore[misc]
    assert per_s == pytest.approx(7.0)
    assert reason.startswith("RateLimit:")
    # A higher limit than configured is ignored; plenty remaining is no ceiling.
    assert (
        told_ceiling([LimitReading("h", limit=500, remaining=400, reset_s=1)], SPEC, law, CONFIG)
        is None
    )
    # A limit for another window does not apply to this key.
    assert told_ceiling([LimitReading("p", limit=10, window_s=60.0)], SPEC, law, CONFIG) is None


def test_a_whole_second_reset_is_not_spread_over_a_whole_second() -> None:
    """Resets come in whole seconds: ``1`` is any time under a second. A per-second limit of
    10 answered at 5/s says 5 left for 1 s; spread, that held the key at 5/s, and each
    answer at 5/s said so again (measured at a DSP stating 10/s: 5 a second used, half)."""
    law = CubicLaw.of(CONFIG, 100.0)
    said = [LimitReading("X-RateLimit-Remaining", limit=10, remaining=5, reset_s=1)]
    per_s, reason, _ = told_ceiling(said, SPEC, law, CONFIG)  # type: ignore[misc]
    assert per_s == pytest.approx(10.0)  # the stated limit, not 5 left for 1 s
    assert "limit 10" in reason
    # Without a stated limit, nothing is told: a refusal then lowers the rate.
    alone = [LimitReading("X-RateLimit-Remaining", remaining=5, reset_s=1)]
    assert told_ceiling(alone, SPEC, law, CONFIG) is None
    # A longer reset is still spread.
    later = [LimitReading("X-RateLimit-Remaining", remaining=40, reset_s=2)]
    per_s, _, _ = told_ceiling(later, SPEC, law, CONFIG)  # type: ignore[misc]
    assert per_s == pytest.approx(20.0)


def test_meta_usage_spreads_the_rest_and_regain_time_holds_at_floor() -> None:
    law = CubicLaw.of(CONFIG, 100.0)
    per_s, _, _ = told_ceiling([LimitReading("X-App-Usage", used_fraction=0.9)], SPEC, law, CONFIG)  # type: ignore[misc]
    assert per_s == pytest.approx(50.0)  # 10% left of the 20% above the 80% mark
    assert told_ceiling([LimitReading("X-App-Usage", used_fraction=0.5)], SPEC, law, CONFIG) is None
    per_s, reason, lasts = told_ceiling(  # type: ignore[misc]
        [LimitReading("X-App-Usage", used_fraction=1.0, reset_s=120)], SPEC, law, CONFIG
    )
    assert per_s == law.floor
    assert lasts == 120
    assert "regain" in reason


# --- the learner, across processes --------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> LearnedRateStore:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'learned.db'}")
    db.ensure_schema(engine)
    return LearnedRateStore(engine)


def refusal(at: float, limits: tuple[LimitSpec, ...] = (SPEC,)) -> LimitObservation:
    return LimitObservation("acme", limits, (), refused=True, said_when=False, at=at)


def learned_rate(learner: Learner, clock: FakeClock) -> float:
    rates = RatesInForce([learner], clock=clock, refresh_s=0.0)
    return per_second(rates.in_force(SPEC).rate)


def test_a_burst_of_refusals_from_many_workers_makes_one_drop(store: LearnedRateStore) -> None:
    clock = FakeClock()
    workers = [Learner(store, {"acme": CONFIG}, clock) for _ in range(4)]
    now = clock.time()
    for worker in workers:
        for k in range(5):
            worker.observe(refusal(now + k * 0.01))
    drops = store.all()
    assert len(drops) == 1
    assert drops[0].decreases == 1
    assert drops[0].low_per_s == pytest.approx(85.0)  # the first drop: half of 0.7's depth
    # Every worker computes the same rate from the one row, with no write while climbing.
    clock.advance(3.0)
    assert len({round(learned_rate(w, clock), 9) for w in workers}) == 1
    records = AuditLog(store.engine).list(action="provider.rate_learned").items
    assert len(records) == 1
    assert records[0].target == "provider:acme"
    assert records[0].detail["to_per_s"] == pytest.approx(85.0)


def test_a_refusal_with_retry_after_drops_too(store: LearnedRateStore) -> None:
    """Resuming at the configured rate after the pause would only be refused again."""
    clock = FakeClock()
    learner = Learner(store, {"acme": CONFIG}, clock)
    learner.observe(LimitObservation("acme", (SPEC,), (), True, said_when=True, at=clock.time()))
    assert [d.low_per_s for d in store.all()] == [pytest.approx(85.0)]


def test_a_refusal_that_states_the_limit_does_not_drop(store: LearnedRateStore) -> None:
    clock = FakeClock()
    learner = Learner(store, {"acme": CONFIG}, clock)
    said = (LimitReading("X-RateLimit-Remaining", limit=40, remaining=0, reset_s=0.5),)
    learner.observe(LimitObservation("acme", (SPEC,), said, True, False, clock.time()))
    assert store.all() == []
    # ... but the stated limit rules.
    assert learned_rate(learner, clock) == pytest.approx(40.0)


def test_a_provider_without_adaptive_is_left_alone(store: LearnedRateStore) -> None:
    clock = FakeClock()
    learner = Learner(store, {"acme": AdaptiveConfig(enabled=False)}, clock)
    learner.observe(refusal(clock.time()))
    assert store.all() == []
    assert learned_rate(learner, clock) == 100.0


def test_the_learned_rate_survives_a_restart(store: LearnedRateStore) -> None:
    clock = FakeClock()
    Learner(store, {"acme": CONFIG}, clock).observe(refusal(clock.time()))
    restarted = Learner(LearnedRateStore(store.engine), {"acme": CONFIG}, clock)
    assert learned_rate(restarted, clock) == pytest.approx(85.0)


class LearnerLifecycle(RuleBasedStateMachine):
    """Refusals, time and restarts in any order, against two processes sharing one store.

    Checked after every step: each process's rate is within [floor, configured], both agree,
    drops are at least ``hold`` apart, and the rate equals the model's (the last drop, the law).
    """

    def __init__(self) -> None:
        super().__init__()
        self.folder: Path | None = None

    @initialize(target=None)
    def start(self) -> None:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="sluice-learner-")
        engine = db.make_engine(f"sqlite:///{self._tmp.name}/l.db")
        db.ensure_schema(engine)
        self.engine = engine
        self.clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
        self.processes = [self._process(), self._process()]
        self.law = CubicLaw.of(CONFIG, 100.0)
        self.model: LearnedDrop | None = None
        self.drop_times: list[float] = []

    def _process(self) -> Learner:
        return Learner(LearnedRateStore(self.engine), {"acme": CONFIG}, self.clock)

    @rule(which=st.integers(0, 1))
    def refused(self, which: int) -> None:
        now = self.clock.time()
        self.processes[which].observe(refusal(now))
        if self.model is None or now - self.model.dropped_at_s >= CONFIG.hold:
            peak, low = self.law.after_refusal(self.model, now)
            self.model = LearnedDrop("acme", "acme", 100.0, peak, low, now, 0, "")
            self.drop_times.append(now)

    @rule(seconds=st.sampled_from([0.1, 0.5, 0.99, 1.0, 3.0, 10.0, 30.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(which=st.integers(0, 1))
    def restart(self, which: int) -> None:
        self.processes[which] = self._process()

    @invariant()
    def rates_agree_and_stay_in_bounds(self) -> None:
        if not hasattr(self, "processes"):
            return
        seen = [learned_rate(p, self.clock) for p in self.processes]
        expected = self.law.rate_at(self.model, self.clock.time())
        for rate in seen:
            assert self.law.floor - 1e-9 <= rate <= 100.0 + 1e-9
            assert rate == pytest.approx(expected, rel=1e-6)
        rows = LearnedRateStore(self.engine).all()
        assert len(rows) == (0 if self.model is None else 1)
        gaps = [b - a for a, b in zip(self.drop_times, self.drop_times[1:], strict=False)]
        assert all(gap >= CONFIG.hold for gap in gaps)

    def teardown(self) -> None:
        if hasattr(self, "engine"):
            self.engine.dispose()
            self._tmp.cleanup()


LearnerLifecycle.TestCase.settings = settings(max_examples=40, stateful_step_count=25)
TestLearnerLifecycle = LearnerLifecycle.TestCase


# --- the climb, capped at twice the rate the key was used at ------------------------------


def sent(usage: UsageStore, clock: FakeClock, per_s: int, seconds: int) -> None:
    """``per_s`` requests a second under the key, in each of the last ``seconds`` seconds,
    added to the shared counters as the workers' usage recorders add them."""
    now = clock.now().replace(microsecond=0)
    usage.add({("acme", "sent", now - timedelta(seconds=k)): per_s for k in range(seconds)})


def test_a_key_not_used_does_not_climb_on_time_alone(store: LearnedRateStore) -> None:
    """Starved of demand after a drop, the learned rate stays at the rate it dropped to
    instead of reaching the configured one, and follows the use when demand returns."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    usage = UsageStore(store.engine)
    learner = Learner(store, {"acme": CONFIG}, clock, delivered=usage)
    learner.observe(refusal(clock.time()))  # 100 -> 85
    clock.advance(60.0)  # the law alone would be back at 100 by now
    assert learned_rate(learner, clock) == pytest.approx(85.0)
    # Without the usage counters (the law alone): the configured rate.
    assert learned_rate(Learner(store, {"acme": CONFIG}, clock), clock) == 100.0
    # Demand returns below the dropped rate: still the dropped rate (it was admitted) ...
    sent(usage, clock, 30, 10)
    assert learned_rate(learner, clock) == pytest.approx(85.0)
    # ... and at 45/s, twice that.
    sent(usage, clock, 15, 10)
    assert learned_rate(learner, clock) == pytest.approx(90.0)


def test_the_reason_says_which_cap_holds_a_key(store: LearnedRateStore) -> None:
    """Not used since its drop, a key is held at the rate it dropped to; ``sluice rates``
    and the console said "held at 2x the rate it was used at" for it (used at 0/s)."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    usage = UsageStore(store.engine)
    learner = Learner(store, {"acme": CONFIG}, clock, delivered=usage)
    learner.observe(refusal(clock.time()))  # 100 -> 85
    clock.advance(60.0)

    def in_force() -> tuple[float, str]:
        now = RatesInForce([learner], clock=clock, refresh_s=0.0).in_force(SPEC)
        return per_second(now.rate), now.reason

    rate, reason = in_force()
    assert rate == pytest.approx(85.0)
    assert "held at the rate it dropped to" in reason
    assert "2x" not in reason
    sent(usage, clock, 45, 10)  # used at 45/s: twice that, 90/s, is the cap
    rate, reason = in_force()
    assert rate == pytest.approx(90.0)
    assert "held at 2x the rate it was used at" in reason


def test_every_worker_reads_the_same_use(store: LearnedRateStore) -> None:
    """The use comes from the shared counters, so every process caps the climb alike."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    usage = UsageStore(store.engine)
    workers = [Learner(store, {"acme": CONFIG}, clock, delivered=usage) for _ in range(3)]
    workers[0].observe(refusal(clock.time()))
    clock.advance(30.0)
    sent(usage, clock, 44, 10)
    assert {round(learned_rate(w, clock), 9) for w in workers} == {88.0}


def test_a_refusal_while_capped_drops_from_the_rate_in_force(store: LearnedRateStore) -> None:
    """The drop starts from the capped rate that was sent at, not from the law's."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    usage = UsageStore(store.engine)
    learner = Learner(store, {"acme": CONFIG}, clock, delivered=usage)
    learner.observe(refusal(clock.time()))  # 100 -> 85
    clock.advance(60.0)
    assert learned_rate(learner, clock) == pytest.approx(85.0)
    learner.observe(refusal(clock.time()))
    (row,) = store.all()
    assert row.peak_per_s <= 85.0 + 1e-9
    assert row.low_per_s < 85.0


def test_a_stated_limit_reaches_a_key_stretched_by_rate_margin(store: LearnedRateStore) -> None:
    """With ``rate_margin`` the key's window is longer than the provider's: a reading naming
    the provider's window still speaks of the key (the margin kept on the stated limit),
    and a refusal stating it does not also drop the rate. Before, no reading matched a
    stretched window, and a refusal that named one neither lowered the rate nor dropped."""
    stretched = LimitSpec("acme", Rate(100, 1.1))
    law = CubicLaw.of(CONFIG, per_second(stretched.rate))
    policy = [LimitReading("RateLimit-Policy", limit=40, window_s=1.0)]
    told = told_ceiling(policy, stretched, law, CONFIG, stretch=1.1)
    assert told is not None
    assert told[0] == pytest.approx(40 / 1.1)
    assert "per 1s" in told[1]
    clock = FakeClock()
    learner = Learner(store, {"acme": CONFIG}, clock)
    learner.observe(
        LimitObservation("acme", (stretched,), tuple(policy), True, False, clock.time(), 1.1)
    )
    assert store.all() == []
    rates = RatesInForce([learner], clock=clock, refresh_s=0.0)
    assert per_second(rates.in_force(stretched).rate) == pytest.approx(40 / 1.1)


def test_a_refusal_stating_only_another_window_drops(store: LearnedRateStore) -> None:
    """Numbers for a window none of the request's keys has say nothing of these keys: the
    refusal lowers the rate like one with no numbers."""
    clock = FakeClock()
    learner = Learner(store, {"acme": CONFIG}, clock)
    daily = (LimitReading("RateLimit-Policy", limit=15_000, window_s=86_400.0),)
    learner.observe(LimitObservation("acme", (SPEC,), daily, True, False, clock.time()))
    assert [d.low_per_s for d in store.all()] == [pytest.approx(85.0)]


def test_a_drop_a_day_old_and_past_its_climb_is_forgotten(store: LearnedRateStore) -> None:
    """A key last refused a day ago and not used since loses its row: it starts again like
    a key never refused, instead of held at its dropped rate for ever (every per-account
    key ever refused kept a row, read by every process each refresh). A key refused since
    keeps its own."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    usage = UsageStore(store.engine)
    learner = Learner(store, {"acme": CONFIG}, clock, delivered=usage)
    write = LimitSpec("acme:write", Rate(100, 1.0))
    learner.observe(refusal(clock.time()))  # acme: 100 -> 85
    assert learned_rate(learner, clock) == pytest.approx(85.0)
    clock.advance(FORGET_AFTER_S - 60)
    assert learned_rate(learner, clock) == pytest.approx(85.0)  # idle: held, not forgotten
    learner.observe(refusal(clock.time(), (write,)))
    clock.advance(FORGET_EVERY_S)

    assert learned_rate(learner, clock) == 100.0
    assert [drop.key for drop in store.all()] == ["acme:write"]
