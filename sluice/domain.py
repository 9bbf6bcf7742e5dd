"""Sluice's pure values: statuses, phases, transitions, tasks, work units, outcomes, and who
may act (tenants, roles, API keys, audit records).

The store, the engine and the providers share these; this module imports nothing of Sluice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

DEFAULT_TENANT = "default"
"""The tenant of tasks created without a key (the open loopback demo) and of older rows."""

DEFAULT_PRIORITY = 0
PRIORITY_MIN = -100
PRIORITY_MAX = 100
"""A task's priority orders work within its fairness key only (higher first)."""
MAX_ID = 2**53
"""The largest task or job id anything accepts: ids stay exact in JavaScript clients, and a
larger number sent to the database overflowed SQLite's integer (a 500 in the console)."""
FAIRNESS_KEY_MAX = 128
"""A fairness key longer than this (a payload field's value) keeps its first characters and
ends with its :func:`value_digest`, this long in all (the width of its columns)."""

DIGEST_MARK = "~"
"""What starts a value's digest form in a limit key (no plain account value holds it)."""


def value_digest(value: str) -> str:
    """``~`` and the first 32 hex digits of the SHA-256 of ``value``'s UTF-8: the stable,
    short stand-in for a value too long or unsafe for a key (the same in every process and
    after every restart). A lone surrogate, which no stored payload holds, is hashed as it
    is rather than refused."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return DIGEST_MARK + digest[:32]


TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A tenant name: letters, digits, ``.``, ``_``, ``-``; at most 64 characters."""


class TaskStatus(StrEnum):
    """The public status vocabulary (the prototype's four words, plus Cancelled)."""

    NOT_STARTED = "Not Started"
    IN_PROGRESS = "In Progress"
    COMPLETED = "Completed"
    ERROR = "Error"
    CANCELLED = "Cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED})


class Phase(StrEnum):
    """Finer internal state beside the public status.

    ``waiting_parent``: Not Started, parent not Completed yet.
    ``ready``: Not Started, due at ``next_attempt_at``.
    ``submitting``: a worker holds the task and may be calling the provider.
    ``uncertain``: a submit may have reached the provider; look up before re-creating.
    ``polling``: In Progress, next poll due at ``next_attempt_at``.
    ``done``: a final status.
    """

    WAITING_PARENT = "waiting_parent"
    READY = "ready"
    SUBMITTING = "submitting"
    UNCERTAIN = "uncertain"
    POLLING = "polling"
    DONE = "done"


ALLOWED_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.NOT_STARTED: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED}
    ),
    TaskStatus.IN_PROGRESS: frozenset(
        {TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED}
    ),
    # Retry (POST /api/tasks/{id}/retry) puts failed or cancelled work back in line.
    TaskStatus.ERROR: frozenset({TaskStatus.NOT_STARTED}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.NOT_STARTED}),
    TaskStatus.COMPLETED: frozenset(),
}


def can_transition(current: TaskStatus, new: TaskStatus) -> bool:
    """Whether ``current -> new`` is a legal status change (same status is not a change)."""
    return new in ALLOWED_TRANSITIONS[current]


@dataclass(frozen=True)
class Task:
    """A task as the store knows it."""

    id: int
    provider: str
    kind: str | None
    payload: dict[str, Any] | None
    external_id: str | None
    parent_id: int | None
    status: TaskStatus
    phase: Phase
    track_only: bool
    validation_error: str | None
    last_error: str | None
    attempts: int
    polls: int
    next_attempt_at: datetime | None
    idempotency_key: str | None
    client_ref: str | None
    created_at: datetime
    updated_at: datetime
    # A create may have reached the provider and nothing has settled whether it did: any
    # further attempt looks the object up first (see Phase.UNCERTAIN).
    maybe_created: bool = False
    tenant: str = DEFAULT_TENANT
    priority: int = DEFAULT_PRIORITY
    fairness_key: str = DEFAULT_TENANT
    # Until when a worker's claim holds it (None: unclaimed). A killed worker's claim holds
    # until then: `explain` says so rather than "waiting for a slot".
    claimed_until: datetime | None = None


@dataclass(frozen=True)
class TaskEvent:
    """One entry of a task's append-only history."""

    id: int
    task_id: int
    at: datetime
    event: str
    from_status: TaskStatus | None
    to_status: TaskStatus | None
    detail: str | None


@dataclass(frozen=True)
class Submission:
    """A task to create, as a client describes it (API body, file row, CLI).

    :func:`sluice.submissions.check` validates it and fills in ``provider`` and
    ``status``; the store then creates it as it is. ``parent_index`` names an earlier
    item of the same batch as the parent; ``parent_id`` names a task that already
    exists. At most one of them is set. ``request_hash`` tells an idempotent replay
    from a reuse of the same ``idempotency_key``, which is unique within ``tenant``.
    """

    provider: str | None = None
    kind: str | None = None
    payload: dict[str, Any] | None = None
    id: int | None = None
    parent_id: int | None = None
    parent_index: int | None = None
    status: TaskStatus | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    tenant: str = DEFAULT_TENANT
    priority: int = DEFAULT_PRIORITY
    # Who this task's provider budget is shared by (see docs/providers.md, fair share);
    # submissions.check fills it in from the tenant or the provider's fairness_field.
    fairness_key: str | None = None

    @property
    def track_only(self) -> bool:
        """The prototype's mode: an object submitted elsewhere, tracked by its id."""
        return self.kind is None


