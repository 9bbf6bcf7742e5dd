"""The scrape-time state: task counts cached, pauses and rates folded into provider/scope."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from sluice import metrics
from sluice.clock import FakeClock
from sluice.domain import Submission
from sluice.engine.gauges import StateReader
from sluice.engine.rates import Ceiling, RatesInForce
from sluice.providers.registry import load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.ratelimit.rate import Rate
from sluice.settings import Settings
from sluice.store import db
from sluice.store.pauses import PauseStore
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository


class Pins:
    def __init__(self, found: dict[str, list[Ceiling]]) -> None:
        self.found = found

    def ceilings(self) -> Mapping[str, Sequence[Ceiling]]:
        return self.found


def reader(tmp_path: Path, clock: FakeClock, pins: Pins | None = None) -> StateReader:
    table = {
        "preset": "sandbox-standard",
        "base_url": "http://127.0.0.1:9",
        "rate_limit": "20/s",
        "limits": [{"rate": "5/s", "scope": "write", "per": "advertiser_id"}],
        "fairness_weights": {"a1": 3},
    }
    settings = Settings(providers={"sbx": table}, default_provider="sbx")
    engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    db.ensure_schema(engine)
    repo = TaskRepository(engine, clock)
    repo.create_many([Submission("sbx", "campaign", {"advertiser_id": "a1"})] * 3)
    limiter = MemoryLimiter(clock)
    rates = RatesInForce([pins] if pins else [], clock=clock)
    return StateReader(
        engine, load_providers(settings), limiter, PauseStore(engine), rates, clock=clock
    )


def test_task_counts_are_read_at_most_once_per_cache_interval(tmp_path: Path) -> None:
    """However many scrapes, the tasks table is counted once per cache_s; then again."""
    clock = FakeClock()
    state = reader(tmp_path, clock)
    for _ in range(5):
        assert state.read().tasks[("sbx", "Not Started")] == 3
    assert state.counted == 1
    clock.advance(state.cache_s + 0.01)
    state.read()
    assert state.counted == 2


def test_queue_age_is_how_long_the_oldest_due_task_waited(tmp_path: Path) -> None:
    """Tasks due since creation are reported as waiting for as long as the clock moved."""
    clock = FakeClock()
    state = reader(tmp_path, clock)
    clock.advance(42)
    assert round(state.read().oldest_due_s["sbx"]) == 42


def test_an_account_pause_and_a_provider_pause_fold_into_scopes(tmp_path: Path) -> None:
    """A pause on one advertiser's key shows under scope write:advertiser_id, never its id;
    a limiter pause on the provider shows under scope all, with its seconds left."""
    clock = FakeClock()
    state = reader(tmp_path, clock)
    state.pauses.record("sbx:write:advertiser_id=a1", clock.now() + timedelta(seconds=30))
    state.limiter.pause("sbx", 12.0)
    families = {f.name: f for f in metrics.state_families(state.read())}
    left = {
        tuple(s.labels.values()): s.value
        for s in families["sluice_pause_remaining_seconds"].samples
    }
    assert left == {("sbx", "all"): 12.0, ("sbx", "write:advertiser_id"): 30.0}
    assert all("a1" not in str(s.labels) for f in families.values() for s in f.samples)


def test_a_pin_lowers_the_rate_in_force_beside_the_configured_one(tmp_path: Path) -> None:
    """A pinned ceiling shows as the in-force rate with its source; configured stays."""
    clock = FakeClock()
    pins = Pins({"sbx": [Ceiling("pinned", Rate(5, 1.0))]})
    state = reader(tmp_path, clock, pins)
    families = {f.name: f for f in metrics.state_families(state.read())}
    configured = {
        tuple(s.labels.values()): s.value
        for s in families["sluice_limit_configured_requests_per_second"].samples
    }
    in_force = {
        tuple(s.labels.values()): s.value
        for s in families["sluice_limit_in_force_requests_per_second"].samples
    }
    assert configured == {("sbx", "all"): 20.0}
    assert in_force == {("sbx", "all", "pinned"): 5.0}


def test_each_fairness_keys_share_and_waiting_tasks_are_gauges(tmp_path: Path) -> None:
    """Keys a1 (weight 3) and b2 each have 20 tasks due; a claim of 8 gives them 6 and 2:
    the scrape shows shares 0.75 and 0.25 and 14 and 18 tasks still waiting."""
    clock = FakeClock()
    state = reader(tmp_path, clock)
    # The reader's three tasks are tenant "default"'s: claim them first, out of the way.
    engine = state.engine
    repo = TaskRepository(engine, clock)
    queue = WorkQueue(engine)
    clock.advance(61)
    queue.claim_fair(clock.now(), 3, "w", 600, "sbx")
    clock.advance(180)  # their grants leave the last minute (and the one before)
    for key in ("a1", "b2"):
        repo.create_many([Submission("sbx", "campaign", {"n": 1}, fairness_key=key)] * 20)
    clock.advance(1)
    queue.claim_fair(clock.now(), 8, "w", 600, "sbx", {"a1": 3.0})

    families = {f.name: f for f in metrics.state_families(state.read())}

    ratio = {tuple(s.labels.values()): s.value for s in families["sluice_fair_share_ratio"].samples}
    waiting = {
        tuple(s.labels.values()): s.value
        for s in families["sluice_fair_share_waiting_tasks"].samples
    }
    assert ratio == {("sbx", "a1"): 0.75, ("sbx", "b2"): 0.25}
    assert waiting == {("sbx", "a1"): 14, ("sbx", "b2"): 18}
    # SLUICE_METRICS_FAIR_SHARE_KEYS=0: only weighted keys keep a name.
    state.fair_share_keys = 0
    families = {f.name: f for f in metrics.state_families(state.read())}
    folded = {
        tuple(s.labels.values()): s.value for s in families["sluice_fair_share_ratio"].samples
    }
    assert folded == {("sbx", "a1"): 0.75, ("sbx", "_other"): 0.25}


def test_a_pause_until_resumed_has_no_end_in_metrics(tmp_path: Path) -> None:
    """A pause set without an end (stored as lasting until 2100) reports +Inf seconds left,
    in the database and in the limiter alike, not the 2.3e9 s to the stored date."""
    from sluice.controls import NO_EXPIRY

    clock = FakeClock()
    state = reader(tmp_path, clock)
    state.pauses.record("sbx:write", NO_EXPIRY)
    state.limiter.pause("sbx", NO_EXPIRY.timestamp() - clock.now().timestamp())
    families = {f.name: f for f in metrics.state_families(state.read())}
    left = {
        tuple(s.labels.values()): s.value
        for s in families["sluice_pause_remaining_seconds"].samples
    }
    assert left == {("sbx", "all"): float("inf"), ("sbx", "write"): float("inf")}


def test_each_quota_reports_its_limit_and_use(tmp_path: Path) -> None:
    """A provider-wide quota reports its limit and the units used in its window; a quota
    kept per account folds into its scope (the account dropped) with the most used
    account's use, and reports its limit before any account used it."""
    from sluice.engine.quotas import window_of
    from sluice.store.quotas import QuotaStore

    clock = FakeClock()
    table = {
        "preset": "sandbox-standard",
        "base_url": "http://127.0.0.1:9",
        "rate_limit": "20/s",
        "quota": "500/d",
        "limits": [
            {"quota": "50/h", "scope": "write", "per": "advertiser_id"},
            {"quota": "70/h", "scope": "read", "per": "advertiser_id"},
        ],
    }
    settings = Settings(providers={"qta": table}, default_provider="qta")
    engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    db.ensure_schema(engine)
    providers = load_providers(settings)
    store = QuotaStore(engine)
    quotas = {key: quota for key, quota, _scope, _per in providers["qta"].quotas()}
    now = clock.now()
    for key, units in (("qta:1d", 7), ("qta:write:advertiser_id=a1:1h", 3)):
        pattern = key if key in quotas else "qta:write:advertiser_id=*:1h"
        store.reserve(window_of(key, quotas[pattern], now), units, now)
    store.reserve(window_of("qta:write:advertiser_id=a2:1h", quotas[pattern], now), 9, now)
    state = StateReader(
        engine,
        providers,
        MemoryLimiter(clock),
        PauseStore(engine),
        RatesInForce([], clock=clock),
        clock=clock,
        quotas=store,
    )

    families = {f.name: f for f in metrics.state_families(state.read())}

    def by_scope(name: str) -> dict[str, float]:
        return {s.labels["scope"]: s.value for s in families[name].samples}

    assert by_scope("sluice_quota_limit_units") == {
        "1d": 500,
        "write:advertiser_id:1h": 50,
        "read:advertiser_id:1h": 70,
    }
    assert by_scope("sluice_quota_used_units") == {
        "1d": 7,
        "write:advertiser_id:1h": 9,
        "read:advertiser_id:1h": 0,
    }
    assert all("a1" not in str(s.labels) for f in families.values() for s in f.samples)


