"""Configuration: clear start-up errors naming file, key and reason; presets and merging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice import errors
from sluice.domain import TaskStatus
from sluice.providers.config import ProviderConfig
from sluice.providers.http import HttpProvider
from sluice.providers.registry import deep_merge, load_providers, preset_names
from sluice.settings import Settings, load_settings

from .fakes import ACME, BATCH_POLL, with_changes

SANDBOX_PRESETS = [
    "sandbox-bare",
    "sandbox-demo",
    "sandbox-headers",
    "sandbox-hidden",
    "sandbox-meta",
    "sandbox-standard",
]


def config_error(providers: dict[str, Any], **settings: Any) -> str:
    """The ConfigError text for these provider tables."""
    with pytest.raises(errors.ConfigError) as info:
        load_providers(Settings(providers=providers, **settings), environ={})
    return str(info.value)


def test_error_names_file_key_and_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value in sluice.toml is reported as 'sluice.toml: providers.acme.<key>: <reason>'."""
    (tmp_path / "sluice.toml").write_text(
        '[sluice]\ndefault_provider = "acme"\n'
        '[providers.acme]\nbase_url = "http://127.0.0.1:9100"\n'
        '[providers.acme.poll]\nrequest = "GET /statuses"\nbatch_size = 0\n'
        'status_map = { Completed = "Completed" }\n'
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.ConfigError) as info:
        load_providers(load_settings(), environ={})
    assert str(info.value) == "sluice.toml: providers.acme.poll.batch_size: must be >= 1, got 0"


