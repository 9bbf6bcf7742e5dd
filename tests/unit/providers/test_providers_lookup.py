"""Lookup by client reference: finding what a lost create answer may have made."""

from __future__ import annotations

import httpx
import pytest

from sluice.domain import EXTERNAL_ID_MAX_CHARS
from sluice.providers.base import Found, NotFound, RateLimited, Transient

from .fakes import ACME, FakeDsp, client_for, make_provider, task, with_changes


@pytest.fixture
def dsp() -> FakeDsp:
    return FakeDsp()


def test_object_created_by_a_lost_answer_is_found(dsp: FakeDsp) -> None:
    """After a create whose answer was lost, lookup by client_ref finds its id."""
    provider = make_provider(ACME)
    client = client_for(provider, dsp)
    ref = task(kind="ad_group", client_ref="ref-5", parent_external_id="cam-1")
    dsp.script(lambda request: _lose(dsp, request))
    decision = provider.submit(client, ref)
    assert isinstance(decision, Transient)
    assert decision.ambiguous
    assert provider.lookup(client, ref) == Found("adg-1")
    assert dsp.requests[-1].url.params["client_ref"] == "ref-5"


def _lose(dsp: FakeDsp, request: httpx.Request) -> httpx.Response:
    """Create the object, then drop the answer (commit-then-timeout)."""
    dsp(request)
    raise httpx.ReadTimeout("timed out", request=request)


def test_nothing_found_is_not_found(dsp: FakeDsp) -> None:
    """An empty list means creating again is safe."""
    provider = make_provider(ACME)
    assert provider.lookup(client_for(provider, dsp), task(kind="ad_group")) == NotFound()


@pytest.mark.parametrize("code", [404, 410])
def test_404_or_410_is_not_found(dsp: FakeDsp, code: int) -> None:
    """A provider answering 404 (or 410 Gone) for an unknown reference found nothing."""
    dsp.script(httpx.Response(code, json={"error": {"message": "no such ad group"}}))
    provider = make_provider(ACME)
    assert provider.lookup(client_for(provider, dsp), task(kind="ad_group")) == NotFound()


def test_objects_carrying_another_reference_are_ignored(dsp: FakeDsp) -> None:
    """A provider that ignores the filter and lists everything does not cause a false match."""
    dsp.script(httpx.Response(200, json={"data": [{"id": "adg-9", "client_ref": "someone-else"}]}))
    provider = make_provider(ACME)
    assert provider.lookup(client_for(provider, dsp), task(kind="ad_group")) == NotFound()


def test_objects_that_show_no_reference_are_never_taken_for_ours(dsp: FakeDsp) -> None:
    """A search that ignores the filter and lists summaries without the reference: the
    listed object is someone else's. It used to be Found (another task's object adopted,
    this task's never created); it is transient now, never Found and never NotFound."""
    dsp.script(httpx.Response(200, json={"data": [{"id": "adg-9", "name": "Other"}]}))
    provider = make_provider(ACME)
    decision = provider.lookup(client_for(provider, dsp), task(kind="ad_group"))
    assert isinstance(decision, Transient)
    assert "client reference" in decision.message


def test_the_reference_may_sit_elsewhere_in_the_listed_object(dsp: FakeDsp) -> None:
    """Criteo's lookup lists ``{"id", "attributes": {"name"}}`` while the reference is sent
    at ``data.attributes.name``: an object holding it anywhere is ours."""
    dsp.script(
        httpx.Response(200, json={"data": [{"id": "adg-3", "attributes": {"name": "sluice-1"}}]})
    )
    provider = make_provider(ACME)
    decision = provider.lookup(client_for(provider, dsp), task(kind="ad_group"))
    assert decision == Found("adg-3")


