"""The one place decisions become outcomes: retries, rate limits, chains, deadlines."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sluice.domain import DueTask, Phase, TaskStatus
from sluice.engine import decide
from sluice.engine.decide import Policy
from sluice.engine.retry import Backoff, PollSchedule
from sluice.providers.base import (
    Accepted,
    Failed,
    Found,
    NotFound,
    RateLimited,
    StatusReport,
    Transient,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy(
    provider="acme",
    max_attempts=3,
    backoff=Backoff(1.0, 60.0),
    poll=PollSchedule(2.0, 16.0),
    deadline_s=3600.0,
    can_lookup=True,
)


def due(**changes: object) -> DueTask:
    base: dict[str, object] = {
        "id": 7,
        "provider": "acme",
        "kind": "campaign",
        "payload": {"name": "c"},
        "external_id": None,
        "client_ref": "sl-x",
        "parent_id": None,
        "parent_external_id": None,
        "status": TaskStatus.NOT_STARTED,
        "phase": Phase.SUBMITTING,
        "track_only": False,
        "attempts": 0,
        "polls": 0,
        "poll_interval_s": None,
        "deadline_at": None,
    }
    base.update(changes)
    return DueTask(**base)  # type: ignore[arg-type]


def test_accepted_moves_to_in_progress_and_schedules_first_poll() -> None:
    """An accepted create is In Progress with the provider's id, polled after the interval."""
    out = decide.after_submit(due(), Accepted("cmp-1", completed=False), POLICY, NOW)
    assert out.to_status is TaskStatus.IN_PROGRESS
    assert out.phase is Phase.POLLING
    assert out.fields["external_id"] == "cmp-1"
    assert out.fields["next_attempt_at"] == NOW + timedelta(seconds=2)
    assert out.fields["deadline_at"] == NOW + timedelta(hours=1)


def test_synchronous_accept_completes_and_releases_children() -> None:
    """A synchronous provider's accept is Completed at once and releases the children."""
    out = decide.after_submit(due(), Accepted("x", completed=True), POLICY, NOW)
    assert out.to_status is TaskStatus.COMPLETED
    assert out.release_children


def test_rate_limited_is_not_an_attempt_and_pauses() -> None:
    """Being rate-limited never counts as a failed attempt and pauses for the provider's time."""
    out = decide.after_submit(due(attempts=2), RateLimited(12.0, "429"), POLICY, NOW)
    assert out.to_status is TaskStatus.NOT_STARTED
    assert "attempts" not in out.fields
    assert out.pause_s == 12.0
    assert out.phase is Phase.READY
    assert out.fields["next_attempt_at"] == NOW + timedelta(seconds=12)


def test_an_unreachable_provider_spends_no_attempt_of_any_operation() -> None:
    """Nothing was sent: a create, a lookup and a status read each wait out Sluice's own
    pause, keep their attempts, and say why in the history."""
    down = RateLimited(4.0, "acme unreachable: connection refused", unreachable=True)
    submit = decide.after_submit(due(attempts=2), down, POLICY, NOW)
    lookup = decide.after_lookup(due(attempts=2, phase=Phase.UNCERTAIN), down, POLICY, NOW)
    polling = due(attempts=2, phase=Phase.POLLING, status=TaskStatus.IN_PROGRESS)
    poll = decide.after_poll(polling, down, POLICY, NOW)
    for out, phase in ((submit, Phase.READY), (lookup, Phase.UNCERTAIN), (poll, Phase.POLLING)):
        assert out.event == "unreachable"
        assert "attempts" not in out.fields
        assert out.pause_s == 4.0
        assert out.phase is phase
        assert out.fields["next_attempt_at"] == NOW + timedelta(seconds=4)
        assert out.to_status is out.from_status
    assert submit.fields["maybe_created"] is False