def test_a_boolean_where_a_number_belongs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`burst = true` was taken as a burst of 1 (Python's bool is an int), and so was any
    integer or number given true; each is now a line naming the file, the key and why."""
    (tmp_path / "sluice.toml").write_text(
        '[sluice]\ndefault_provider = "acme"\n'
        '[providers.acme]\nbase_url = "http://127.0.0.1:9100"\nrate_limit = "10/s"\n'
        "burst = true\nmax_in_flight = true\nrate_margin = false\n"
        "[providers.acme.rate_limit_signal]\nstatuses = [429, true]\n"
        '[[providers.acme.limits]]\nrate = "5/s"\nscope = "write"\nburst = true\n'
        '[providers.acme.poll]\nrequest = "GET /statuses"\nbatch_size = true\n'
        'status_map = { Completed = "Completed" }\n'
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.ConfigError) as info:
        load_providers(load_settings(), environ={})
    integer = "must be an integer, not true or false"
    assert sorted(str(info.value).splitlines()) == [
        f"sluice.toml: providers.acme.burst: {integer}",
        f"sluice.toml: providers.acme.limits[0].burst: {integer}",
        f"sluice.toml: providers.acme.max_in_flight: {integer}",
        f"sluice.toml: providers.acme.poll.batch_size: {integer}",
        f"sluice.toml: providers.acme.rate_limit_signal.statuses[1]: {integer}",
        "sluice.toml: providers.acme.rate_margin: must be a number, not true or false",
    ]


def test_a_key_holding_a_newline_is_named_on_one_line() -> None:
    """A cost or an unknown key named "\\n" split its problem's line in two (found by the
    property test below); control characters in a key are shown escaped."""
    text = config_error(
        {"acme": with_changes(ACME, rate_limit="10/s", cost={"\n": 1}, **{"a\nb": 1})},
        default_provider="acme",
    )

    assert sorted(text.splitlines()) == [
        "settings: providers.acme.a\\nb: unknown key; known: preset, "
        + ", ".join(ProviderConfig.model_fields),
        "settings: providers.acme.cost.\\n: unknown operation '\\n'; known: submit, lookup, "
        "poll (as OPERATION or KIND.OPERATION)",
    ]


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes across providers come back together, one line each."""
    text = config_error(
        {
            "acme": with_changes(ACME, rate_limit="10/m", timeout="soon", bogus=1),
            "other": {"base_url": "ftp://x"},
        },
        default_provider="acme",
    )
    lines = text.splitlines()
    assert "settings: providers.acme.rate_limit: invalid rate '10/m'" in lines[0]
    assert any(
        line.startswith("settings: providers.acme.timeout: must be a duration") for line in lines
    )
    assert any(
        "providers.acme.bogus: unknown key; known: preset, base_url" in line for line in lines
    )
    assert any(
        line
        == "settings: providers.other.base_url: must start with http:// or https://, got 'ftp://x'"
        for line in lines
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"poll": with_changes(BATCH_POLL, status_map={"done": "Finished"})},
            "providers.acme.poll.status_map.done: must be one of 'Not Started', 'In Progress', "
            "'Completed', 'Error' or 'Cancelled', got 'Finished'",
        ),
        (
            {"kinds": {"c": {"submit": "POST /c/{campaign}"}}},
            "providers.acme.kinds.c.submit: unknown placeholder {campaign}; usable here: "
            "{client_ref}, {parent_external_id}, {payload.FIELD}",
        ),
        (
            {"kinds": {"c": {"submit": "FETCH /c"}}},
            "providers.acme.kinds.c.submit: unknown HTTP method 'FETCH'",
        ),
        (
            {"kinds": {"c": {"submit": "POST /c", "status": "GET /c/{external_id}"}}},
            "providers.acme.kinds.c.status_map: required when a status request is set",
        ),
        (
            {"kinds": {"c": {"submit": "POST /c", "lookup": "GET /c?ref={client_ref}"}}},
            "providers.acme.kinds.c.lookup: uses {client_ref} but client_ref_field is not set",
        ),
        (
            {"retry_base": "1min", "retry_max": "10s"},
            "providers.acme.retry_max: must be >= retry_base",
        ),
        ({"max_attempts": 0}, "providers.acme.max_attempts: must be >= 1, got 0"),
        ({"max_attempts": 5000}, "providers.acme.max_attempts: must be <= 1000, got 5000"),
        (
            {"rate_limit": "1000/h", "rate_margin": 1e308},
            "providers.acme.rate_margin: must be <= 1",
        ),
        (
            {"quota": "100/60h", "quota_reset": "America/Los_Angeles"},
            "providers.acme.quota: a quota window that resets on a calendar must divide a day",
        ),
        (
            {"limits": [{"quota": "100/7h", "reset": "UTC"}]},
            "providers.acme.limits[0].quota: a quota window that resets on a calendar",
        ),
        (
            {"limits": [{"rate": "5/s", "per": "a..b"}]},
            "providers.acme.limits[0].per: 'a..b' is not a dotted payload path",
        ),
        # A reset or pace with no quota to apply to loaded and did nothing.
        (
            {"quota_reset": "rolling"},
            'providers.acme.quota_reset: there is no quota here; set quota = "15000/d" or '
            "remove it",
        ),
        (
            {"quota_pace": True},
            'providers.acme.quota_pace: there is no quota here; set quota = "15000/d" or remove it',
        ),
        (
            {"limits": [{"rate": "100/min", "reset": "rolling"}]},
            "providers.acme.limits[0].reset: reset is for a quota; this limit is a rate",
        ),
        (
            {"limits": [{"rate": "100/min", "pace": True}]},
            "providers.acme.limits[0].pace: pace is for a quota; this limit is a rate",
        ),
        (
            {"rate_limit": "1/99999999d"},
            "providers.acme.rate_limit: invalid rate '1/99999999d': the window must be at most "
            "3650d",
        ),
        (
            {"limits": [{"quota": "5/3651d", "reset": "rolling"}]},
            "providers.acme.limits[0].quota: invalid rate '5/3651d': the window must be at most",
        ),
        (
            {"limits": [{"rate": "5/s", "scope": "writes"}]},
            "providers.acme.limits[0].scope: must be one of 'all', 'read' or 'write', got 'writes'",
        ),
        (
            {"rate_limit": ["10/s", "20/s"]},
            "providers.acme.limits: two limits have the same scope, per and window",
        ),
        ({"kinds": {}}, "providers.acme: nothing to do"),
        (
            {"auth": {"request": "POST /token", "value": "Bearer"}},
            "providers.acme.auth.value: must contain {token}",
        ),
    ],
)
def test_bad_values_are_explained(change: dict[str, Any], expected: str) -> None:
    """Each mistake is reported with its dotted key and what is wrong."""
    assert expected in config_error({"acme": with_changes(ACME, **change)}, default_provider="acme")


