"""The status vocabulary and the transitions the store allows."""

from __future__ import annotations

import itertools

import pytest

from sluice.domain import (
    ALLOWED_TRANSITIONS,
    Phase,
    Submission,
    TaskStatus,
    can_transition,
)
from sluice.store.chains import initial_phase


def test_prototype_status_words_unchanged() -> None:
    """The prototype's four status strings are still the public vocabulary, spelt the same."""
    assert {s.value for s in TaskStatus} >= {"Not Started", "In Progress", "Completed", "Error"}
    assert TaskStatus("Not Started") is TaskStatus.NOT_STARTED


def test_unknown_status_word_is_refused() -> None:
    """A status word that is not in the vocabulary cannot be turned into a status."""
    with pytest.raises(ValueError, match="Done"):
        TaskStatus("Done")


def test_final_statuses() -> None:
    """Completed, Error and Cancelled are final; Not Started and In Progress are not."""
    assert {s for s in TaskStatus if s.is_final} == {
        TaskStatus.COMPLETED,
        TaskStatus.ERROR,
        TaskStatus.CANCELLED,
    }


def test_every_status_has_a_transition_rule() -> None:
    """No status is missing from the transition table."""
    assert set(ALLOWED_TRANSITIONS) == set(TaskStatus)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (TaskStatus.NOT_STARTED, TaskStatus.IN_PROGRESS),
        (TaskStatus.NOT_STARTED, TaskStatus.COMPLETED),
        (TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED),
        (TaskStatus.IN_PROGRESS, TaskStatus.ERROR),
        (TaskStatus.IN_PROGRESS, TaskStatus.CANCELLED),
        (TaskStatus.ERROR, TaskStatus.NOT_STARTED),
        (TaskStatus.CANCELLED, TaskStatus.NOT_STARTED),
    ],
)
def test_allowed_transitions(current: TaskStatus, new: TaskStatus) -> None:
    """The lifecycle's normal moves, and retry of failed or cancelled work, are allowed."""
    assert can_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (TaskStatus.COMPLETED, TaskStatus.NOT_STARTED),
        (TaskStatus.COMPLETED, TaskStatus.ERROR),
        (TaskStatus.COMPLETED, TaskStatus.CANCELLED),
        (TaskStatus.IN_PROGRESS, TaskStatus.NOT_STARTED),
        (TaskStatus.ERROR, TaskStatus.COMPLETED),
        (TaskStatus.CANCELLED, TaskStatus.IN_PROGRESS),
    ],
)
def test_illegal_transitions(current: TaskStatus, new: TaskStatus) -> None:
    """Completed is for ever, and nothing skips back into the middle of the lifecycle."""
    assert not can_transition(current, new)


def test_no_status_transitions_to_itself() -> None:
    """Staying in the same status is not a change."""
    for status in TaskStatus:
        assert not can_transition(status, status)


def test_completed_is_terminal() -> None:
    """No status at all can follow Completed."""
    assert not any(can_transition(TaskStatus.COMPLETED, new) for new in TaskStatus)


def test_only_final_statuses_lead_back_to_not_started() -> None:
    """Going back to Not Started (retry) is only possible from Error or Cancelled."""
    sources = {
        current
        for current, new in itertools.product(TaskStatus, TaskStatus)
        if new is TaskStatus.NOT_STARTED and can_transition(current, new)
    }
    assert sources == {TaskStatus.ERROR, TaskStatus.CANCELLED}


def test_task_without_kind_is_track_only() -> None:
    """A task with no kind is the prototype's tracked object; one with a kind is a submission."""
    assert Submission(provider="sandbox", id=1).track_only
    assert not Submission(provider="sandbox", kind="campaign", payload={}).track_only


@pytest.mark.parametrize(
    ("spec", "parent", "expected"),
    [
        (Submission("sandbox", id=1), None, (TaskStatus.NOT_STARTED, Phase.POLLING)),
        (
            Submission("sandbox", id=1, status=TaskStatus.COMPLETED),
            None,
            (TaskStatus.COMPLETED, Phase.DONE),
        ),
        (Submission("sandbox", "campaign", {}), None, (TaskStatus.NOT_STARTED, Phase.READY)),
        (
            Submission("sandbox", "campaign", {}, parent_id=1),
            TaskStatus.COMPLETED,
            (TaskStatus.NOT_STARTED, Phase.READY),
        ),
        (
            Submission("sandbox", "campaign", {}, parent_id=1),
            TaskStatus.IN_PROGRESS,
            (TaskStatus.NOT_STARTED, Phase.WAITING_PARENT),
        ),
        (
            Submission("sandbox", "campaign", {}, parent_id=1),
            TaskStatus.ERROR,
            (TaskStatus.ERROR, Phase.DONE),
        ),
        (
            Submission("sandbox", "campaign", {}, parent_id=1),
            TaskStatus.CANCELLED,
            (TaskStatus.CANCELLED, Phase.DONE),
        ),
    ],
)
def test_initial_phase_follows_mode_and_parent(
    spec: Submission, parent: TaskStatus | None, expected: tuple[TaskStatus, Phase]
) -> None:
    """A new task starts polled, ready, waiting or already ended according to its parent."""
    status, phase, message = initial_phase(spec, parent)

    assert (status, phase) == expected
    assert (message is not None) == (parent in (TaskStatus.ERROR, TaskStatus.CANCELLED))
