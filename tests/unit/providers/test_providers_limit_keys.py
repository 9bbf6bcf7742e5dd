"""Limit and quota keys built from a payload's ``per`` value, whatever that value holds.

A value is written into its keys as it is when it is plain (``42``, ``adv-1``); any other
value (longer than 64 characters, or with ``:``, ``*``, ``/``, whitespace, control or
non-ASCII characters) is written in its digest form. Keys stay distinct per value, fit
the 255-character key columns, keep the pause-scope prefixes (``acme``, ``acme:write``,
...) and fold into a bounded metric label.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice import errors
from sluice.domain import Operation
from sluice.metrics import fold_key
from sluice.providers.registry import load_providers
from sluice.ratelimit.gcra import pause_scopes
from sluice.settings import Settings

from .fakes import ACME, make_provider, with_changes

KEY_MAX_CHARS = 255  # the width of every key column (tables.py)

PER_ACCOUNT = with_changes(
    ACME,
    limits=[
        {"rate": "150/min", "scope": "write", "per": "advertiser_id"},
        {"quota": "600/10min", "scope": "write", "per": "advertiser_id"},
    ],
)
PROVIDER = make_provider(PER_ACCOUNT)
PER_LIMIT = next(limit for limit in PROVIDER.configured_limits() if limit.per is not None)

# Any text at all: long, empty, ':', '*', '=', '/', '~', whitespace, NUL, lone surrogates,
# non-ASCII (Hypothesis leaves surrogates out of st.text() unless asked).
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=400) | st.sampled_from(
    ["x" * 300, "y" * 5000, "a:b", "a", "a:b=c:d", "*", "", " ", "a b", "\x00", "\ud800", "é"]
)
VALUES = ANY_TEXT | st.integers() | st.booleans()


def account_key(value: Any) -> str:
    return PROVIDER.limits_for("write", {"advertiser_id": value})[-1].key


def quota_key(value: Any) -> str:
    return PROVIDER.quotas_for(Operation.SUBMIT, {"advertiser_id": value})[-1].key


def digest(text: str) -> str:
    """The documented digest form: '~' and the first 32 hex digits of the SHA-256."""
    return "~" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@settings(max_examples=300)
@given(st.lists(VALUES, min_size=2, max_size=6, unique_by=lambda v: (type(v), v)))
def test_distinct_values_give_distinct_keys_that_fit_and_keep_their_scopes(
    values: list[Any],
) -> None:
    texts = {str(v).lower() if isinstance(v, bool) else str(v) for v in values}
    keys = [account_key(v) for v in values]
    quotas = [quota_key(v) for v in values]
    # Distinct payload texts give distinct keys (True and "true" are one text, one account).
    assert len(set(keys)) == len(texts)
    assert len(set(quotas)) == len(texts)
    for key, quota in zip(keys, quotas, strict=True):
        assert len(key) <= KEY_MAX_CHARS
        assert len(quota) <= KEY_MAX_CHARS
        assert pause_scopes(key) == ["acme", "acme:write", key]
        assert pause_scopes(quota) == ["acme", "acme:write", key, quota]
        assert quota == f"{key}:10min"
        assert PER_LIMIT.matches(key)
        assert fold_key(key) == ("acme", "write:advertiser_id")
        assert fold_key(quota) == ("acme", "write:advertiser_id:10min")
        assert key.isascii()
        assert key.isprintable()
        assert " " not in key


@given(ANY_TEXT)
def test_a_key_is_the_same_in_every_call(value: str) -> None:
    """The mapping holds nothing per process (no hash() seed, no counter)."""
    assert account_key(value) == account_key(str(value))
    assert (
        account_key(value)
        == make_provider(PER_ACCOUNT).limits_for("write", {"advertiser_id": value})[-1].key
    )


@pytest.mark.parametrize("value", ["42", "adv-1", "act_123", "a.b@c+d=", "x" * 64, 42])
def test_a_plain_value_is_written_as_it_is(value: Any) -> None:
    assert account_key(value) == f"acme:write:advertiser_id={value}"
    assert quota_key(value) == f"acme:write:advertiser_id={value}:10min"


@pytest.mark.parametrize(
    "value",
    ["x" * 65, "y" * 5000, "urn:li:sponsoredAccount:1", "*", "", "a b", "a/b", "~1", "é", "\ud800"],
)
def test_any_other_value_is_written_in_its_digest_form(value: str) -> None:
    assert account_key(value) == f"acme:write:advertiser_id={digest(value)}"


def test_an_operator_can_pin_an_account_whose_value_has_a_colon() -> None:
    """Before, ``acme:write:advertiser_id=a:b`` matched no configured limit: a pin on that
    account was refused as an unknown key, and a pause on account ``a`` held ``a:b`` too."""
    key = account_key("a:b")
    assert PER_LIMIT.matches(key)
    assert "acme:write:advertiser_id=a" not in pause_scopes(key)


@pytest.mark.parametrize("value", ["a b", "x" * 65, "é", "a/b", "*x", "~1"])
def test_a_pin_on_an_account_named_by_a_value_keys_never_hold_is_refused(value: str) -> None:
    """Such an account's key holds its digest form: a pin on the value as it is (accepted
    before: no ':' in it) was stored for a key nothing spends from, and so never applied.
    The digest form is what names the account (controls.limit_of: pins and the API)."""
    assert not PER_LIMIT.matches(f"acme:write:advertiser_id={value}")
    assert PER_LIMIT.matches(account_key(value))


def test_a_provider_whose_keys_cannot_fit_is_a_config_error() -> None:
    table = with_changes(ACME, limits=[{"rate": "1/s", "per": "a" * 200}])
    with pytest.raises(errors.ConfigError, match="longer than 255 characters"):
        make_provider(table)


def test_a_key_that_cannot_fit_is_named_with_its_file_beside_the_other_problems() -> None:
    """Like every other provider problem, it names the file, and a second provider's problem
    is reported with it (before: ``providers.acme: ...`` alone, no file, the other lost)."""
    long_per = with_changes(ACME, limits=[{"rate": "1/s", "per": "a" * 200}])
    bad_rate = with_changes(ACME, limits=[{"rate": "often"}])
    settings = Settings(
        providers={"acme": long_per, "other": bad_rate},
        default_provider="acme",
        config_file="/etc/sluice/sluice.toml",
    )
    with pytest.raises(errors.ConfigError) as info:
        load_providers(settings, environ={})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("/etc/sluice/sluice.toml: providers.acme: the limit key acme:")
    assert "longer than 255 characters" in lines[0]
    assert lines[1].startswith("/etc/sluice/sluice.toml: providers.other")


@pytest.mark.parametrize(
    ("key", "scope"),
    [
        ("acme:write:advertiser_id=a:b=c:d", "write:advertiser_id"),
        ("acme:write:advertiser_id=a:b:10min", "write:advertiser_id:10min"),
        ("acme:advertiser_id=urn:li:sponsoredAccount:123", "advertiser_id"),
    ],
)
def test_a_key_kept_from_before_with_a_colon_in_its_value_folds_to_a_bounded_label(
    key: str, scope: str
) -> None:
    """A pause or learned rate stored before digest forms may hold such a key; before, every
    part of the value after a ``:`` became part of the metric label (a series per account)."""
    assert fold_key(key) == ("acme", scope)