def test_a_server_error_slow_down_on_a_create_is_looked_up_after_the_pause() -> None:
    """TTD's 503 + Retry-After (503 in ``statuses``) to a create: paused, not an attempt,
    but the create may have been committed, so the next step is a lookup, not a resend."""
    limited = RateLimited(12.0, "HTTP 503", ambiguous=True)
    out = decide.after_submit(due(attempts=2), limited, POLICY, NOW)
    assert out.pause_s == 12.0
    assert "attempts" not in out.fields
    assert out.phase is Phase.UNCERTAIN
    assert out.fields["maybe_created"] is True
    assert out.fields["next_attempt_at"] == NOW + timedelta(seconds=12)


def test_a_server_error_slow_down_on_a_create_without_lookup_is_outcome_unknown() -> None:
    """Without a lookup nothing can settle it: "outcome unknown" (the provider still pauses),
    unless the provider opted in to resending (``resubmit_when_unknown``)."""
    limited = RateLimited(12.0, "HTTP 503", ambiguous=True)
    no_lookup = replace(POLICY, can_lookup=False)
    out = decide.after_submit(due(), limited, no_lookup, NOW)
    assert out.to_status is TaskStatus.ERROR
    assert out.event == "outcome_unknown"
    assert out.pause_s == 12.0
    resend = decide.after_submit(
        due(), limited, replace(no_lookup, resubmit_when_unknown=True), NOW
    )
    assert resend.phase is Phase.READY
    assert resend.pause_s == 12.0


def test_transient_backs_off_with_full_jitter_within_bounds() -> None:
    """A transient failure retries later, no sooner than now and no later than the backoff cap."""
    rng = random.Random(1)
    for attempts in range(2):
        out = decide.after_submit(due(attempts=attempts), Transient("503"), POLICY, NOW, rng)
        wait = out.fields["next_attempt_at"] - NOW
        assert timedelta(0) <= wait <= timedelta(seconds=2**attempts)
        assert out.fields["attempts"] == attempts + 1
        assert out.to_status is TaskStatus.NOT_STARTED


def test_transient_honours_retry_after() -> None:
    """A Retry-After on a transient failure is a floor for the next attempt."""
    out = decide.after_submit(due(), Transient("503", retry_after_s=30.0), POLICY, NOW)
    assert out.fields["next_attempt_at"] >= NOW + timedelta(seconds=30)


def test_ambiguous_failure_is_looked_up_not_resent() -> None:
    """A timeout after sending leads to a lookup by client reference, not a new create."""
    out = decide.after_submit(due(), Transient("timeout", ambiguous=True), POLICY, NOW)
    assert out.phase is Phase.UNCERTAIN
    assert out.fields["maybe_created"] is True


def test_giving_up_on_an_ambiguous_create_keeps_it_marked() -> None:
    """Giving up after an ambiguous failure keeps maybe_created, so a retry looks up first."""
    out = decide.after_submit(due(attempts=2), Transient("502", ambiguous=True), POLICY, NOW)
    assert out.to_status is TaskStatus.ERROR
    assert out.fields["maybe_created"] is True


def test_giving_up_on_lookups_leaves_the_mark_alone() -> None:
    """A lookup that keeps failing ends in Error without clearing maybe_created."""
    task = due(phase=Phase.UNCERTAIN, attempts=2, maybe_created=True)
    out = decide.after_lookup(task, Transient("HTTP 500"), POLICY, NOW)
    assert out.to_status is TaskStatus.ERROR
    assert "maybe_created" not in out.fields


NO_LOOKUP = replace(POLICY, can_lookup=False)


def test_ambiguous_create_without_lookup_ends_in_error_at_once() -> None:
    """A kind with no lookup is not sent again after an ambiguous failure: Error,
    "outcome unknown: check the provider", without spending further attempts."""
    out = decide.after_submit(due(), Transient("read timeout", ambiguous=True), NO_LOOKUP, NOW)
    assert out.to_status is TaskStatus.ERROR
    assert out.phase is Phase.DONE
    assert out.event == "outcome_unknown"
    assert out.detail is not None
    assert out.detail.startswith("outcome unknown: check the provider")
    assert "read timeout" in out.detail
    assert out.fields["maybe_created"] is False
    assert out.end_descendants is not None


