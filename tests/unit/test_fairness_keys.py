"""Fairness keys taken from a payload (``fairness_field``): distinct values keep distinct
keys, and every key fits the 128-character columns (``tasks.fairness_key``,
``fair_shares.fairness_key``). Before, a value was cut to its first 128 characters, so
every value sharing those shared one fair share."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.catalog import Catalog, ProviderInfo
from sluice.domain import FAIRNESS_KEY_MAX

ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=400) | st.sampled_from(
    ["x" * 300, "y" * 5000, "a:b", "*", " ", "\ud800", "é"]
)


def digest(text: str) -> str:
    """The documented digest form: '~' and the first 32 hex digits of the SHA-256."""
    return "~" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


CATALOG = Catalog(
    {"fair": ProviderInfo(frozenset({"campaign"}), can_track=False, fairness_field="adv")}
)


@settings(max_examples=300)
@given(
    st.builds(str.__mul__, st.text(st.characters(codec="utf-8"), max_size=3), st.integers(0, 150)),
    st.lists(ANY_TEXT, min_size=2, max_size=6, unique=True),
)
def test_distinct_fairness_values_give_distinct_fairness_keys_that_fit(
    start: str, ends: list[str]
) -> None:
    """Values sharing a long start, the shape that collided when values were cut."""
    values = [start + end for end in ends if start + end]
    keys = [CATALOG.fairness_key("fair", "default", {"adv": value}) for value in values]
    assert len(set(keys)) == len(values)
    assert all(len(key) <= FAIRNESS_KEY_MAX for key in keys)
    for value, key in zip(values, keys, strict=True):
        if len(value) <= FAIRNESS_KEY_MAX:
            assert key == value  # as documented: the value itself, as text


def test_a_long_fairness_value_keeps_its_start_and_ends_with_its_digest() -> None:
    value = "z" * 300
    key = CATALOG.fairness_key("fair", "default", {"adv": value})
    assert key == "z" * 95 + digest(value)
    assert len(key) == FAIRNESS_KEY_MAX
