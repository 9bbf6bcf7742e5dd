"""Polling: batch and per-object status answers become status reports or transients."""

from __future__ import annotations

import logging

import httpx
import pytest

from sluice.domain import TaskStatus
from sluice.providers.base import RateLimited, StatusReport, Transient

from .fakes import ACME, BATCH_POLL, FakeDsp, client_for, make_provider, task, with_changes


@pytest.fixture
def dsp() -> FakeDsp:
    return FakeDsp()


def test_without_batch_poll_each_task_is_its_own_group() -> None:
    """Per-object polling means one request, so one task, per group."""
    provider = make_provider(ACME)
    tasks = [task(task_id=i, external_id=f"cam-{i}") for i in range(3)]
    assert provider.poll_groups(tasks) == [[t] for t in tasks]
    assert not provider.can_track()


def test_batch_groups_hold_at_most_batch_size_distinct_ids() -> None:
    """Groups never ask for more ids than batch_size; repeated ids share a slot."""
    provider = make_provider(with_changes(ACME, poll=BATCH_POLL))
    tasks = [
        task(task_id=1, external_id="a"),
        task(task_id=2, external_id="a"),
        task(task_id=3, external_id="b"),
        task(task_id=4, external_id="c"),
    ]
    groups = provider.poll_groups(tasks)
    assert [[t.task_id for t in g] for g in groups] == [[1, 2, 3], [4]]
    assert provider.can_track()


def test_per_object_poll_maps_provider_words(dsp: FakeDsp) -> None:
    """The kind's status_map turns 'failed' into Error with the provider's message."""
    dsp.add("cam-1", status="failed", error="Budget below minimum")
    provider = make_provider(ACME)
    decisions = provider.poll(client_for(provider, dsp), [task(external_id="cam-1")])
    assert decisions == {
        1: StatusReport(TaskStatus.ERROR, "Budget below minimum", raw_status="failed")
    }
    assert dsp.requests[0].url.path == "/campaigns/cam-1/status"


def test_batch_poll_answers_every_task_in_one_request(dsp: FakeDsp) -> None:
    """One GET with comma-joined ids answers each task; absent ids are transient."""
    dsp.add("a", status="success")
    dsp.add("b", status="pending")
    provider = make_provider(with_changes(ACME, poll=with_changes(BATCH_POLL, batch_size=10)))
    group = [
        task(task_id=1, external_id="a"),
        task(task_id=2, external_id="b"),
        task(task_id=3, external_id="zz"),
    ]
    decisions = provider.poll(client_for(provider, dsp), group)
    assert len(dsp.requests) == 1
    assert dsp.requests[0].url.params["ids"] == "a,b,zz"
    assert decisions[1] == StatusReport(TaskStatus.COMPLETED, None, "success")
    assert decisions[2] == StatusReport(TaskStatus.IN_PROGRESS, None, "pending")
    assert decisions[3] == Transient("zz not in status answer", gone=True)


def test_a_status_read_answered_404_says_the_object_is_gone(dsp: FakeDsp) -> None:
    """A 404 (or 410 Gone) on a per-object status read is a transient failure that says the
    provider has no object by that id; a 5xx, a 429 or an unknown status word does not."""
    provider = make_provider(ACME)
    client = client_for(provider, dsp)
    (gone,) = provider.poll(client, [task(external_id="cam-404")]).values()
    assert isinstance(gone, Transient)
    assert gone.gone
    assert "cam-404 not found" in gone.message
    dsp.script(httpx.Response(410, json={"error": {"message": "cam-1 was deleted"}}))
    (deleted,) = provider.poll(client, [task(external_id="cam-1")]).values()
    assert isinstance(deleted, Transient)
    assert deleted.gone
    assert deleted.message == "HTTP 410: cam-1 was deleted"
    dsp.script(httpx.Response(503, json={"error": {"message": "down"}}))
    (down,) = provider.poll(client, [task(external_id="cam-404")]).values()
    assert isinstance(down, Transient)
    assert not down.gone
    dsp.add("cam-1", status="ARCHIVED")
    (unknown,) = provider.poll(client, [task(external_id="cam-1")]).values()
    assert isinstance(unknown, Transient)
    assert not unknown.gone


def test_prototype_fixture_answer_is_read_as_the_prototype_did(dsp: FakeDsp) -> None:
    """The prototype's array of {id, status, error_message} maps ids 1, 2, 3 as it expects."""
    answer = [
        {"id": "1", "status": "In Progress"},
        {"id": "2", "status": "Completed"},
        {"id": "3", "status": "Error", "error_message": "Invalid IP range: 192.168.1.256"},
    ]
    dsp.script(httpx.Response(200, json=answer))
    poll = with_changes(
        BATCH_POLL, request="GET /statuses", batch_size=100, error_field="error_message"
    )
    provider = make_provider({"base_url": "http://proto.test", "poll": poll})
    group = [task(task_id=i, kind=None, external_id=str(i)) for i in (1, 2, 3)]
    decisions = provider.poll(client_for(provider, dsp), group)
    assert decisions == {
        1: StatusReport(TaskStatus.IN_PROGRESS, None, "In Progress"),
        2: StatusReport(TaskStatus.COMPLETED, None, "Completed"),
        3: StatusReport(TaskStatus.ERROR, "Invalid IP range: 192.168.1.256", "Error"),
    }


