"""Sluice against a DSP it did not write (tests/integration/fake_dsp.py), over real HTTP.

Every figure is counted at the DSP, from its own arrival log. Found by an outside review
(helper branch ``review-dsp``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sluice.domain import Submission, TaskStatus
from sluice.drivers.embedded import build_embedded_driver
from sluice.engine.rates import per_second
from sluice.store.usage import UsageStore
from tests.integration.conftest import make_runtime, run_until_final
from tests.integration.fake_dsp import Arrival, FakeDsp, Reply, running_dsp

STATUS_MAP = {"pending": "In Progress", "active": "Completed", "rejected": "Error"}


def kind(name: str, *, lookup: bool = True) -> dict[str, Any]:
    table: dict[str, Any] = {
        "submit": f"POST /v1/{name}s",
        "status": f"GET /v1/{name}s/{{external_id}}",
        "status_map": STATUS_MAP,
        "client_ref_field": "client_ref",
    }
    if lookup:
        table["lookup"] = f"GET /v1/{name}s?client_ref={{client_ref}}"
        table["lookup_items_field"] = "data"
    return table


def provider(dsp: FakeDsp, **extra: Any) -> dict[str, dict[str, Any]]:
    table: dict[str, Any] = {
        "base_url": dsp.url,
        "rate_limit": "20/s",
        "timeout": "5s",
        "max_attempts": 6,
        "retry_base": "100ms",
        "retry_max": "500ms",
        "poll_interval": "200ms",
        "kinds": {"campaign": kind("campaign"), "report": kind("report", lookup=False)},
    }
    return {"ttd": table | extra}


@pytest.fixture
def dsp() -> Iterator[FakeDsp]:
    with running_dsp() as server:
        yield server


def campaigns(count: int, kind: str = "campaign") -> list[Submission]:
    return [Submission(provider="ttd", kind=kind, payload={"name": f"c{i}"}) for i in range(count)]


def test_a_503_slow_down_after_the_create_committed_makes_no_second_object(
    dsp: FakeDsp, tmp_path: Path
) -> None:
    """TTD answers 503 + Retry-After to slow callers down, so its table lists 503 in
    ``statuses``. A 503 is still a server error: the create may have been committed behind
    it. It used to be read as a plain refusal and the create sent again, making a second
    object of every one of these tasks."""
    answered: list[str] = []

    def busy_after_commit(arrival: Arrival, obj: dict[str, Any]) -> Reply | None:
        if obj["client_ref"] in answered:
            return None
        answered.append(obj["client_ref"])
        return Reply(503, {"Message": "Service Unavailable"}, {"Retry-After": "1"})

    dsp.after_create = busy_after_commit
    runtime = make_runtime(
        tmp_path,
        provider(dsp, rate_limit_signal={"statuses": [429, 503], "default_pause": "1s"}),
    )
    ids = [runtime.repo.create(s)[0].id for s in campaigns(3)]
    run_until_final(runtime)

    assert dsp.objects_per_ref() == {ref: 1 for ref in answered}
    for task_id in ids:
        task = runtime.repo.get(task_id)
        assert task.status is TaskStatus.COMPLETED
        assert dsp.objects[task.external_id or ""]["client_ref"] == task.client_ref
        events = [e.event for e in runtime.repo.events(task_id)]
        assert "rate_limited" in events
        assert "found" in events


def test_a_503_slow_down_to_a_kind_without_lookup_is_not_sent_again(
    dsp: FakeDsp, tmp_path: Path
) -> None:
    """A kind with no lookup cannot be checked after that 503: it ends "outcome unknown",
    as after any ambiguous end, rather than being created a second time."""
    dsp.after_create = lambda arrival, obj: Reply(503, {"Message": "busy"}, {"Retry-After": "1"})
    runtime = make_runtime(
        tmp_path, provider(dsp, rate_limit_signal={"statuses": [429, 503], "default_pause": "1s"})
    )
    task_id = runtime.repo.create(campaigns(1, kind="report")[0])[0].id
    run_until_final(runtime)

    assert len(dsp.creates()) == 1
    task = runtime.repo.get(task_id)
    assert task.status is TaskStatus.ERROR
    assert "outcome unknown" in (task.validation_error or "")


def test_a_create_still_running_when_the_answer_timed_out_is_found_not_sent_twice(
    dsp: FakeDsp, tmp_path: Path
) -> None:
    """A slow backend commits the create after Sluice stopped waiting (timeout 2 s, the
    create takes 2.5 s). The lookup used to go within the backoff (here at most 0.2 s),
    found nothing yet, and the create was sent again: two objects. Now the lookup after a
    timed-out create waits at least the provider's timeout (it goes 4 s or more after the
    create was sent, 1.5 s after the object landed)."""
    slow = threading.Event()

    def slow_first_create(arrival: Arrival) -> Reply | None:
        if arrival.method == "POST" and not slow.is_set():
            slow.set()
            time.sleep(2.5)  # then created, as the hook answers nothing
        return None

    dsp.hook = slow_first_create
    runtime = make_runtime(tmp_path, provider(dsp, timeout="2s", retry_max="200ms"))
    task_id = runtime.repo.create(campaigns(1)[0])[0].id
    run_until_final(runtime)
    # The slow create lands 2.5 s after it arrived, whatever Sluice did meanwhile.
    deadline = time.monotonic() + 30
    while not dsp.settled() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert list(dsp.objects_per_ref().values()) == [1]
    task = runtime.repo.get(task_id)
    assert task.status is TaskStatus.COMPLETED
    assert [e.event for e in runtime.repo.events(task_id)].count("found") == 1


def test_a_search_listing_someone_elses_object_is_never_adopted(
    dsp: FakeDsp, tmp_path: Path
) -> None:
    """The DSP's search ignores the filter and lists summaries without the reference.
    Campaign B's create is dropped before anything is made; its lookup lists only A's
    campaign. B used to adopt A's object (Completed, with A's id, B never created); now it
    cannot be told, so B retries its lookup and ends in Error, saying why."""

    def summaries(arrival: Arrival) -> Reply | None:
        parts = [p for p in arrival.path.split("/") if p]
        if arrival.method == "POST" and (arrival.body or {}).get("name") == "B":
            return Reply(201, reset=True)
        if arrival.method == "GET" and len(parts) == 2:
            with dsp.lock:
                listed = [{"id": o["id"], "name": o["body"]["name"]} for o in dsp.objects.values()]
            return Reply(200, {"data": listed})
        return None

    dsp.hook = summaries
    runtime = make_runtime(tmp_path, provider(dsp))
    a = runtime.repo.create(Submission(provider="ttd", kind="campaign", payload={"name": "A"}))
    run_until_final(runtime)
    b = runtime.repo.create(Submission(provider="ttd", kind="campaign", payload={"name": "B"}))
    run_until_final(runtime)

    assert runtime.repo.get(a[0].id).status is TaskStatus.COMPLETED
    task_b = runtime.repo.get(b[0].id)
    assert task_b.external_id is None
    assert task_b.status is TaskStatus.ERROR
    assert "show no client reference" in (task_b.validation_error or "")
    assert [o["body"]["name"] for o in dsp.objects.values()] == ["A"]


def test_a_per_second_limit_stated_with_whole_second_resets_is_used_whole(
    dsp: FakeDsp, tmp_path: Path
) -> None:
    """A DSP stating its limit, 10/s, with the calls left and a whole-second reset on every
    answer (``X-RateLimit-Reset: 1``). Spreading "5 left for 1 s" held the key at 5/s, and
    every answer at 5/s said 5 left again: against such a DSP whose limit was 10/s then 3/s,
    Sluice sent 5/s then 1-2/s. The stated limit rules; a reset of a second is left to the
    limiter's spacing."""
    said = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "1"}
    dsp.after_create = lambda arrival, obj: Reply(201, {"id": obj["id"]}, said)
    signal = {
        "limit_header": "X-RateLimit-Limit",
        "remaining_header": "X-RateLimit-Remaining",
        "reset_header": "X-RateLimit-Reset",
    }
    runtime = make_runtime(
        tmp_path,
        provider(dsp, adaptive=True, rate_limit_signal=signal),
    )
    for submission in campaigns(3):
        runtime.repo.create(submission)
    run_until_final(runtime)

    assert len(dsp.creates()) == 3
    spec = runtime.providers["ttd"].limits_for("write", None)[0]
    runtime.rates.refresh()
    now = runtime.rates.in_force(spec)
    assert now.source == "learned"
    assert per_second(now.rate) == pytest.approx(10.0), now.reason
    assert "limit 10" in now.reason