Access = Literal["read", "write"]
"""The limiter budget a request draws on (a provider's limits may differ per access)."""


class Operation(StrEnum):
    """What one request does: create an object, find a lost one, or read statuses."""

    SUBMIT = "submit"
    LOOKUP = "lookup"
    POLL = "poll"

    @property
    def access(self) -> Access:
        """The limiter budget it draws on."""
        return "write" if self is Operation.SUBMIT else "read"


def operation_of(phase: Phase) -> Operation:
    """The request a task in ``phase`` makes next: a poll, a lookup, or a create."""
    if phase is Phase.POLLING:
        return Operation.POLL
    if phase is Phase.UNCERTAIN:
        return Operation.LOOKUP
    return Operation.SUBMIT


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
    maybe_created: bool = False
    # The claim this task was handed out under: only its holder may record an outcome.
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    tenant: str = DEFAULT_TENANT
    priority: int = DEFAULT_PRIORITY
    fairness_key: str = DEFAULT_TENANT

    @property
    def operation(self) -> Operation:
        return operation_of(self.phase)


@dataclass(frozen=True)
class WorkUnit:
    """One request to one provider on behalf of one or more tasks (a batch poll).

    ``claimed_at``: when this worker claimed its tasks (its monotonic clock), so that the
    unit is sent only while the claim's lease has time left; None for a unit made outside
    a claim (it counts as already stale)."""

    provider: str
    operation: Operation
    tasks: tuple[DueTask, ...]
    claimed_at: float | None = None


EXTERNAL_ID_MAX_CHARS = 255
"""The longest id of a provider's object Sluice keeps (the ``external_id`` column)."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""What no database here stores as text: U+0000 (PostgreSQL refuses it) and lone UTF-16
surrogates (JSON's ``"\\ud800"`` decodes to one; UTF-8 cannot encode it)."""


def storable_text(value: str | None) -> str | None:
    """``value`` with each character no database here can store as U+FFFD (what the store
    keeps of a provider's text: ``store/tables.py``, ``ForeignText``)."""
    if value is None or (value.isascii() and "\x00" not in value):
        return value
    return _UNSTORABLE.sub("\ufffd", value)


@dataclass(frozen=True)
class Outcome:
    """A change to record for one task.

    Applied only while the task's status is still ``from_status`` *and* the claim it was
    decided under (``claim``, the ``claimed_by`` token of its :class:`DueTask`) still
    holds: a cancel wins, and so does a worker that took over after this one's lease ended.
    ``event`` is written to the task's history when set (always for a status change).
    ``release_children`` makes waiting children ready; ``end_descendants`` ends them
    (see :mod:`sluice.store.chains`).
    """

    task_id: int
    from_status: TaskStatus
    to_status: TaskStatus
    phase: Phase
    event: str | None = None
    detail: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    claim: str | None = None
    release_children: bool = False
    end_descendants: tuple[TaskStatus, str] | None = None
    pause_s: float | None = None


class Role(StrEnum):
    """What an API key may do; each role may do everything the roles before it may.

    ``viewer`` reads and ``submitter`` also creates, cancels and retries: both belong to one
    tenant. ``operator`` also pauses, resumes and pins provider keys and runs bulk actions
    by filter; ``admin`` also manages API keys: both span every tenant, since a provider
    pause stalls every tenant's work.
    """

    VIEWER = "viewer"
    SUBMITTER = "submitter"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """Whether a key with this role may do what ``needed`` may."""
        return self.rank >= needed.rank

    @property
    def spans_tenants(self) -> bool:
        """Operators and admins act on every tenant; viewers and submitters on their own."""
        return self.rank >= Role.OPERATOR.rank


@dataclass(frozen=True)
class ApiKey:
    """An API key as stored: never its secret, only its public id and what it may do."""

    id: str
    name: str
    role: Role
    tenant: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def usable_at(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def state_at(self, now: datetime) -> Literal["active", "revoked", "expired"]:
        """``revoked`` (whether or not it had also expired), ``expired``, or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.usable_at(now) else "expired"


@dataclass(frozen=True)
class Actor:
    """Who did an audited action: an API key, or one of Sluice's own parts.

    ``kind`` is ``"key"`` for a request with an API key, ``"loopback"`` for a request the
    open loopback mode let in without one, ``"cli"`` for a command run on the host, and
    ``"system:<part>"`` (``system:limiter``) for Sluice's own doings.
    """

    kind: str
    key_id: str | None = None
    key_name: str | None = None

    @classmethod
    def of_key(cls, key: ApiKey) -> Actor:
        return cls("key", key.id, key.name)


LOCAL_ACTOR = Actor("cli")
"""The actor of service calls made on the host itself (CLI commands, scripts, tests)."""


@dataclass(frozen=True)
class AuditRecord:
    """One audited action: who (actor and key), on which tenant, what, on what, when.

    ``tenant`` is the tenant whose data the action touched (None for provider-wide
    actions); ``target`` names the object (``task:42``, ``key:ab12cd34ef56``,
    ``provider:sandbox``); ``detail`` holds the action's parameters.
    """

    id: int
    at: datetime
    actor: str
    key_id: str | None
    key_name: str | None
    tenant: str | None
    action: str
    target: str
    detail: dict[str, Any]