def test_numeric_ids_in_the_answer_match_text_external_ids(dsp: FakeDsp) -> None:
    """A provider answering id 7 (a number) still answers the task whose external id is '7'."""
    dsp.script(httpx.Response(200, json={"data": [{"id": 7, "status": "success"}]}))
    provider = make_provider(with_changes(ACME, poll=with_changes(BATCH_POLL, items_field="data")))
    decisions = provider.poll(client_for(provider, dsp), [task(external_id="7")])
    assert decisions[1] == StatusReport(TaskStatus.COMPLETED, None, "success")


def test_unknown_status_is_transient_and_logged_with_raw_value(
    dsp: FakeDsp, caplog: pytest.LogCaptureFixture
) -> None:
    """A word missing from status_map never crashes: transient, logged with the raw word."""
    dsp.add("cam-1", status="ARCHIVED")
    provider = make_provider(ACME)
    with caplog.at_level(logging.WARNING, logger="sluice.providers"):
        decisions = provider.poll(client_for(provider, dsp), [task(external_id="cam-1")])
    decision = decisions[1]
    assert isinstance(decision, Transient)
    assert "unknown status 'ARCHIVED'" in decision.message
    records = [r for r in caplog.records if r.getMessage() == "provider.unknown_status"]
    assert records
    assert records[0].raw_status == "ARCHIVED"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (httpx.Response(200, text="<html>maintenance</html>"), "not JSON"),
        (httpx.Response(200, json={"unexpected": True}), "not a list"),
        (httpx.Response(200, json={"error": {"message": "try later"}}), "try later"),
    ],
)
def test_unreadable_batch_answer_is_transient_for_every_task(
    dsp: FakeDsp, answer: httpx.Response, problem: str
) -> None:
    """A batch answer that cannot be read leaves every task of the group to retry."""
    dsp.script(answer)
    provider = make_provider(with_changes(ACME, poll=BATCH_POLL))
    decisions = provider.poll(
        client_for(provider, dsp),
        [task(task_id=1, external_id="a"), task(task_id=2, external_id="b")],
    )
    for decision in decisions.values():
        assert isinstance(decision, Transient)
        assert problem in decision.message
        assert not decision.ambiguous


def test_missing_status_field_is_transient(dsp: FakeDsp) -> None:
    """An item without the status field is a transient for that task only."""
    dsp.script(httpx.Response(200, json=[{"id": "a"}, {"id": "b", "status": "success"}]))
    provider = make_provider(with_changes(ACME, poll=BATCH_POLL))
    decisions = provider.poll(
        client_for(provider, dsp),
        [task(task_id=1, external_id="a"), task(task_id=2, external_id="b")],
    )
    assert decisions[1] == Transient("no status for a in status answer")
    assert decisions[2] == StatusReport(TaskStatus.COMPLETED, None, "success")


def test_rate_limited_poll_applies_to_the_whole_group(dsp: FakeDsp) -> None:
    """A 429 on a batch poll is one RateLimited decision for each task of the group."""
    dsp.script(httpx.Response(429, headers={"Retry-After": "2"}))
    provider = make_provider(with_changes(ACME, poll=BATCH_POLL))
    decisions = provider.poll(
        client_for(provider, dsp),
        [task(task_id=1, external_id="a"), task(task_id=2, external_id="b")],
    )
    assert all(isinstance(d, RateLimited) and d.retry_after_s == 2.0 for d in decisions.values())


def test_refused_per_object_poll_is_transient_not_failed(dsp: FakeDsp) -> None:
    """A 404 on a status request is retried: polls never fail a task outright."""
    provider = make_provider(ACME)
    decisions = provider.poll(client_for(provider, dsp), [task(external_id="cam-404")])
    decision = decisions[1]
    assert isinstance(decision, Transient)
    assert "cam-404 not found" in decision.message


def test_task_without_external_id_is_transient_without_a_request(dsp: FakeDsp) -> None:
    """Nothing is asked about a task the provider has not named yet."""
    provider = make_provider(with_changes(ACME, poll=BATCH_POLL))
    decisions = provider.poll(client_for(provider, dsp), [task(external_id=None)])
    assert decisions == {1: Transient("task has no external id to poll")}
    assert dsp.requests == []


def test_poll_interval_comes_from_the_poll_table() -> None:
    """poll.interval wins over poll_interval when a batch poll exists."""
    assert make_provider(with_changes(ACME, poll=BATCH_POLL)).poll_interval_s == 2.0
    assert make_provider(with_changes(ACME, poll_interval="30s")).poll_interval_s == 30.0
