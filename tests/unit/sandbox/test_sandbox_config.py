"""Sandbox configuration: profile defaults, the [sandbox] section, flags, and clear errors."""

from __future__ import annotations

import pydantic
import pytest

from sluice.sandbox.config import LimitSpec, SandboxConfig
from sluice.sandbox.profiles import PROFILES, ThrottleStyle


def test_defaults_are_the_standard_profile_with_one_app_limit_and_no_faults() -> None:
    """An empty section gives the standard profile, 50 calls/s per app, and no faults."""
    config = SandboxConfig.from_settings({})
    assert config.profile == "standard"
    assert config.limits == [LimitSpec(name="app", per="app", scope="all", limit=50, window_s=1)]
    assert not config.faults.any_enabled
    assert config.fixtures == {}


def test_unknown_profile_is_a_value_error_listing_the_known_ones() -> None:
    """Naming a profile that does not exist fails with the list of known profiles."""
    with pytest.raises(ValueError, match="unknown sandbox profile 'acme'; known: bare, demo"):
        SandboxConfig.from_settings({"profile": "acme"})


def test_demo_profile_brings_low_faults_and_the_prototype_fixtures() -> None:
    """The demo profile has the prototype's three fixtures and low, non-zero fault rates."""
    config = SandboxConfig.from_settings({"profile": "demo"})
    assert {k: v.status for k, v in config.fixtures.items()} == {
        "1": "In Progress",
        "2": "Completed",
        "3": "Error",
    }
    assert config.fixtures["3"].error_message == "Invalid IP range: 192.168.1.256"
    assert 0 < config.faults.error_5xx <= 0.05
    assert config.faults.hang_s == 3.0


def test_section_merges_over_profile_defaults_and_flags_win_over_section() -> None:
    """Nested tables merge key by key, lists replace, and non-None flags override the file."""
    section = {
        "profile": "demo",
        "seed": 7,
        "port": 9100,
        "accept_delay_s": [0, 0.5],
        "process_delay_s": 1,
        "faults": {"error_5xx": 0.2},
        "fixtures": {"4": {"status": "Completed"}},
        "limits": [{"name": "writes", "scope": "write", "limit": 5, "window_s": 60}],
    }
    config = SandboxConfig.from_settings(section, seed=None, port=9200, profile="demo")
    assert (config.seed, config.port) == (7, 9200)
    assert config.faults.error_5xx == 0.2
    assert config.faults.hang_s == 3.0
    assert set(config.fixtures) == {"1", "2", "3", "4"}
    assert config.accept_delay_s == (0, 0.5)
    assert config.process_delay_s == (1, 1)
    assert [spec.name for spec in config.limits] == ["writes"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"colour": "blue"}, "colour"),
        ({"accept_delay_s": [2, 1]}, "min 2 above max 1"),
        ({"limits": [{"name": "a", "limit": 0, "window_s": 1}]}, "limit"),
        ({"limits": [{"name": "a", "limit": 1, "window_s": 1, "per": "user"}]}, "per"),
        (
            {"limits": [{"name": "a", "limit": 1, "window_s": 1}] * 2},
            "limit names must be unique; repeated: a",
        ),
        ({"faults": {"error_5xx": 1.5}}, "error_5xx"),
        ({"faults": {"error_5xx": 0.6, "reset": 0.6}}, "add up to 1.2"),
        # Durations are at most ten years (a 1e308 s bucket window was a 500 at the call).
        ({"limits": [{"name": "a", "kind": "bucket", "limit": 5, "window_s": 1e308}]}, "window_s"),
        ({"limits": [{"name": "a", "limit": 5, "window_s": float("inf")}]}, "window_s"),
        ({"process_delay_s": [0, 1e12]}, "process_delay_s"),
        ({"token_lifetime_s": 1e12}, "token_lifetime_s"),
        ({"maintenance": [[0, 1e12]]}, "duration_s"),
        # Python's bool is an int: `seed = true` was seed 1, `limit = true` a limit of 1.
        ({"seed": True}, "seed"),
        ({"limits": [{"name": "a", "limit": True, "window_s": 1}]}, "limit"),
        ({"faults": {"error_5xx": True}}, "error_5xx"),
        ({"costs": {"POST /v1/audiences": True}}, "costs"),
        ({"maintenance": [[0, True]]}, "duration_s"),
    ],
)
def test_invalid_sections_fail_naming_the_key(section: dict[str, object], message: str) -> None:
    """A bad [sandbox] section is rejected with a message that names what is wrong."""
    with pytest.raises(pydantic.ValidationError, match=message):
        SandboxConfig.from_settings(section)


def test_runtime_update_changes_limits_and_faults_but_not_the_profile() -> None:
    """PUT-style updates may touch limits, faults and delays only, merging faults."""
    config = SandboxConfig.from_settings({"faults": {"slow": 0.1}})
    updated = config.updated({"faults": {"reset": 0.3}, "process_delay_s": [0, 0]})
    assert (updated.faults.slow, updated.faults.reset) == (0.1, 0.3)
    assert updated.process_delay_s == (0, 0)
    with pytest.raises(ValueError, match="cannot change profile at run time"):
        config.updated({"profile": "meta"})


def test_every_profile_has_distinct_final_words_and_a_throttle_style() -> None:
    """Approved and rejected differ in every profile, so a client can tell them apart."""
    assert set(PROFILES) == {
        *("standard", "headers", "meta", "bare", "demo"),
        *("dv360", "google-ads", "hidden", "hidden-headers", "leaky"),
    }
    for profile in PROFILES.values():
        assert profile.words.approved != profile.words.rejected
        assert isinstance(profile.throttle, ThrottleStyle)
