"""``GET /api/tasks/{id}/explain``: one state per situation, with its details and the rates
in force on the task's keys. Tasks are put in each situation the way the engine leaves them
(the row's phase, times and counters); integration tests drive the real engine."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import update

from sluice.controls import Controls
from sluice.domain import Operation, Phase, Submission, TaskStatus
from sluice.engine.adaptive import rate_of
from sluice.engine.rates import Ceiling, RatesInForce
from sluice.explain import Explainer
from sluice.ratelimit.base import InFlight
from sluice.store.rows import tasks

if TYPE_CHECKING:
    from conftest import Api, SecuredApi


def controls_of(api: Api) -> Controls:
    controls: Controls = api.client.app.state.context.controls  # type: ignore[attr-defined]
    return controls


def make(api: Api, provider: str = "sandbox", tenant: str = "default", **payload: Any) -> int:
    task, _ = api.repo.create(
        Submission(provider, "campaign", {"name": "Spring", **payload}, tenant=tenant)
    )
    return task.id


def set_row(api: Api, task_id: int, **values: Any) -> None:
    with api.repo.engine.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(**values))


def explain(api: Api, task_id: int, **kwargs: Any) -> dict[str, Any]:
    answer = api.client.get(f"/api/tasks/{task_id}/explain", **kwargs)
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] = answer.json()
    return shown


def test_a_due_task_waits_for_a_slot_behind_the_due_tasks_of_its_provider(api: Api) -> None:
    """Tasks of the same provider due earlier count as ahead; others' providers do not."""
    for _ in range(3):
        make(api)
    make(api, provider="acme")
    task_id = make(api)
    make(api)  # after it: not ahead

    shown = explain(api, task_id)

    assert shown["state"] == "waiting_slot"
    assert shown["operation"] == "submit"
    assert shown["slot"]["ahead"] == 3
    assert shown["slot"]["ahead_capped"] is False
    # The slowest key sets the pace: sandbox:write at 10/s, so 4 requests take about 0.4 s.
    assert shown["slot"]["key"] == "sandbox:write"
    assert shown["slot"]["eta_s"] == pytest.approx(0.4)
    assert [(r["key"], r["configured"], r["in_force"], r["source"]) for r in shown["rates"]] == [
        ("sandbox", "20/s", "20/s", "configured"),
        ("sandbox:write", "10/s", "10/s", "configured"),
    ]
    assert "3 due ahead of it" in shown["summary"]


def test_children_and_higher_priorities_of_its_key_are_ahead_of_an_earlier_root(
    api: Api,
) -> None:
    """A fair claim takes a key's tasks by priority, then children of existing parents
    before roots, then due time: a root that waited behind 400 of the demo's ad groups
    and ads (23 s at 20/s) was told "0 due ahead of it, about 0.1 s"."""
    root = make(api)
    parent = make(api)
    set_row(api, parent, status=TaskStatus.COMPLETED.value, phase=Phase.DONE.value)
    api.clock.advance(1)
    children = [
        api.repo.create(Submission("sandbox", "campaign", {"name": "Child"}, parent_id=parent))[0]
        for _ in range(2)
    ]
    api.repo.create(Submission("sandbox", "campaign", {"name": "Urgent"}, priority=5))
    make(api)  # a later root of the same priority: behind it
    api.clock.advance(1)

    shown = explain(api, root)

    assert shown["state"] == "waiting_slot"
    assert shown["slot"]["ahead"] == 3
    assert "3 due ahead of it" in shown["summary"]
    # A child: the higher priority and the child before it; no root of its priority.
    assert explain(api, children[1].id)["slot"]["ahead"] == 2
    # Claimed in arrival order (SLUICE_FAIR_SHARE=false), nothing was due before it.
    arrival = Explainer(api.repo, controls_of(api), fair_share=False).explain(root)
    assert arrival.slot is not None
    assert arrival.slot.ahead == 0


