"""The canary search finds a planted secret however it leaks, and nothing else."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from sluice import masking
from sluice.masking import Redactor
from tests.canary import WINDOW, Canary, find_leaks

TOKEN = Canary.make("provider token")
DB = Canary.make("database password", suffix="@/")
KEY = Canary.api_key("api key", "sk_0123456789ab_" + "Q7x" * 14 + "z")


@pytest.mark.parametrize(
    "leak",
    [
        pytest.param(f"Authorization: Bearer {TOKEN.value}", id="whole"),
        pytest.param(f"body: {TOKEN.value[: WINDOW + 2]}...", id="cut-in-half"),
        pytest.param(f"...{TOKEN.value[-WINDOW:]} trailing", id="tail"),
        pytest.param(json.dumps({"token": TOKEN.value}), id="json"),
        pytest.param(f"postgresql://u:{quote(DB.value, safe='')}@db/x", id="percent-encoded"),
        pytest.param(f"postgresql://u:{DB.value}@db/x", id="raw-url"),
        pytest.param(f"key={KEY.value}", id="api-key"),
        pytest.param(f"secret half {KEY.searched[5:25]}", id="api-key-piece"),
    ],
)
def test_a_deliberate_leak_is_found(leak: str) -> None:
    """Whole, cut short, JSON-quoted or percent-encoded, a planted secret is a hit."""
    hits = find_leaks({"log": f"12:00 INFO something {leak} end"}, [TOKEN, DB, KEY])
    assert hits, leak
    assert hits[0].where == "log"


def test_the_public_part_of_an_api_key_and_masked_text_are_not_hits() -> None:
    """The key's public id, masks and unrelated text do not count as leaks."""
    masked = Redactor([TOKEN.value, DB.value]).redact(
        f"token {TOKEN.value} and postgresql://u:{DB.value}@db/x"
    )
    corpus = {
        "listing": "key sk_0123456789ab_ (ci) created",
        "masked": masked,
        "shapes": masking.mask(f"login {KEY.value}"),
        "other": "cnry" + "0" * 30,
    }
    assert find_leaks(corpus, [TOKEN, DB, KEY]) == []


def test_a_leak_introduced_in_masking_would_be_caught() -> None:
    """Undo the masking (or truncate before masking) and the search reports it."""
    text = "x" * (masking.SNIPPET_CHARS - WINDOW - 2) + TOKEN.value
    cut_first = text[: masking.SNIPPET_CHARS] + "..."
    assert find_leaks({"truncated-then-masked": cut_first}, [TOKEN])
    assert not find_leaks({"masked-then-truncated": Redactor([TOKEN.value]).snippet(text)}, [TOKEN])


def test_an_api_key_whose_secret_holds_an_underscore_is_searched_whole() -> None:
    """A URL-safe secret may hold ``_``: the whole secret is searched, not the piece after
    its last ``_`` (a two-letter piece would be found in any timestamp)."""
    key = Canary.api_key("api key", "sk_0123456789ab_" + "Q7x" * 13 + "a_09")

    assert key.searched == "Q7x" * 13 + "a_09"
    assert find_leaks({"listing": '{"created_at": "2026-12-04T06:02:09Z"}'}, [key]) == []
