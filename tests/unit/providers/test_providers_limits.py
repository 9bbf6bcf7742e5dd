"""Limits: provider-wide, read/write budgets, per-account budgets and several windows."""

from __future__ import annotations

import pytest

from sluice import errors
from sluice.ratelimit.base import InFlight
from sluice.ratelimit.rate import LimitSpec, Rate

from .fakes import ACME, make_provider, with_changes


def test_provider_wide_rate_is_keyed_by_the_provider_name() -> None:
    """rate_limit = '10/s' is one limit on key 'acme' for reads and writes alike."""
    provider = make_provider(ACME)
    expected = [LimitSpec("acme", Rate(10, 1.0))]
    assert provider.limits_for("write", {"name": "x"}) == expected
    assert provider.limits_for("read", None) == expected
    assert provider.pause_key() == "acme"


def test_several_windows_get_one_key_each() -> None:
    """rate_limit may list several windows; each has its own key under the provider."""
    provider = make_provider(with_changes(ACME, rate_limit=["10/s", "1000/h"]))
    assert provider.limits_for("read", None) == [
        LimitSpec("acme:1s", Rate(10, 1.0)),
        LimitSpec("acme:1h", Rate(1000, 3600.0)),
    ]


def test_read_write_and_per_account_budgets_apply_where_they_match() -> None:
    """A DV360-like setup: writes and per-advertiser budgets apply only to matching requests."""
    table = with_changes(
        ACME,
        rate_limit="1500/min",
        limits=[
            {"rate": "700/min", "scope": "write"},
            {"rate": "300/min", "per": "advertiser_id"},
            {"rate": "150/min", "scope": "write", "per": "advertiser_id"},
        ],
    )
    provider = make_provider(table)
    assert provider.limits_for("write", {"advertiser_id": 42}) == [
        LimitSpec("acme", Rate(1500, 60.0)),
        LimitSpec("acme:write", Rate(700, 60.0)),
        LimitSpec("acme:advertiser_id=42", Rate(300, 60.0)),
        LimitSpec("acme:write:advertiser_id=42", Rate(150, 60.0)),
    ]
    assert provider.limits_for("read", None) == [LimitSpec("acme", Rate(1500, 60.0))]


def test_every_key_starts_with_the_pause_key() -> None:
    """A pause on the provider name covers every limit key of the provider."""
    table = with_changes(
        ACME,
        rate_limit=["5/s", "100/min"],
        limits=[{"rate": "2/s", "scope": "write", "per": "account.id"}],
    )
    provider = make_provider(table)
    keys = [spec.key for spec in provider.limits_for("write", {"account": {"id": "a1"}})]
    assert keys == ["acme:1s", "acme:1min", "acme:write:account.id=a1"]
    assert all(key.split(":")[0] == provider.pause_key() for key in keys)


def test_max_in_flight_becomes_an_in_flight_cap() -> None:
    """max_in_flight caps concurrent requests; absent, there is no cap."""
    provider = make_provider(with_changes(ACME, max_in_flight=4, timeout="5s"))
    assert provider.in_flight() == InFlight("acme:in_flight", 4, 60.0)
    assert make_provider(ACME).in_flight() is None


def test_tuning_keys_reach_the_provider() -> None:
    """timeout, retries, deadline and rate_margin are exposed in seconds."""
    provider = make_provider(
        with_changes(
            ACME,
            timeout="3s",
            max_attempts=5,
            retry_base="250ms",
            retry_max="2min",
            deadline="1h",
            rate_margin=0.05,
        )
    )
    assert (provider.timeout_s, provider.max_attempts) == (3.0, 5)
    assert (provider.retry_base_s, provider.retry_max_s) == (0.25, 120.0)
    assert provider.deadline_s == 3600.0
    assert provider.rate_margin == 0.05


def test_defaults_are_documented_values() -> None:
    """Without tuning keys: 10 s timeout, 8 attempts, 1 s..5 min backoff, no deadline."""
    provider = make_provider(ACME)
    assert provider.timeout_s == 10.0
    assert provider.max_attempts == 8
    assert (provider.retry_base_s, provider.retry_max_s) == (1.0, 300.0)
    assert provider.deadline_s is None
    assert provider.rate_margin is None


def test_judges_says_whether_the_provider_may_judge_spacing() -> None:
    """judges = "spacing" (the default) or "window"; anything else is refused by name."""
    assert make_provider(ACME).judges_spacing is True
    assert make_provider(with_changes(ACME, judges="spacing")).judges_spacing is True
    assert make_provider(with_changes(ACME, judges="window")).judges_spacing is False
    with pytest.raises(errors.ConfigError, match="judges"):
        make_provider(with_changes(ACME, judges="bucket"))


def test_rate_margin_stretches_the_window_but_keeps_the_key() -> None:
    """A provider's rate_margin spaces its grants further apart without renaming its keys."""
    from sluice.providers.config import parse_provider
    from sluice.providers.http import HttpProvider

    table = {
        "base_url": "http://x",
        "rate_limit": "10/s",
        "rate_margin": 0.05,
        "kinds": {"campaign": {"submit": "POST /c", "external_id_field": "id"}},
    }
    provider = HttpProvider("acme", parse_provider("acme", table, "t", {}))
    (spec,) = provider.limits_for("write", None)
    assert spec.key == "acme"
    assert spec.rate.limit == 10
    assert spec.rate.window_s == 1.05


def test_a_window_judged_providers_grants_may_go_up_to_the_held_window_late() -> None:
    """``judges = "window"`` reaches the dispatcher's grants, which may then be sent up to
    the held window late (``sluice/ratelimit/holds.py``)."""
    from sluice.clock import FakeClock
    from sluice.domain import DueTask, Operation, Phase, TaskStatus, WorkUnit
    from sluice.engine.dispatcher import acquire
    from sluice.ratelimit.memory import MemoryLimiter

    assert make_provider(ACME).judges_spacing is True
    provider = make_provider(with_changes(ACME, judges="window"))
    assert provider.judges_spacing is False
    limiter = MemoryLimiter(clock=FakeClock(), margin=0.005, catch_up_s=0.002, cold_start=False)
    task = DueTask(
        1,
        "acme",
        "campaign",
        {"name": "x"},
        None,
        None,
        None,
        None,
        TaskStatus.NOT_STARTED,
        Phase.READY,
        False,
        0,
        0,
        None,
        None,
    )
    grant = acquire(limiter, provider, WorkUnit("acme", Operation.SUBMIT, (task,)), None)
    assert grant.granted
    assert grant.send_within_s == min(1.0, provider.timeout_s)  # 10/s: a 1 s window