def test_an_accounts_key_is_among_the_rates_of_its_tasks(api: Api) -> None:
    task_id = make(api, advertiser_id="adv-1")
    api.client.post(
        "/api/limits/sandbox:write:advertiser_id=adv-1/pin", json={"rate": "1/min", "reason": "r"}
    )

    shown = explain(api, task_id)

    rate = shown["rates"][-1]
    assert (rate["key"], rate["configured"], rate["in_force"], rate["source"]) == (
        "sandbox:write:advertiser_id=adv-1",
        "2/s",
        "1/min",
        "pinned",
    )
    assert shown["slot"]["key"] == "sandbox:write:advertiser_id=adv-1"
    assert shown["slot"]["eta_s"] == pytest.approx(60.0)
    assert "(pinned)" in shown["summary"]


def test_a_child_waits_for_its_parent(api: Api) -> None:
    parent = make(api)
    child, _ = api.repo.create(Submission("sandbox", "campaign", {}, parent_id=parent))

    shown = explain(api, child.id)

    assert shown["state"] == "waiting_parent"
    assert shown["parent"] == {"id": parent, "status": "Not Started"}
    assert shown["summary"] == f"waiting for parent task {parent} (Not Started)"


def test_a_paused_provider_holds_the_task_with_reason_signal_and_who(api: Api) -> None:
    task_id = make(api)
    api.client.post("/api/providers/sandbox/pause", json={"reason": "vendor maintenance"})

    shown = explain(api, task_id)

    assert shown["state"] == "paused"
    assert shown["pause"]["key"] == "sandbox"
    assert shown["pause"]["signal"] == "manual"
    assert shown["pause"]["reason"] == "vendor maintenance"
    assert shown["pause"]["actor"] == "loopback"
    assert shown["pause"]["until"] is None
    assert "until resumed" in shown["summary"]


def test_a_pause_only_in_the_limiter_is_still_named(api: Api) -> None:
    """A 429's pause the database missed (written best-effort) still explains the wait."""
    task_id = make(api)
    controls_of(api).limiter.pause("sandbox:write", 30.0)

    shown = explain(api, task_id)

    assert shown["state"] == "paused"
    assert (shown["pause"]["key"], shown["pause"]["signal"]) == ("sandbox:write", "limiter")


def test_a_pause_recorded_from_a_429_shows_its_signal(api: Api) -> None:
    task_id = make(api)
    controls_of(api).pauses.record(
        "sandbox",
        api.clock.now() + timedelta(seconds=30),
        signal="rate_limited",
        reason="429 Retry-After: 30",
    )

    shown = explain(api, task_id)

    assert (shown["pause"]["signal"], shown["pause"]["reason"]) == (
        "rate_limited",
        "429 Retry-After: 30",
    )


def test_a_due_task_is_held_by_the_in_flight_cap(api: Api) -> None:
    task_id = make(api)
    for _ in range(4):
        controls_of(api).limiter.acquire([], in_flight=InFlight("sandbox:in_flight", 4, 60.0))

    shown = explain(api, task_id)

    assert shown["state"] == "in_flight_cap"
    assert shown["in_flight"] == {"key": "sandbox:in_flight", "max_in_flight": 4, "in_flight": 4}


def test_a_failed_attempt_backs_off(api: Api) -> None:
    task_id = make(api)
    later = api.clock.now() + timedelta(seconds=40)
    set_row(api, task_id, attempts=2, next_attempt_at=later, last_error="HTTP 503 from sandbox")

    shown = explain(api, task_id)

    assert shown["state"] == "backing_off"
    assert shown["backoff"]["attempt"] == 2
    assert shown["backoff"]["max_attempts"] == 8  # the preset's
    assert shown["backoff"]["last_error"] == "HTTP 503 from sandbox"
    assert "after attempt 2 of 8: HTTP 503 from sandbox" in shown["summary"]