def test_ambiguous_create_without_lookup_is_resent_only_when_opted_in() -> None:
    """With resubmit_when_unknown the provider accepted the risk: submit again after backoff."""
    policy = replace(NO_LOOKUP, resubmit_when_unknown=True)
    out = decide.after_submit(due(), Transient("read timeout", ambiguous=True), policy, NOW)
    assert out.to_status is TaskStatus.NOT_STARTED
    assert out.phase is Phase.READY
    assert out.fields["attempts"] == 1


def test_unresolvable_lookup_ends_in_error_without_counting_attempts() -> None:
    """A task to look up whose kind has no lookup (a lost worker) ends in Error at once."""
    out = decide.unresolved(due(phase=Phase.UNCERTAIN, maybe_created=True), NO_LOOKUP, NOW)
    assert out.to_status is TaskStatus.ERROR
    assert out.detail is not None
    assert "outcome unknown" in out.detail
    assert "attempts" not in out.fields


def test_unresolvable_lookup_is_resubmitted_when_opted_in() -> None:
    """With resubmit_when_unknown a lost worker's create is simply made ready again."""
    policy = replace(NO_LOOKUP, resubmit_when_unknown=True)
    out = decide.unresolved(due(phase=Phase.UNCERTAIN, maybe_created=True), policy, NOW)
    assert (out.to_status, out.phase) == (TaskStatus.NOT_STARTED, Phase.READY)
    assert out.fields["maybe_created"] is False


def test_answers_that_settle_a_create_clear_the_mark() -> None:
    """Accepted, found, not found, refused and rate-limited submits clear maybe_created;
    a plain (non-ambiguous) transient failure does too."""
    uncertain = due(phase=Phase.UNCERTAIN, maybe_created=True)
    outs = [
        decide.after_submit(due(), Accepted("x", completed=False), POLICY, NOW),
        decide.after_submit(due(), Accepted("x", completed=True), POLICY, NOW),
        decide.after_submit(due(), Failed("bad"), POLICY, NOW),
        decide.after_submit(due(), RateLimited(1.0, "429"), POLICY, NOW),
        decide.after_submit(due(), Transient("connection refused"), POLICY, NOW),
        decide.after_lookup(uncertain, Found("x"), POLICY, NOW),
        decide.after_lookup(uncertain, NotFound(), POLICY, NOW),
    ]
    assert [o.fields["maybe_created"] for o in outs] == [False] * len(outs)


def test_a_rate_limited_lookup_stays_a_lookup() -> None:
    """A 429 on a lookup keeps the task uncertain: the next attempt is a lookup again."""
    task = due(phase=Phase.UNCERTAIN, maybe_created=True)
    out = decide.after_lookup(task, RateLimited(2.0, "429"), POLICY, NOW)
    assert out.phase is Phase.UNCERTAIN
    assert "maybe_created" not in out.fields


def test_outcomes_carry_the_claim_they_were_decided_under() -> None:
    """Every outcome names the claim token of its task, so the store can guard by it."""
    task = due(claimed_by="w/abc")
    outs = [
        decide.after_submit(task, Accepted("x", completed=False), POLICY, NOW),
        decide.after_submit(task, Transient("t", ambiguous=True), NO_LOOKUP, NOW),
        decide.after_submit(task, RateLimited(1.0, "429"), POLICY, NOW),
        decide.unresolved(task, NO_LOOKUP, NOW),
    ]
    assert {o.claim for o in outs} == {"w/abc"}


def test_gives_up_after_max_attempts_with_last_error() -> None:
    """After max_attempts transient failures: Error with the last error, children ended."""
    out = decide.after_submit(due(attempts=2), Transient("HTTP 500"), POLICY, NOW)
    assert out.to_status is TaskStatus.ERROR
    assert "HTTP 500" in out.fields["validation_error"]
    assert out.end_descendants is not None
    assert "parent task 7 failed" in out.end_descendants[1]


def test_validation_failure_is_error_with_message() -> None:
    """A permanent refusal stores the provider's message as the validation error."""
    out = decide.after_submit(due(), Failed("name: required"), POLICY, NOW)
    assert out.to_status is TaskStatus.ERROR
    assert out.fields["validation_error"] == "name: required"