def test_unknown_default_provider_lists_known_ones() -> None:
    """default_provider must name a configured provider."""
    text = config_error(
        {"acme": ACME, "sandbox": {"preset": "sandbox-standard"}}, default_provider="acme2"
    )
    assert text == (
        "settings: sluice.default_provider: unknown provider 'acme2'; known: acme, sandbox"
    )


def test_no_providers_is_allowed() -> None:
    """With no [providers.*] tables there is nothing to load and nothing to check."""
    assert load_providers(Settings(), environ={}) == {}


def test_unknown_preset_lists_the_shipped_ones() -> None:
    """preset must name a file in sluice/providers/presets/."""
    text = config_error({"sandbox": {"preset": "sandbox-fast"}}, default_provider="sandbox")
    assert text == (
        "settings: providers.sandbox.preset: unknown preset 'sandbox-fast'; known: "
        + ", ".join(SANDBOX_PRESETS)
    )


def test_shipped_presets_are_the_sandbox_profiles() -> None:
    """One preset per sandbox profile is packaged."""
    assert preset_names() == SANDBOX_PRESETS


@pytest.mark.parametrize("preset", SANDBOX_PRESETS)
def test_every_preset_loads_with_all_kinds_lookup_and_batch_poll(preset: str) -> None:
    """Each preset covers the five kinds, looks them up by client_ref and polls in batches."""
    providers = load_providers(
        Settings(providers={"sandbox": {"preset": preset}}, default_provider="sandbox"),
        environ={},
    )
    provider = providers["sandbox"]
    assert isinstance(provider, HttpProvider)
    assert provider.kinds == {"advertiser", "campaign", "ad_group", "ad", "audience"}
    assert all(provider.supports_lookup(kind) for kind in provider.kinds)
    assert provider.can_track()
    assert not provider.is_synchronous("campaign")
    assert provider.config.poll is not None
    assert str(provider.config.poll.request) == "GET /v1/status?ids={ids}"


def test_demo_preset_maps_the_prototype_words_to_themselves() -> None:
    """The demo preset reads the prototype's four words as the same statuses."""
    provider = load_providers(
        Settings(providers={"demo": {"preset": "sandbox-demo"}}, default_provider="demo"),
        environ={},
    )["demo"]
    assert isinstance(provider, HttpProvider)
    assert provider.config.poll is not None
    assert provider.config.poll.status_map == {
        word: TaskStatus(word) for word in ("Not Started", "In Progress", "Completed", "Error")
    }


def test_user_keys_override_preset_keys_table_by_table() -> None:
    """Overrides deep-merge: one key of a nested table changes, the rest stay."""
    table = {
        "preset": "sandbox-standard",
        "base_url": "http://10.0.0.5:9000",
        "poll": {"batch_size": 25},
        "kinds": {"campaign": {"submit": "POST /v2/campaigns"}},
    }
    provider = load_providers(Settings(providers={"sb": table}, default_provider="sb"), environ={})[
        "sb"
    ]
    assert isinstance(provider, HttpProvider)
    assert provider.base_url == "http://10.0.0.5:9000"
    assert provider.config.poll is not None
    assert provider.config.poll.batch_size == 25
    assert str(provider.config.poll.request) == "GET /v1/status?ids={ids}"
    campaign = provider.config.kinds["campaign"]
    assert str(campaign.submit) == "POST /v2/campaigns"
    assert campaign.parent_field == "advertiser_id"


def test_deep_merge_replaces_lists_and_scalars() -> None:
    """Lists are values, not tables: an override replaces them whole."""
    merged = deep_merge({"a": {"b": [1, 2], "c": 1}, "d": 1}, {"a": {"b": [3]}, "d": 2})
    assert merged == {"a": {"b": [3], "c": 1}, "d": 2}


def test_headers_expand_environment_variables() -> None:
    """${VAR} in a header value comes from the environment at start."""
    providers = load_providers(
        Settings(
            providers={
                "acme": with_changes(ACME, headers={"Authorization": "Bearer ${ACME_TOKEN}"})
            },
            default_provider="acme",
        ),
        environ={"ACME_TOKEN": "t0k3n-value"},
    )
    provider = providers["acme"]
    assert isinstance(provider, HttpProvider)
    assert provider.config.headers["Authorization"].value == "Bearer t0k3n-value"


