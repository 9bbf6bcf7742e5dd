"""Parent and child tasks, in one place: how a child starts, and what a parent's end does.

A child waits (``waiting_parent``) until its parent is Completed, then becomes ready; the
parent's external id reaches the child's payload when the child is submitted. A parent
that ends in Error or Cancelled ends every unfinished descendant with a message naming it.
The engine's outcomes ask for these effects (``Outcome.release_children`` and
``Outcome.end_descendants``, built with :func:`children_end`); the API's cancel and retry
use the same functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, select, update

from sluice.domain import FINAL_STATUSES, Phase, Submission, Task, TaskStatus
from sluice.store.rows import (
    Unindexed,
    change_status,
    chunks,
    is_in,
    row_to_task,
    tasks,
)


def initial_phase(
    spec: Submission, parent_status: TaskStatus | None
) -> tuple[TaskStatus, Phase, str | None]:
    """Status, phase and message a new task starts with, given its parent's status."""
    status = spec.status or TaskStatus.NOT_STARTED
    if spec.track_only:
        if status.is_final:
            return status, Phase.DONE, None
        return status, Phase.POLLING, None
    if parent_status is None or parent_status is TaskStatus.COMPLETED:
        return TaskStatus.NOT_STARTED, Phase.READY, None
    if parent_status is TaskStatus.ERROR:
        return TaskStatus.ERROR, Phase.DONE, "parent task failed"
    if parent_status is TaskStatus.CANCELLED:
        return TaskStatus.CANCELLED, Phase.DONE, "parent task was cancelled"
    return TaskStatus.NOT_STARTED, Phase.WAITING_PARENT, None


def restart_phase(held: bool, maybe_created: bool, parent_status: TaskStatus | None) -> Phase:
    """The phase of a retried task: polled, waiting for its parent, looked up, or ready.

    An object the provider holds (``held``: a tracked task, or one whose create was
    accepted and that Sluice, not the provider, ended: cancelled, given up, past its
    deadline, its parent ended) is polled again, never created twice. A task whose create
    may already have reached the provider is looked up by client reference before any
    create (``uncertain``); a waiting one is when its parent completes.
    """
    if held:
        return Phase.POLLING
    if parent_status not in (None, TaskStatus.COMPLETED):
        return Phase.WAITING_PARENT
    return Phase.UNCERTAIN if maybe_created else Phase.READY


def children_end(parent_id: int, status: TaskStatus, message: str) -> tuple[TaskStatus, str]:
    """How the descendants of a parent ending in ``status`` with ``message`` end."""
    verb = "was cancelled" if status is TaskStatus.CANCELLED else "failed"
    return status, f"parent task {parent_id} {verb}: {message}"


_UNFINISHED = tasks.c.status.not_in([s.value for s in FINAL_STATUSES])


def release_children(conn: Connection, parent_ids: Sequence[int], now: datetime) -> None:
    """Make the waiting children of Completed ``parent_ids`` due now: ready, or uncertain
    (looked up first) for a child whose create may already have reached the provider."""
    # The phase and the status out of SQLite's index choice (``+column``): without
    # statistics it read every Not Started task along ix_tasks_status for two parents or
    # more, where their children are a few entries of ix_tasks_parent_id.
    for chunk in chunks(parent_ids):
        conn.execute(
            update(tasks)
            .where(
                is_in(tasks.c.parent_id, "parent_ids"),
                Unindexed.phase == Phase.WAITING_PARENT.value,
                Unindexed.status == TaskStatus.NOT_STARTED.value,
            )
            .values(
                phase=case((tasks.c.maybe_created, Phase.UNCERTAIN.value), else_=Phase.READY.value),
                next_attempt_at=now,
                updated_at=now,
            ),
            {"parent_ids": chunk},
        )


def descendant_ids(conn: Connection, roots: Sequence[int]) -> list[int]:
    """Ids of every descendant of ``roots`` (not the roots), any depth."""
    found: list[int] = []
    frontier = list(roots)
    while frontier:
        children: list[int] = []
        for chunk in chunks(frontier):
            children.extend(
                conn.execute(
                    select(tasks.c.id).where(is_in(tasks.c.parent_id, "parent_ids")),
                    {"parent_ids": chunk},
                ).scalars()
            )
        found.extend(children)
        frontier = children
    return found


def settled_descendants(conn: Connection, roots: Sequence[int]) -> Iterator[list[int]]:
    """Ids of the descendants of ``roots``, in batches of ones not seen before: after the
    caller has changed a batch the tree is read again, until it shows nothing new.

    A child being created under a descendant holds that descendant's row (``FOR SHARE``,
    repository), so changing the descendant waits for the child's commit, and the next read
    finds the child: ending or retrying a tree takes in children created meanwhile."""
    seen: set[int] = set()
    while fresh := [i for i in descendant_ids(conn, roots) if i not in seen]:
        seen.update(fresh)
        yield fresh


def end_descendants(
    conn: Connection, roots: Sequence[int], status: TaskStatus, message: str, now: datetime
) -> list[int]:
    """End every unfinished descendant of ``roots`` with ``status`` and ``message``; the
    ids of those ended."""
    ended: list[int] = []
    for fresh in settled_descendants(conn, roots):
        for chunk in chunks(fresh):
            rows = conn.execute(
                select(tasks).where(is_in(tasks.c.id, "ended_ids"), _UNFINISHED),
                {"ended_ids": chunk},
            ).all()
            for row in rows:
                if _end(conn, row_to_task(row), status, message, now):
                    ended.append(row.id)
    return ended


def _end(conn: Connection, task: Task, status: TaskStatus, message: str, now: datetime) -> bool:
    fields: dict[str, Any] = {
        "phase": Phase.DONE.value,
        "next_attempt_at": None,
        "last_error": message,
    }
    if status is TaskStatus.ERROR:
        fields["validation_error"] = message
    return change_status(
        conn, task, status, now=now, event="parent_ended", detail=message, **fields
    )