def test_lookup_found_adopts_the_existing_object() -> None:
    """A lookup that finds the object adopts its id instead of creating a duplicate."""
    out = decide.after_lookup(due(phase=Phase.UNCERTAIN), Found("cmp-9"), POLICY, NOW)
    assert out.to_status is TaskStatus.IN_PROGRESS
    assert out.fields["external_id"] == "cmp-9"


def test_lookup_not_found_submits_again() -> None:
    """A lookup that finds nothing makes the task ready to submit again."""
    out = decide.after_lookup(due(phase=Phase.UNCERTAIN), NotFound(), POLICY, NOW)
    assert out.phase is Phase.READY
    assert out.to_status is TaskStatus.NOT_STARTED


def test_poll_error_stores_provider_message() -> None:
    """An Error status stores the third party's message, as the prototype did."""
    task = due(status=TaskStatus.IN_PROGRESS, phase=Phase.POLLING, external_id="3")
    report = StatusReport(TaskStatus.ERROR, "Invalid IP range: 192.168.1.256", "Error")
    out = decide.after_poll(task, report, POLICY, NOW)
    assert out.to_status is TaskStatus.ERROR
    assert out.fields["validation_error"] == "Invalid IP range: 192.168.1.256"


def test_poll_interval_grows_while_unchanged_and_resets_on_change() -> None:
    """The poll interval backs off while nothing changes and resets when the status moves."""
    task = due(status=TaskStatus.IN_PROGRESS, phase=Phase.POLLING, poll_interval_s=2.0)
    same = decide.after_poll(task, StatusReport(TaskStatus.IN_PROGRESS, None, "p"), POLICY, NOW)
    assert same.fields["poll_interval_s"] == 3.0
    tracked = due(status=TaskStatus.NOT_STARTED, phase=Phase.POLLING, poll_interval_s=8.0)
    moved = decide.after_poll(tracked, StatusReport(TaskStatus.IN_PROGRESS, None, "p"), POLICY, NOW)
    assert moved.to_status is TaskStatus.IN_PROGRESS
    assert moved.fields["poll_interval_s"] == 2.0


def test_poll_never_moves_backwards() -> None:
    """A provider answering Not Started for an In Progress task changes nothing."""
    task = due(status=TaskStatus.IN_PROGRESS, phase=Phase.POLLING)
    out = decide.after_poll(task, StatusReport(TaskStatus.NOT_STARTED, None, "x"), POLICY, NOW)
    assert out.to_status is TaskStatus.IN_PROGRESS


def test_deadline_ends_a_task_that_never_settles() -> None:
    """Past the deadline a non-final answer ends the task with a message naming the provider."""
    task = due(status=TaskStatus.IN_PROGRESS, phase=Phase.POLLING, deadline_at=NOW)
    out = decide.after_poll(task, StatusReport(TaskStatus.IN_PROGRESS, None, "p"), POLICY, NOW)
    assert out.to_status is TaskStatus.ERROR
    assert out.fields["validation_error"] == "no final status from acme after 1h"


def test_a_good_answer_starts_the_failure_count_again() -> None:
    """``max_attempts`` counts failures in a row: an accepted create and a status read reset
    it, so scattered poll errors never end a healthy task."""
    accepted = decide.after_submit(due(attempts=2), Accepted("c-1", completed=False), POLICY, NOW)
    assert accepted.fields["attempts"] == 0
    polling = due(status=TaskStatus.IN_PROGRESS, phase=Phase.POLLING, external_id="c-1")
    report = StatusReport(TaskStatus.IN_PROGRESS, None, "processing")
    read = decide.after_poll(replace(polling, attempts=2), report, POLICY, NOW)
    assert read.to_status is TaskStatus.IN_PROGRESS
    assert read.fields["attempts"] == 0