def test_every_status_of_every_provider_is_a_series_from_the_start(tmp_path: Path) -> None:
    """sluice_tasks has a series at 0 for each status no task has yet, so the first task
    to end in Error is a change from 0 (delta() and increase() see it), not a new series."""
    clock = FakeClock()
    state = reader(tmp_path, clock)
    families = {f.name: f for f in metrics.state_families(state.read())}
    counts = {tuple(s.labels.values()): s.value for s in families["sluice_tasks"].samples}
    assert counts == {
        ("sbx", "Not Started"): 3,
        ("sbx", "In Progress"): 0,
        ("sbx", "Completed"): 0,
        ("sbx", "Error"): 0,
        ("sbx", "Cancelled"): 0,
    }


class BrokenLimiter(MemoryLimiter):
    """A limiter whose Redis does not answer (until ``fixed``)."""

    fixed = False

    def paused_until(self, key: str) -> float | None:
        if not self.fixed:
            raise TimeoutError("Timeout reading from the server")
        return super().paused_until(key)


def test_a_limiter_that_fails_at_every_scrape_logs_its_traceback_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis is down every scrape reads the limiter's pauses and fails: the first
    failure logs its traceback, the next ones one line each, the first success after
    them says so (it logged a traceback at every scrape)."""
    clock = FakeClock()
    state = reader(tmp_path, clock)
    broken = BrokenLimiter(clock)
    state.limiter = broken
    caplog.set_level(logging.INFO, logger="sluice.metrics")

    for _ in range(3):
        state.read()
    broken.fixed = True
    state.read()

    logged = [(r.message, r.exc_info is not None) for r in caplog.records]
    assert logged == [
        ("metrics.limiter_failed", True),
        ("metrics.limiter_failed", False),
        ("metrics.limiter_failed", False),
        ("metrics.limiter_recovered", False),
    ]


def test_a_database_that_fails_at_every_count_logs_its_traceback_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The task counts are read again every cache interval; while the database is gone
    each read fails: a traceback for the first, one line for the next, and the scrape
    still answers with the last counts."""
    clock = FakeClock()
    state = reader(tmp_path, clock)
    state.read()
    working = state.engine
    state.engine = db.make_engine(f"sqlite:///{tmp_path / 'gone' / 's.db'}")
    caplog.set_level(logging.INFO, logger="sluice.metrics")

    for _ in range(2):
        clock.advance(state.cache_s + 1)
        families = {f.name: f for f in metrics.state_families(state.read())}
    state.engine = working
    clock.advance(state.cache_s + 1)
    state.read()

    assert families["sluice_tasks"].samples  # the last counts stood
    counted = [(r.message, r.exc_info is not None) for r in caplog.records if "count" in r.message]
    assert counted == [
        ("metrics.count_failed", True),
        ("metrics.count_failed", False),
        ("metrics.count_recovered", False),
    ]
