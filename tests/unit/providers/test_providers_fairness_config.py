"""``fairness_field`` and ``fairness_weights``: loaded onto the provider, or refused at start
with one line naming the file, the key and the reason."""

from __future__ import annotations

from typing import Any

import pytest

from sluice import errors
from sluice.providers.registry import load_providers
from sluice.settings import Settings

from .fakes import ACME, with_changes


def load(table: dict[str, Any]) -> Any:
    return load_providers(
        Settings(providers={"acme": table}, default_provider="acme", config_file="sluice.toml"),
        environ={},
    )["acme"]


def test_fairness_settings_reach_the_provider() -> None:
    provider = load(
        with_changes(ACME, fairness_field="account.id", fairness_weights={"adv-1": 3, "b": 0.5})
    )

    assert provider.fairness_field == "account.id"
    assert provider.fairness_weights == {"adv-1": 3.0, "b": 0.5}


def test_by_default_the_tenant_is_the_key_and_every_weight_is_one() -> None:
    provider = load(ACME)

    assert provider.fairness_field is None
    assert provider.fairness_weights == {}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"fairness_field": "advertiser id"},
            "sluice.toml: providers.acme.fairness_field: 'advertiser id' is not a dotted "
            "payload path",
        ),
        (
            {"fairness_field": "a..b"},
            "sluice.toml: providers.acme.fairness_field: 'a..b' is not a dotted payload path",
        ),
        (
            {"fairness_field": 3},
            "sluice.toml: providers.acme.fairness_field: 3 is not a dotted payload path",
        ),
        (
            {"fairness_weights": {"adv-1": 0}},
            "sluice.toml: providers.acme.fairness_weights.adv-1: a weight must be a number > 0",
        ),
        (
            {"fairness_weights": {"adv-1": -2}},
            "sluice.toml: providers.acme.fairness_weights.adv-1: a weight must be a number > 0",
        ),
        (
            {"fairness_weights": {"adv-1": "3"}},
            "sluice.toml: providers.acme.fairness_weights.adv-1: a weight must be a number > 0",
        ),
        (
            {"fairness_weights": {"adv-1": True}},
            "sluice.toml: providers.acme.fairness_weights.adv-1: a weight must be a number > 0",
        ),
        (
            {"fairness_weights": {"adv-1": 1001}},
            "sluice.toml: providers.acme.fairness_weights.adv-1: a weight must be a number > 0 "
            "and <= 1000",
        ),
        (
            {"fairness_weights": ["adv-1"]},
            "sluice.toml: providers.acme.fairness_weights: must be a table of fairness keys",
        ),
    ],
)
def test_bad_fairness_settings_are_refused_naming_file_key_and_reason(
    changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(errors.ConfigError) as info:
        load(with_changes(ACME, **changes))

    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(expected), message