def test_an_ambiguous_failure_awaits_a_lookup(api: Api) -> None:
    task_id = make(api)
    later = api.clock.now() + timedelta(seconds=5)
    set_row(api, task_id, phase=Phase.UNCERTAIN.value, maybe_created=True, next_attempt_at=later)

    shown = explain(api, task_id)

    assert shown["state"] == "awaiting_lookup"
    assert shown["lookup"]["maybe_created"] is True
    assert shown["operation"] == "lookup"


def test_a_due_lookup_waits_for_a_read_slot(api: Api) -> None:
    task_id = make(api)
    set_row(api, task_id, phase=Phase.UNCERTAIN.value, maybe_created=True)

    shown = explain(api, task_id)

    assert shown["state"] == "waiting_slot"
    assert shown["lookup"]["maybe_created"] is True
    assert [r["key"] for r in shown["rates"]] == ["sandbox"]


def test_an_accepted_task_is_polled(api: Api) -> None:
    task_id = make(api)
    api.force_status(task_id, TaskStatus.IN_PROGRESS, phase=Phase.POLLING.value, polls=2)
    set_row(api, task_id, next_attempt_at=api.clock.now() + timedelta(seconds=9))

    shown = explain(api, task_id)

    assert shown["state"] == "polling"
    assert shown["poll"]["polls"] == 2
    assert "next poll at" in shown["summary"]


def test_a_claimed_task_is_being_sent(api: Api) -> None:
    task_id = make(api)
    set_row(api, task_id, phase=Phase.SUBMITTING.value)

    assert explain(api, task_id)["state"] == "sending"


@pytest.mark.parametrize(
    ("phase", "what"),
    [
        (Phase.SUBMITTING, "its request"),
        (Phase.POLLING, "its poll"),
        (Phase.UNCERTAIN, "its lookup"),
    ],
)
def test_a_claimed_task_says_until_when_its_claim_holds(api: Api, phase: Phase, what: str) -> None:
    """After `sluice up` was killed, a poll or lookup its claim still held was shown
    "waiting for a poll slot: 1 due ahead of it, about 0.1 s" for the two minutes until the
    claim lapsed, and a create "on the way"; the answer now says until when the claim holds,
    when the task of a worker that stopped is taken up again."""
    task_id = make(api)
    held = api.clock.now() + timedelta(seconds=100)
    set_row(
        api,
        task_id,
        phase=phase.value,
        status=(TaskStatus.IN_PROGRESS if phase is Phase.POLLING else TaskStatus.NOT_STARTED).value,
        external_id="cmp-1" if phase is Phase.POLLING else None,
        next_attempt_at=api.clock.now() - timedelta(seconds=1),
        claimed_by="worker-that-was-killed",
        claimed_until=held,
    )

    shown = explain(api, task_id)

    assert shown["state"] == "sending"
    assert shown["summary"] == (
        f"claimed by a worker until {held:%Y-%m-%d %H:%M:%S}Z: its grant from the limiter is "
        f"being asked for, or {what} to sandbox is on the way (if that worker stopped, "
        "the task is taken up again then)"
    )


@pytest.mark.parametrize(
    ("status", "fields", "why"),
    [
        (TaskStatus.COMPLETED, {"external_id": "cmp-9"}, "completed (external id cmp-9)"),
        (
            TaskStatus.ERROR,
            {"validation_error": "budget_cents: must be >= 100"},
            "error: budget_cents: must be >= 100",
        ),
        (
            TaskStatus.ERROR,
            {"attempts": 5, "last_error": "HTTP 503"},
            "error after 5 attempt(s): HTTP 503",
        ),
    ],
)
def test_a_final_task_says_why(
    api: Api, status: TaskStatus, fields: dict[str, Any], why: str
) -> None:
    task_id = make(api)
    api.force_status(task_id, status, phase=Phase.DONE.value, **fields)

    shown = explain(api, task_id)

    assert shown["state"] == "final"
    assert shown["final"] == {"status": status.value, "why": why}
    assert shown["rates"] == []