def test_single_object_answer_is_found() -> None:
    """A lookup answering one object (not a list) finds it by its id field."""
    table = with_changes(
        ACME,
        kinds={
            "campaign": {
                "submit": "POST /campaigns",
                "client_ref_field": "ref",
                "lookup": "GET /campaigns/by-ref/{client_ref}",
            }
        },
    )
    dsp = FakeDsp()
    dsp.script(httpx.Response(200, json={"id": 31, "ref": "sluice-1"}))
    provider = make_provider(table)
    assert provider.lookup(client_for(provider, dsp), task()) == Found("31")
    assert dsp.requests[0].url.path == "/campaigns/by-ref/sluice-1"


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="not json"),
        httpx.Response(500, json={"error": {"message": "down"}}),
        httpx.Response(400, json={"error": {"message": "bad query"}}),
    ],
)
def test_unreadable_or_refused_lookup_is_transient(dsp: FakeDsp, answer: httpx.Response) -> None:
    """When the lookup cannot tell, the engine must not re-create: it retries the lookup."""
    dsp.script(answer)
    provider = make_provider(ACME)
    decision = provider.lookup(client_for(provider, dsp), task(kind="ad_group"))
    assert isinstance(decision, Transient)
    assert not decision.ambiguous


def test_rate_limited_lookup_pauses(dsp: FakeDsp) -> None:
    """A lookup refused for rate pauses like any other request."""
    dsp.script(httpx.Response(429, headers={"Retry-After": "4"}))
    provider = make_provider(ACME)
    decision = provider.lookup(client_for(provider, dsp), task(kind="ad_group"))
    assert decision == RateLimited(4.0, "HTTP 429; pause 4s (Retry-After)")


def test_supports_lookup_only_for_kinds_with_a_lookup() -> None:
    """Kinds without a lookup request report it, so the engine can decide what to do."""
    provider = make_provider(ACME)
    assert provider.supports_lookup("ad_group")
    assert not provider.supports_lookup("campaign")
    assert not provider.supports_lookup(None)


def test_resubmit_when_unknown_is_off_unless_opted_in() -> None:
    """Re-submitting an unknown create is off by default; a kind's key wins over the
    provider's."""
    assert not make_provider(ACME).resubmits_when_unknown("campaign")

    kinds = {
        name: {**kind, "resubmit_when_unknown": False} if name == "ad_group" else kind
        for name, kind in ACME["kinds"].items()
    }
    provider = make_provider(with_changes(ACME, resubmit_when_unknown=True, kinds=kinds))
    assert provider.resubmits_when_unknown("campaign")
    assert not provider.resubmits_when_unknown("ad_group")


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (httpx.Response(200, json={"data": [{"client_ref": "sluice-1"}]}), "no id"),
        (httpx.Response(200, json={"items": []}), "no data"),
    ],
)
def test_misconfigured_lookup_never_reads_as_not_found(
    dsp: FakeDsp, answer: httpx.Response, problem: str
) -> None:
    """A match without an id, or no list where one is configured, is transient: no duplicate."""
    dsp.script(answer)
    provider = make_provider(ACME)
    decision = provider.lookup(client_for(provider, dsp), task(kind="ad_group"))
    assert isinstance(decision, Transient)
    assert problem in decision.message


def test_a_found_id_longer_than_the_store_keeps_is_a_bad_answer(dsp: FakeDsp) -> None:
    """Our object listed under an id the store cannot keep is no Found (its write would be
    refused) but a transient naming the length, so the task ends in Error after its
    attempts rather than looping."""
    long_id = "a" * (EXTERNAL_ID_MAX_CHARS + 1)
    dsp.script(httpx.Response(200, json={"data": [{"id": long_id, "client_ref": "ref-5"}]}))
    provider = make_provider(ACME)
    ref = task(kind="ad_group", client_ref="ref-5", parent_external_id="cam-1")
    decision = provider.lookup(client_for(provider, dsp), ref)
    assert isinstance(decision, Transient)
    assert f"id of {EXTERNAL_ID_MAX_CHARS + 1} characters" in decision.message


def test_a_found_id_the_store_would_alter_is_a_bad_answer(dsp: FakeDsp) -> None:
    """Our object listed under an id with U+0000 in it is no Found: the store would keep
    another id (U+FFFD in its place) and poll an object the provider never made."""
    dsp.script(httpx.Response(200, json={"data": [{"id": "ag\x00-5", "client_ref": "ref-5"}]}))
    provider = make_provider(ACME)
    ref = task(kind="ad_group", client_ref="ref-5", parent_external_id="cam-1")
    decision = provider.lookup(client_for(provider, dsp), ref)
    assert isinstance(decision, Transient)
    assert "id" in decision.message
