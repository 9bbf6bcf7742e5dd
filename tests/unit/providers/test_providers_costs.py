"""Costs, bursts and quotas in provider configuration: the keys a request draws on, what it
costs there, and config errors naming file, key and reason."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sluice import errors
from sluice.domain import Operation
from sluice.providers.config import parse_provider
from sluice.providers.http import HttpProvider
from sluice.providers.limits import LimitRules

BASE: dict[str, Any] = {
    "base_url": "http://dsp.test",
    "kinds": {"audience": {"submit": "POST /a"}, "campaign": {"submit": "POST /c"}},
}


def rules(**table: Any) -> LimitRules:
    return LimitRules("dsp", parse_provider("dsp", {**BASE, **table}, "dsp.toml", {}))


def test_costs_apply_per_kind_and_operation_and_raise_the_burst() -> None:
    """audience.submit costs 5 on the write limit (burst raised to 4), campaign.submit 1;
    reads are not charged by a write limit; KIND.OPERATION wins over OPERATION."""
    limits = rules(
        rate_limit="50/s",
        cost={"submit": 2},
        limits=[{"rate": "150/min", "scope": "write", "cost": {"audience.submit": 5}}],
    )
    heavy = limits.limits_for("write", {}, operation=Operation.SUBMIT, kinds=["audience"])
    assert [(s.key, s.cost, s.burst) for s in heavy] == [("dsp", 2, 1), ("dsp:write", 5, 4)]
    light = limits.limits_for("write", {}, operation=Operation.SUBMIT, kinds=["campaign"])
    assert [(s.key, s.cost) for s in light] == [("dsp", 2), ("dsp:write", 1)]
    poll = limits.limits_for("read", None, operation=Operation.POLL, kinds=["audience", None])
    assert [(s.key, s.cost) for s in poll] == [("dsp", 1)]


def test_a_batch_poll_costs_its_heaviest_kind_once() -> None:
    limits = rules(rate_limit="50/s", cost={"audience.poll": 3, "poll": 2})
    batch = limits.limits_for(
        "read", None, operation=Operation.POLL, kinds=["campaign", "audience", "campaign"]
    )
    assert [s.cost for s in batch] == [3]


def test_fair_shares_count_the_heaviest_provider_wide_cost() -> None:
    """What a task uses of the shared budget (the unit fair shares count in): the heaviest
    cost among the provider-wide limits and quotas its operation draws on, not a cost kept
    per account; a polled task counts its part of a full batch poll."""
    table = {
        **BASE,
        "poll": {
            "request": "GET /status?ids={ids}",
            "batch_size": 50,
            "status_map": {"READY": "Completed"},
        },
        "rate_limit": "50/s",
        "cost": {"poll": 2},
        "limits": [
            {"rate": "150/min", "scope": "write", "cost": {"audience.submit": 5}},
            {"rate": "10/s", "scope": "write", "per": "adv", "cost": {"submit": 9}},
        ],
    }
    provider = HttpProvider("dsp", parse_provider("dsp", table, "dsp.toml", {}))

    assert provider.fair_cost("audience", Operation.SUBMIT) == 5.0
    assert provider.fair_cost("campaign", Operation.SUBMIT) == 1.0
    assert provider.fair_cost("campaign", Operation.LOOKUP) == 1.0
    assert provider.fair_cost("audience", Operation.POLL) == 2.0 / 50


def test_quotas_are_keyed_by_scope_account_and_window() -> None:
    limits = rules(
        rate_limit="10/s",
        quota="15000/d",
        quota_reset="America/Los_Angeles",
        limits=[
            {"quota": "600/10min", "scope": "write", "per": "adv", "cost": {"audience.submit": 5}}
        ],
    )
    specs = limits.quotas_for(Operation.SUBMIT, {"adv": "a1"}, ["audience"])
    assert [(s.key, s.cost, s.quota.reset) for s in specs] == [
        ("dsp:1d", 1, "America/Los_Angeles"),
        ("dsp:write:adv=a1:10min", 5, "UTC"),
    ]
    assert [s.key for s in limits.quotas_for(Operation.POLL, None)] == ["dsp:1d"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"rate_limit": "10/s", "cost": {"submit": 0}},
            "providers.dsp.cost.submit: a cost must be >= 1",
        ),
        (
            {"rate_limit": "10/s", "cost": {"delete": 2}},
            "providers.dsp.cost.delete: unknown operation 'delete'",
        ),
        (
            {"rate_limit": "10/s", "cost": {"submit": 11}},
            "providers.dsp.cost.submit: a cost of 11 is above this limit's count (10)",
        ),
        (
            {"rate_limit": "10/s", "cost": {"ad.submit": 2}},
            "providers.dsp.cost.ad.submit: unknown kind 'ad'",
        ),
        (
            {"limits": [{"rate": "10/s", "scope": "write", "cost": {"poll": 2}}]},
            "providers.dsp.limits[0].cost.poll: poll is a read; this limit counts writes only",
        ),
        (
            {"rate_limit": "100/min", "quota": "5/s"},
            "providers.dsp.quota: the quota window (1s) is shorter than the provider's rate "
            "window (1min)",
        ),
        (
            {"rate_limit": "10/s", "limits": [{"quota": "10/500ms"}]},
            "providers.dsp.limits[0].quota: the quota window (500ms) is shorter",
        ),
        (
            {"quota": "10/d", "quota_reset": "Mars/Olympus"},
            "providers.dsp.quota_reset: unknown time zone 'Mars/Olympus'",
        ),
        (
            {"rate_limit": "10/s", "burst": 10},
            "providers.dsp.burst: must be below the rate's count",
        ),
        (
            {"limits": [{"rate": "1/s", "quota": "1/d"}]},
            "providers.dsp.limits[0]: give either rate",
        ),
    ],
)
def test_bad_budgets_are_config_errors_naming_file_key_and_reason(
    table: dict[str, Any], message: str
) -> None:
    with pytest.raises(errors.InvalidValue) as caught:
        parse_provider("dsp", {**BASE, **table}, "dsp.toml", {})
    assert str(caught.value).startswith(f"dsp.toml: {message}")


def test_a_paced_window_of_an_hour_or_more_warns_towards_quota(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="sluice.providers"):
        parse_provider("dsp", {**BASE, "rate_limit": ["10/s", "15000/d"]}, "dsp.toml", {})
    (record,) = [r for r in caplog.records if r.getMessage() == "providers.long_paced_window"]
    assert "quota" in record.__dict__["hint"]