def test_a_lookup_that_finds_nothing_keeps_counting() -> None:
    """An ambiguous create that keeps failing is not retried forever: the lookup between
    two creates is not a good answer for the create."""
    out = decide.after_lookup(due(attempts=2, phase=Phase.UNCERTAIN), NotFound(), POLICY, NOW)
    assert "attempts" not in out.fields


def test_scattered_poll_errors_never_end_a_task() -> None:
    """Any run of polls where failures never come ``max_attempts`` in a row stays polling."""
    rng = random.Random(7)
    task = due(status=TaskStatus.IN_PROGRESS, phase=Phase.POLLING, external_id="c-1")
    report = StatusReport(TaskStatus.IN_PROGRESS, None, "processing")
    for step in range(200):
        fail = step % POLICY.max_attempts != POLICY.max_attempts - 1
        answer = Transient("502 bad gateway") if fail else report
        out = decide.after_poll(task, answer, POLICY, NOW, rng)
        assert out.to_status is TaskStatus.IN_PROGRESS, step
        task = replace(task, attempts=out.fields["attempts"])


def test_a_tracked_task_gets_the_deadline_at_its_first_read() -> None:
    """A task polled without a create here (tracked, or polled again after a retry) has no
    deadline yet: the first read starts it, and a read past it ends the task."""
    tracked = due(status=TaskStatus.IN_PROGRESS, phase=Phase.POLLING, external_id="3")
    report = StatusReport(TaskStatus.IN_PROGRESS, None, "processing")
    first = decide.after_poll(tracked, report, POLICY, NOW)
    assert first.fields["deadline_at"] == NOW + timedelta(hours=1)
    later = replace(tracked, deadline_at=first.fields["deadline_at"])
    past = decide.after_poll(later, report, POLICY, NOW + timedelta(hours=1, seconds=1))
    assert (past.to_status, past.event) == (TaskStatus.ERROR, "deadline")


def test_backoff_never_overflows() -> None:
    """Attempt numbers far past any float power of two still give a delay within bounds."""
    backoff = Backoff(1.0, 300.0)
    for attempt in (1025, 10_000, 2**40):
        assert 0.0 <= backoff.delay(attempt, random.Random(1)) <= 300.0


def test_giving_up_on_an_object_the_provider_no_longer_has() -> None:
    """A last failed status read that found no object ends ``object_gone``, marked like an
    ambiguous create: a retry looks it up (or, with no lookup, ends "outcome unknown")
    before anything is created again."""
    task = due(status=TaskStatus.IN_PROGRESS, phase=Phase.POLLING, external_id="c-1", attempts=2)
    gone = Transient("HTTP 404: c-1 not found", gone=True)
    out = decide.after_poll(task, gone, POLICY, NOW)
    assert (out.to_status, out.event) == (TaskStatus.ERROR, "object_gone")
    assert out.fields["maybe_created"] is True
    assert "acme answered that it has no object c-1" in out.fields["validation_error"]
    assert "looks it up" in out.fields["validation_error"]
    no_lookup = decide.after_poll(task, gone, NO_LOOKUP, NOW)
    assert (no_lookup.event, no_lookup.fields["maybe_created"]) == ("object_gone", True)
    assert "a retry ends in 'outcome unknown'" in no_lookup.fields["validation_error"]
    opted_in = replace(NO_LOOKUP, resubmit_when_unknown=True)
    resubmit = decide.after_poll(task, gone, opted_in, NOW)
    assert "creates it again (resubmit_when_unknown)" in resubmit.fields["validation_error"]
    tracked = decide.after_poll(replace(task, track_only=True), gone, POLICY, NOW)
    assert (tracked.event, tracked.fields["maybe_created"]) == ("object_gone", False)
    assert "only polls it again" in tracked.fields["validation_error"]
    # Before the last attempt, and for other failures, nothing changes.
    early = decide.after_poll(replace(task, attempts=0), gone, POLICY, NOW)
    assert (early.event, "maybe_created" in early.fields) == ("attempt_failed", False)
    down = decide.after_poll(task, Transient("HTTP 503"), POLICY, NOW)
    assert (down.event, "maybe_created" in down.fields) == ("gave_up", False)