def test_missing_environment_variable_is_named() -> None:
    """An unset ${VAR} is a start-up error naming the header and the variable."""
    text = config_error(
        {"acme": with_changes(ACME, headers={"TTD-Auth": "${TTD_TOKEN}"})}, default_provider="acme"
    )
    assert (
        text
        == "settings: providers.acme.headers.TTD-Auth: environment variable TTD_TOKEN is not set"
    )


def test_a_duration_past_ten_years_is_a_config_error() -> None:
    """A poll interval of 99999999d was accepted, and every create's outcome then failed
    to compute its first poll's date (an OverflowError in the executor, the task left to
    its lease): it is refused at start-up, naming the key."""
    text = config_error(
        {"acme": with_changes(ACME, poll_interval="99999999d")}, default_provider="acme"
    )
    assert text == (
        "settings: providers.acme.poll_interval: must be at most 3650d (ten years), got '99999999d'"
    )


BUDGET_KEYS = ("rate_limit", "quota", "quota_reset", "burst", "cost", "max_attempts")
budget_values = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\A[0-9]{1,12}/[0-9]{0,9}(ms|s|min|h|d|w|x)?\Z"),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.text(max_size=6), max_size=3),
    st.dictionaries(st.text(max_size=12), st.integers(-5, 10**6), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(BUDGET_KEYS),
    value=budget_values,
    inside=st.booleans(),
    reset=st.sampled_from(["UTC", "rolling", "America/Los_Angeles"]),
)
def test_any_budget_value_loads_or_is_one_line_naming_its_key(
    key: str, value: Any, inside: bool, reset: str
) -> None:
    """Whatever a rate, quota, reset, burst, cost or max_attempts holds (in the provider's
    table or in a ``[[limits]]`` entry), it loads or is refused with one line naming the
    key: never another exception (a calendar quota of 60h used to escape the loader)."""
    if inside:
        limit_key = {"rate_limit": "rate", "quota_reset": "reset"}.get(key, key)
        if limit_key == "max_attempts":
            return
        entry: dict[str, Any] = {"quota": "1000/d", "reset": reset}
        if limit_key == "rate" or limit_key == "burst":
            entry = {"rate": "10/s"}
        entry[limit_key] = value
        change: dict[str, Any] = {"limits": [entry]}
        where = f"providers.acme.limits[0].{limit_key}"
    else:
        change = {key: value, "rate_limit": "100/s"} if key != "rate_limit" else {key: value}
        where = f"providers.acme.{key}"
    try:
        load_providers(
            Settings(providers={"acme": with_changes(ACME, **change)}, default_provider="acme"),
            environ={},
        )
    except errors.ConfigError as problem:
        text = str(problem)
        assert "\n" not in text
        assert text.startswith("settings: providers.acme"), text
        assert where in text or "providers.acme.limits" in text or "providers.acme:" in text, text


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://127.0.0.1:x", "not a URL: Invalid port: 'x'"),
        ("http://[::1", "not a URL: Invalid port: ':1'"),
        ("http://u:hunter2-secret@127.0.0.1:x/", "not a URL: Invalid port: 'x'"),
        ("http://127.0.0.1:99999", "its port must be 1-65535, got 99999"),
        ("http://127.0.0.1:0", "its port must be 1-65535, got 0"),
    ],
)
def test_a_base_url_httpx_cannot_use_is_a_configuration_error(base_url: str, expected: str) -> None:
    """A port that is not a number was httpx's InvalidURL with a traceback from every
    command building the providers (`sluice up`, `sluice rates`, `sluice submit`); the
    password of the URL is never repeated."""
    text = config_error({"acme": with_changes(ACME, base_url=base_url)}, default_provider="acme")

    assert text == f"settings: providers.acme.base_url: {expected}"
    assert "hunter2" not in text


@pytest.mark.parametrize("port", ["x", [1], 99999])
def test_a_sandbox_port_that_cannot_be_a_url_is_a_configuration_error(port: Any) -> None:
    """With no [providers], the bundled sandbox provider is at [sandbox] port: a port that
    is not a number was an InvalidURL traceback from `sluice up` and `sluice rates`."""
    from sluice.runtime import with_default_providers

    with pytest.raises(errors.ConfigError) as info:
        load_providers(with_default_providers(Settings(sandbox={"port": port})), environ={})

    assert str(info.value).startswith("settings: providers.sandbox.base_url: ")
