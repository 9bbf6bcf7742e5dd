"""Pin, unpin, pause and resume in any order, against a model.

After every step: the rate in force on each key is min(configured, its pin); the limiter
holds exactly the keys the model says are paused (by themselves or an ancestor); the
overview shows each pause; and the audit trail has one record per successful action,
none for a refused one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import func, select

from sluice import errors
from sluice.clock import FakeClock
from sluice.controls import NO_EXPIRY, Controls, PinnedCeilings, stretches
from sluice.domain import LOCAL_ACTOR
from sluice.engine.rates import RatesInForce, per_second
from sluice.providers.registry import load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.ratelimit.rate import LimitSpec, Rate, parse_rate
from sluice.settings import Settings
from sluice.store import db
from sluice.store.audit import audit
from sluice.store.pins import PinStore

PROVIDERS = {
    "sandbox": {
        "preset": "sandbox-demo",
        "base_url": "http://127.0.0.1:9",
        "rate_limit": "20/s",
        "limits": [
            {"scope": "write", "rate": "10/s"},
            {"scope": "write", "per": "advertiser_id", "rate": "2/s"},
        ],
    },
    "acme": {"preset": "sandbox-demo", "base_url": "http://127.0.0.1:9", "rate_limit": "40/min"},
}
CONFIGURED = {
    "sandbox": parse_rate("20/s"),
    "sandbox:write": parse_rate("10/s"),
    "sandbox:write:advertiser_id=a": parse_rate("2/s"),
    "acme": parse_rate("40/min"),
}
PAUSABLE = ["sandbox", "sandbox:write", "acme"]
UNKNOWN = ["nope", "sandbox:read", "acme:write"]
RATES = [parse_rate(text) for text in ("1/s", "5/s", "10/s", "30/s", "600/min", "1/h", "2/s")]

keys = st.sampled_from([*CONFIGURED, *UNKNOWN])
targets = st.sampled_from([*PAUSABLE, *UNKNOWN, "sandbox:write:advertiser_id=a"])


def covers(paused: str, key: str) -> bool:
    return key == paused or key.startswith(paused + ":")


class ControlsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._folder = TemporaryDirectory()
        self.engine = db.make_engine(f"sqlite:///{Path(self._folder.name) / 'm.db'}")
        db.ensure_schema(self.engine)
        self.clock = FakeClock()
        providers = load_providers(Settings(providers=PROVIDERS), clock=self.clock)
        rates = RatesInForce(
            [PinnedCeilings(PinStore(self.engine), stretches(providers))], clock=self.clock
        )
        limiter = MemoryLimiter(clock=self.clock, cold_start=False)
        self.controls = Controls(self.engine, providers, limiter, rates, clock=self.clock)
        self.pins: dict[str, Rate] = {}
        self.pauses: dict[str, datetime] = {}
        self.actions = 0

    def teardown(self) -> None:
        self.engine.dispose()
        self._folder.cleanup()

    @rule(key=keys, rate=st.sampled_from(RATES))
    def pin(self, key: str, rate: Rate) -> None:
        try:
            self.controls.pin(key, rate, reason="model", actor=LOCAL_ACTOR)
        except errors.UnknownLimit:
            assert key not in CONFIGURED
            return
        except errors.InvalidControl:
            assert per_second(rate) > per_second(CONFIGURED[key])
            return
        assert key in CONFIGURED
        assert per_second(rate) <= per_second(CONFIGURED[key])
        self.pins[key] = rate
        self.actions += 1

    @rule(key=keys)
    def unpin(self, key: str) -> None:
        try:
            result = self.controls.unpin(key, actor=LOCAL_ACTOR)
        except errors.UnknownLimit:
            assert key not in CONFIGURED
            return
        assert result.changed == (key in self.pins)
        self.pins.pop(key, None)
        self.actions += 1

    @rule(name=targets, minutes=st.one_of(st.none(), st.integers(1, 120)))
    def pause(self, name: str, minutes: int | None) -> None:
        now = self.clock.now()
        end = now + timedelta(minutes=minutes) if minutes is not None else None
        try:
            self.controls.pause(name, reason="model", until=end, actor=LOCAL_ACTOR)
        except errors.UnknownLimit:
            assert name in UNKNOWN
            return
        except errors.InvalidControl:
            assert name == "sandbox:write:advertiser_id=a"
            return
        running = self.pauses.get(name)
        wanted = end or NO_EXPIRY
        self.pauses[name] = max(running, wanted) if running else wanted
        self.actions += 1

    @rule(name=targets)
    def resume(self, name: str) -> None:
        try:
            result = self.controls.resume(name, actor=LOCAL_ACTOR)
        except errors.UnknownLimit:
            assert name in UNKNOWN
            return
        except errors.InvalidControl:
            assert name == "sandbox:write:advertiser_id=a"
            return
        lifted = sorted(key for key in self.pauses if covers(name, key))
        assert sorted(result.detail["lifted"]) == lifted
        for key in lifted:
            del self.pauses[key]
        self.actions += 1

    @precondition(lambda self: bool(self.pauses))
    @rule(minutes=st.integers(1, 90))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes * 60.0)
        now = self.clock.now()
        self.pauses = {key: until for key, until in self.pauses.items() if until > now}

    @invariant()
    def rate_in_force_is_the_lowest_of_configured_and_pin(self) -> None:
        applied = {
            limit.key: limit.applied
            for p in self.controls.providers.values()
            for limit in p.configured_limits()
        }
        for key, configured in CONFIGURED.items():
            spec_rate = applied.get(key) or applied["sandbox:write:advertiser_id=*"]
            force = self.controls.rates.in_force(LimitSpec(key, spec_rate))
            expected = min(per_second(configured), per_second(self.pins.get(key, configured)))
            assert per_second(force.rate) == expected, key
            assert force.source == ("pinned" if expected < per_second(configured) else "configured")

    @invariant()
    def the_limiter_holds_exactly_the_paused_keys(self) -> None:
        for key in CONFIGURED:
            held = self.controls.limiter.paused_until(key) is not None
            assert held == any(covers(paused, key) for paused in self.pauses), key

    @invariant()
    def the_overview_shows_each_pause(self) -> None:
        shown: dict[str, datetime | None] = {}
        for provider in self.controls.overview():
            if provider.pause is not None:
                shown[provider.name] = provider.pause.until
            for key in provider.keys:
                if key.pause is not None and key.key != provider.name:
                    shown[key.key] = key.pause.until
        assert shown == {
            key: (None if until >= NO_EXPIRY else until) for key, until in self.pauses.items()
        }

    @invariant()
    def one_audit_record_per_successful_action(self) -> None:
        with self.engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(audit)).scalar_one()
        assert count == self.actions


ControlsMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=20, deadline=None)
TestControlsMachine = ControlsMachine.TestCase
