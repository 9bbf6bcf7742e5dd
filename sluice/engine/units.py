"""Work units (one provider request each) and outcomes (what the store must record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from sluice.domain import Phase, TaskStatus


class Operation(StrEnum):
    """What one request does: create an object, find a lost one, or read statuses."""

    SUBMIT = "submit"
    LOOKUP = "lookup"
    POLL = "poll"

    @property
    def access(self) -> Literal["read", "write"]:
        """The limiter budget it draws on."""
        return "write" if self is Operation.SUBMIT else "read"


@dataclass(frozen=True)
class DueTask:
    """A task the dispatcher found due, with what the provider adapter needs of it."""

    id: int
    provider: str
    kind: str | None
    payload: dict[str, Any] | None
    external_id: str | None
    client_ref: str | None
    parent_id: int | None
    parent_external_id: str | None
    status: TaskStatus
    phase: Phase
    track_only: bool
    attempts: int
    polls: int
    poll_interval_s: float | None
    deadline_at: datetime | None

    @property
    def operation(self) -> Operation:
        if self.phase is Phase.POLLING:
            return Operation.POLL
        if self.phase is Phase.UNCERTAIN:
            return Operation.LOOKUP
        return Operation.SUBMIT


@dataclass(frozen=True)
class WorkUnit:
    """One request to one provider on behalf of one or more tasks (a batch poll)."""

    provider: str
    operation: Operation
    tasks: tuple[DueTask, ...]


@dataclass(frozen=True)
class Outcome:
    """A change to record for one task, applied only if its status is still ``from_status``.

    ``event`` is written to the task's history when set (always for a status change).
    ``release_children`` makes waiting children ready; ``end_descendants`` ends them.
    """

    task_id: int
    from_status: TaskStatus
    to_status: TaskStatus
    phase: Phase
    event: str | None = None
    detail: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    release_children: bool = False
    end_descendants: tuple[TaskStatus, str] | None = None
    pause_s: float | None = None