def test_a_call_that_could_not_connect_is_not_counted_as_sent(dsp: FakeDsp, tmp_path: Path) -> None:
    """The learned rate climbs to at most twice what was sent under the key (the usage
    counters' ``sent``). Calls to a provider that could not be reached were counted as
    sent: while a DSP was down, the retries lifted the cap (a learned 9.2/s was in force at
    18.8/s after 20 s of connection refusals at the configured 20/s), so the DSP, back,
    met the configured rate. Only a request written to the provider's socket is sent.
    (The unreachable provider is paused, its tasks wait for it: the run ends once both of
    its tasks have failed to connect and every task of the other is final.)"""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: every call is refused at connect
    tables = provider(dsp, max_attempts=3)
    tables["down"] = tables["ttd"] | {"base_url": down_url, "retry_base": "50ms"}
    runtime = make_runtime(tmp_path, tables)
    ids = {
        name: [
            runtime.repo.create(Submission(provider=name, kind="campaign", payload={"n": i}))[0].id
            for i in range(2)
        ]
        for name in ("ttd", "down")
    }
    usage = UsageStore(runtime.repo.engine)
    driver = build_embedded_driver(runtime)
    driver.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            counts = usage.totals(datetime(2000, 1, 1, tzinfo=UTC))
            ttd_final = all(runtime.repo.get(t).status.is_final for t in ids["ttd"])
            if ttd_final and counts.get(("down", "error"), 0) >= 2:
                break
            assert time.monotonic() < deadline, f"usage after 60 s: {counts}"
            time.sleep(0.1)
    finally:
        driver.stop()

    counts = usage.totals(datetime(2000, 1, 1, tzinfo=UTC))
    assert counts.get(("down", "sent"), 0) == 0  # every call failed, and was counted as such
    assert counts.get(("ttd", "sent"), 0) == len(dsp.arrivals)
    assert not any(runtime.repo.get(t).status.is_final for t in ids["down"])