def test_a_cancelled_task_says_by_what(api: Api) -> None:
    task_id = make(api)
    api.client.post(f"/api/tasks/{task_id}/cancel")

    assert explain(api, task_id)["final"]["why"] == "cancelled (cancelled by request)"


def test_a_missing_task_is_404(api: Api) -> None:
    answer = api.client.get("/api/tasks/999/explain")
    assert answer.status_code == 404
    assert answer.json() == {"detail": "task 999 not found"}


def test_a_tenant_sees_its_own_tasks_ahead_and_not_who_paused(secured: SecuredApi) -> None:
    """Counts and operators' names are not a tenant's to see; its own queue is."""
    for tenant in ("acme", "globex", "globex"):
        make(secured, tenant=tenant)
    task_id = make(secured, tenant="acme")

    mine = explain(secured, task_id, headers=secured.auth("viewer"))
    everyone = explain(secured, task_id, headers=secured.auth("operator"))

    assert (mine["slot"]["ahead"], everyone["slot"]["ahead"]) == (1, 3)
    secured.client.post(
        "/api/providers/sandbox/pause", json={"reason": "r"}, headers=secured.auth("operator")
    )
    assert explain(secured, task_id, headers=secured.auth("viewer"))["pause"]["actor"] is None
    assert explain(secured, task_id, headers=secured.auth("admin"))["pause"]["actor"] == (
        f"operator (key {secured.ids['operator']})"
    )


def test_a_spent_quota_holds_the_task_until_its_reset(api: Api) -> None:
    """acme's 500/d quota spent: its task waits for the reset at UTC midnight, and
    GET /api/providers/acme/quotas says the same."""
    from sluice.engine.quotas import window_of
    from sluice.store.quotas import QuotaStore

    task_id = make(api, provider="acme")
    assert explain(api, task_id)["state"] == "waiting_slot"
    (spec,) = controls_of(api).providers["acme"].quotas_for(Operation.SUBMIT, None)
    now = api.repo.clock.now()
    window = window_of(spec.key, spec.quota, now)
    assert QuotaStore(api.repo.engine).reserve(window, 500, now) == 500

    shown = explain(api, task_id)

    assert shown["state"] == "waiting_quota"
    assert shown["summary"].startswith("waiting for quota acme:1d (500 of 500 used")
    assert window.end.strftime("%Y-%m-%d %H:%M:%SZ") in shown["summary"]
    assert shown["quota"]["key"] == "acme:1d"
    assert (shown["quota"]["used"], shown["quota"]["limit"]) == (500, 500)
    assert shown["quota"]["resets_at_local"] == window.end.strftime("%Y-%m-%d %H:%M UTC")
    (quota,) = api.client.get("/api/providers/acme/quotas").json()["quotas"]
    assert (quota["remaining"], quota["waiting"]) == (0, True)


class _Learned:
    """A learned ceiling of 7.3/s on sandbox:write (configured 10/s), as the learner gives it."""

    def ceilings(self) -> dict[str, list[Ceiling]]:
        return {"sandbox:write": [Ceiling("learned", rate_of(7.3, 10.0), "refused")]}


def test_a_learned_rate_reads_per_second_in_explain_and_the_providers_overview(
    api: Api,
) -> None:
    """A learned rate keeps its key's count over a stretched window; explain and
    `GET /api/providers` showed it as "10/1.36986s" instead of 7.3/s."""
    controls_of(api).rates = RatesInForce([_Learned()])
    task_id = make(api)

    rates = {r["key"]: r for r in explain(api, task_id)["rates"]}
    keys = {k["key"]: k for k in api.client.get("/api/providers/sandbox").json()["keys"]}

    assert (rates["sandbox:write"]["in_force"], rates["sandbox:write"]["source"]) == (
        "7.3/s",
        "learned",
    )
    assert keys["sandbox:write"]["in_force"] == "7.3/s"
    assert rates["sandbox"]["in_force"] == "20/s"  # an exact rate keeps its written form
