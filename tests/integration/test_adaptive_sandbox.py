"""Adaptive limits with real parts: the sandbox's hidden limit over loopback, the runtime's
learner on SQLite, and concurrent drops from many processes' worth of learners on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.clock import FakeClock
from sluice.engine.adaptive import Learner, rates_in_force
from sluice.engine.rates import RatesInForce, per_second
from sluice.providers.base import LimitObservation, RateLimited
from sluice.providers.config import AdaptiveConfig
from sluice.providers.http import HttpProvider
from sluice.ratelimit.rate import LimitSpec, Rate
from sluice.store import db
from sluice.store.audit import AuditLog
from sluice.store.learned import LearnedRateStore
from sluice.store.usage import UsageStore

from .conftest import make_runtime

HIDDEN_AT_2 = [{"name": "hidden", "limit": 2, "window_s": 1, "schedule": [[600, 2]]}]
HIDDEN_AT_10 = [{"name": "hidden", "limit": 10, "window_s": 1, "schedule": [[600, 10]]}]


def provider_table(base_url: str, preset: str, **extra: Any) -> dict[str, Any]:
    return {
        "preset": preset,
        "base_url": base_url,
        "rate_limit": "100/s",
        "adaptive": True,
        **extra,
    }


def send(provider: HttpProvider, client: httpx.Client, n: int) -> list[Any]:
    from sluice.providers.base import TaskRef

    return [
        provider.submit(
            client,
            TaskRef(
                task_id=i,
                kind="campaign",
                payload={"advertiser_id": "adv-1", "name": f"c{i}", "budget": 1.0},
                external_id=None,
                client_ref=f"sl-{i}",
                parent_external_id=None,
            ),
        )
        for i in range(n)
    ]


def test_a_hidden_limit_refused_with_no_numbers_drops_the_rate_for_every_worker(
    sandbox: Any, tmp_path: Path
) -> None:
    base_url = sandbox(profile="hidden", limits=HIDDEN_AT_2)
    runtime = make_runtime(tmp_path, {"sandbox": provider_table(base_url, "sandbox-bare")})
    try:
        provider = runtime.providers["sandbox"]
        assert isinstance(provider, HttpProvider)
        answers = send(provider, runtime.clients["sandbox"], 4)
        refused = [a for a in answers if isinstance(a, RateLimited)]
        assert refused, "the sandbox holds the calls to 2 in any second"
        assert all(a.retry_after_s == pytest.approx(0.1) for a in refused)
        spec = provider.limits_for("write", None)[0]
        runtime.rates.refresh()
        now = runtime.rates.in_force(spec)
        assert now.source == "learned"
        assert per_second(now.rate) == pytest.approx(85.0, rel=0.05)  # climbing since
        # A second process on the same database sees the same learned rate.
        other = make_runtime(tmp_path, {"sandbox": provider_table(base_url, "sandbox-bare")})
        try:
            assert per_second(other.rates.in_force(spec).rate) == pytest.approx(85.0, rel=0.05)
            listed = {k.key: k for k in rates_in_force(other.providers, other.rates, other.learner)}
            assert listed["sandbox"].configured_per_s == 100.0
            assert listed["sandbox"].source == "learned"
        finally:
            other.close()
        drops = AuditLog(runtime.repo.engine).list(action="provider.rate_learned").items
        assert [d.target for d in drops] == ["provider:sandbox"]
    finally:
        runtime.close()


def test_headers_that_reveal_the_limit_set_it_without_a_drop(sandbox: Any, tmp_path: Path) -> None:
    base_url = sandbox(profile="hidden-headers", limits=HIDDEN_AT_10)
    signal = {
        "limit_header": "X-RateLimit-Limit",
        "remaining_header": "X-RateLimit-Remaining",
        "ietf_headers": True,
    }
    runtime = make_runtime(
        tmp_path,
        {"sandbox": provider_table(base_url, "sandbox-headers", rate_limit_signal=signal)},
    )
    try:
        provider = runtime.providers["sandbox"]
        assert isinstance(provider, HttpProvider)
        send(provider, runtime.clients["sandbox"], 3)
        spec = provider.limits_for("write", None)[0]
        runtime.rates.refresh()
        now = runtime.rates.in_force(spec)
        assert now.source == "learned"
        assert per_second(now.rate) == pytest.approx(10.0)
        assert "limit 10" in now.reason
        assert LearnedRateStore(runtime.repo.engine).all() == []
    finally:
        runtime.close()


def test_concurrent_refusals_on_postgresql_make_exactly_one_drop(postgres_url: str) -> None:
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    try:
        clock = FakeClock()
        spec = LimitSpec("acme", Rate(50, 1.0))
        config = AdaptiveConfig(hold=1.0)
        learners = [Learner(LearnedRateStore(engine), {"acme": config}, clock) for _ in range(8)]
        start = threading.Barrier(len(learners))

        def refuse(learner: Learner) -> None:
            start.wait()
            for _ in range(5):
                learner.observe(LimitObservation("acme", (spec,), (), True, False, clock.time()))

        threads = [threading.Thread(target=refuse, args=(learner,)) for learner in learners]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        drops = LearnedRateStore(engine).all()
        assert len(drops) == 1
        assert drops[0].low_per_s == pytest.approx(42.5)
        assert len(AuditLog(engine).list(action="provider.rate_learned").items) == 1
        # After the hold, the next burst makes the next drop, from the rate then in force.
        clock.advance(2.0)
        for learner in learners:
            learner.observe(LimitObservation("acme", (spec,), (), True, False, clock.time()))
        drops = LearnedRateStore(engine).all()
        assert drops[0].decreases == 2
        rates = RatesInForce([learners[0]], clock=clock, refresh_s=0.0)
        assert per_second(rates.in_force(spec).rate) == pytest.approx(drops[0].low_per_s)
    finally:
        engine.dispose()


def test_the_climb_is_capped_by_what_every_worker_sent_on_postgresql(postgres_url: str) -> None:
    """Two workers' usage counters on PostgreSQL cap both processes' climb alike."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    try:
        clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
        spec = LimitSpec("acme", Rate(50, 1.0))
        usage = UsageStore(engine)
        learners = [
            Learner(LearnedRateStore(engine), {"acme": AdaptiveConfig()}, clock, usage)
            for _ in range(2)
        ]
        learners[0].observe(LimitObservation("acme", (spec,), (), True, False, clock.time()))
        clock.advance(120.0)  # the law alone is back at 50/s by now

        def rates() -> set[float]:
            return {
                round(
                    per_second(RatesInForce([lr], clock=clock, refresh_s=0).in_force(spec).rate), 6
                )
                for lr in learners
            }

        assert rates() == {42.5}  # unused: held at the rate it dropped to
        second = clock.now().replace(microsecond=0)
        for _worker in range(2):  # two workers, 11/s each, in each of the last 10 seconds
            usage.add({("acme", "sent", second - timedelta(seconds=k)): 11 for k in range(10)})
        assert rates() == {44.0}
    finally:
        engine.dispose()
