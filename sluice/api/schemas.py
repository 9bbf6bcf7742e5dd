"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sluice import errors, submissions
from sluice.catalog import Catalog
from sluice.clock import as_utc
from sluice.domain import (
    DEFAULT_PRIORITY,
    DEFAULT_TENANT,
    MAX_ID,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TENANT_PATTERN,
    ApiKey,
    AuditRecord,
    Phase,
    Role,
    Submission,
    Task,
    TaskEvent,
    TaskStatus,
)
from sluice.ratelimit.rate import shown_rate
from sluice.store.rows import decode_cursor
from sluice.submissions import MAX_BULK, MAX_KEY_CHARS, MAX_NAME_CHARS

TenantQuery = Annotated[
    str | None,
    Query(
        pattern=TENANT_PATTERN,
        description="operators and admins: the tenant to act within (default: every tenant "
        "for reads, 'default' for creates); other keys may only name their own",
    ),
]


def refuse_unstorable(value: Any) -> Any:
    """Refuse NUL characters and non-finite numbers, by :func:`submissions.unstorable`."""
    problem = submissions.unstorable(value)
    if problem is not None:
        raise errors.InvalidValue(problem)
    return value


# Query parameters; bodies that create tasks are checked by submissions.value_problems.
Text = Annotated[str, AfterValidator(refuse_unstorable)]


def known_cursor(cursor: str | None) -> str | None:
    """Refuse a cursor no listing returned while the query is validated, so the refusal
    names the ``cursor`` parameter (the store's InvalidTask could only name the body)."""
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except errors.InvalidTask as exc:
            raise errors.InvalidValue(str(exc)) from None
    return cursor


Cursor = Annotated[
    str | None,
    Query(max_length=200, description="the next_cursor of the previous page"),
    AfterValidator(known_cursor),
]

UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]
"""A date and time, as aware UTC (UTC if it has no zone); one outside years 1-9999 once in
UTC (``0001-01-01T00:00:00+14:00``) is refused naming its field, not a 500 later."""


def _bounds(**schema: Any) -> Any:
    """Document a bound in OpenAPI; submissions.value_problems enforces it for every path."""
    return {"json_schema_extra": schema}


class TaskCreate(BaseModel):
    """A task to create.

    The prototype's form ``{"id": 1, "status": "Not Started"}`` tracks an object submitted
    elsewhere by its id on the default provider. A submission names a ``kind`` and a
    ``payload`` (and optionally ``provider`` and ``parent_id``) for Sluice to submit.
    """

    model_config = ConfigDict(extra="forbid")

    id: int | None = Field(
        default=None, description="explicit task id", **_bounds(minimum=1, maximum=MAX_ID)
    )
    status: TaskStatus | None = None
    provider: str | None = Field(default=None, **_bounds(minLength=1, maxLength=MAX_NAME_CHARS))
    kind: str | None = Field(default=None, **_bounds(minLength=1, maxLength=MAX_NAME_CHARS))
    payload: dict[str, Any] | None = None
    parent_id: int | None = Field(default=None, **_bounds(minimum=1, maximum=MAX_ID))
    priority: int | None = Field(
        default=None,
        # Strict: true, "5" and 5.0 are not priorities (lax mode read them as 1, 5 and 5).
        strict=True,
        description="orders work within its fairness key, higher first (default 0)",
        **_bounds(minimum=PRIORITY_MIN, maximum=PRIORITY_MAX),
    )

    def hashed_body(self) -> dict[str, Any]:
        """The body as its idempotency hash sees it; an unset priority is left out, so a
        body hashes as it did before priorities existed."""
        return self.model_dump(mode="json", exclude={"priority"} if self.priority is None else None)

    def to_submission(
        self,
        idempotency_key: str | None = None,
        parent_index: int | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Submission:
        return Submission(
            tenant=tenant,
            provider=self.provider,
            kind=self.kind,
            payload=self.payload,
            id=self.id,
            status=self.status,
            parent_id=self.parent_id,
            parent_index=parent_index,
            idempotency_key=idempotency_key,
            priority=DEFAULT_PRIORITY if self.priority is None else self.priority,
        )


class BulkItem(TaskCreate):
    """A task in a bulk call; ``parent_index`` names an earlier item of the same batch."""

    parent_index: int | None = Field(default=None, ge=0, lt=MAX_BULK)
    idempotency_key: str | None = Field(
        default=None, **_bounds(minLength=1, maxLength=MAX_KEY_CHARS)
    )

    def to_submission(
        self,
        idempotency_key: str | None = None,
        parent_index: int | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Submission:
        return super().to_submission(
            idempotency_key or self.idempotency_key, self.parent_index, tenant
        )

    @classmethod
    def wire(cls, item: Submission) -> dict[str, Any]:
        """``item`` as the JSON of one bulk item (the server validates it, not the client)."""
        fields = {name: getattr(item, name) for name in cls.model_fields}
        return cls.model_construct(**fields).model_dump(mode="json", exclude_none=True)


class BulkCreate(BaseModel):
    """Up to 10,000 tasks created all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[BulkItem] = Field(min_length=1, max_length=MAX_BULK)


class BulkCreated(BaseModel):
    count: int
    ids: list[int]


class TaskOut(BaseModel):
    id: int
    tenant: str
    status: TaskStatus
    provider: str
    kind: str | None
    payload: dict[str, Any] | None
    external_id: str | None
    parent_id: int | None
    validation_error: str | None
    last_error: str | None
    phase: Phase
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    priority: int
    fairness_key: str

    @classmethod
    def of(cls, task: Task, catalog: Catalog) -> TaskOut:
        """The task as the API shows it: the provider's ``redact_fields`` masked."""
        shown = cls.model_validate(task, from_attributes=True)
        shown.payload = catalog.shown_payload(task.provider, task.payload)
        return shown


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None


class EventOut(BaseModel):
    id: int
    at: datetime
    event: str
    from_status: TaskStatus | None
    to_status: TaskStatus | None
    detail: str | None

    @classmethod
    def of(cls, event: TaskEvent) -> EventOut:
        return cls.model_validate(event, from_attributes=True)


class CancelOut(BaseModel):
    task: TaskOut
    descendants_cancelled: int


class Message(BaseModel):
    message: str


class KeyCreate(BaseModel):
    """An API key to make: viewer and submitter keys name their tenant, others none."""

    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=128)
    role: Role
    tenant: str | None = Field(default=None, pattern=TENANT_PATTERN)
    expires: Text | None = Field(
        default=None, max_length=32, description="lifetime, e.g. '90d' or '12h'; none: never"
    )


class KeyOut(BaseModel):
    """An API key as stored: never its secret."""

    id: str
    name: str
    role: Role
    tenant: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    # Whether a request with it is accepted now: revoked, expired (past expires_at) or active.
    state: Literal["active", "revoked", "expired"]

    @classmethod
    def of(cls, key: ApiKey, now: datetime) -> KeyOut:
        return cls(**{**vars(key), "state": key.state_at(now)})


class KeyCreated(KeyOut):
    """A key just made, with the full key text: shown this one time, never again."""

    key: str


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    key_id: str | None
    key_name: str | None
    tenant: str | None
    action: str
    target: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, record: AuditRecord) -> AuditOut:
        return cls.model_validate(record, from_attributes=True)


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None


# -- operator controls and the providers' overview (sluice/controls.py) ------------------


class PauseOut(BaseModel):
    """A pause running on ``key``: until when (null: until resumed), set by which signal
    (``manual``, ``rate_limited``, ``limiter``), why and by whom."""

    model_config = ConfigDict(from_attributes=True)

    key: str
    until: datetime | None
    signal: str | None
    reason: str | None
    actor: str | None
    since: datetime | None


class InFlightOut(BaseModel):
    """The provider's cap on concurrent requests and how many run now (null: unknown)."""

    model_config = ConfigDict(from_attributes=True)

    key: str
    max_in_flight: int
    in_flight: int | None


class LimitKeyOut(BaseModel):
    """One limit key: configured rate, the rate in force and its source, its own pause."""

    key: str = Field(description="a per-account limit shows '*' for the account")
    scope: str = Field(description="all, read, write or auth")
    per: str | None = Field(description="the payload field a per-account limit is kept by")
    configured: str = Field(description="e.g. '20/s'")
    configured_per_s: float
    in_force: str
    in_force_per_s: float
    source: str = Field(description="configured, or the ceiling in force: pinned, learned...")
    reason: str
    since: datetime | None
    pause: PauseOut | None

    @classmethod
    def of(cls, state: Any) -> LimitKeyOut:
        return cls(
            key=state.key,
            scope=state.scope,
            per=state.per,
            configured=str(state.configured),
            configured_per_s=state.configured.limit / state.configured.window_s,
            in_force=shown_rate(state.in_force),
            in_force_per_s=state.in_force.limit / state.in_force.window_s,
            source=state.source,
            reason=state.reason,
            since=state.since,
            pause=PauseOut.model_validate(state.pause) if state.pause else None,
        )


class ProviderOut(BaseModel):
    """A provider: the pause on its own key (which holds all its keys), each limit key,
    and its in-flight cap (null: none)."""

    name: str
    pause: PauseOut | None
    keys: list[LimitKeyOut]
    in_flight: InFlightOut | None

    @classmethod
    def of(cls, state: Any) -> ProviderOut:
        return cls(
            name=state.name,
            pause=PauseOut.model_validate(state.pause) if state.pause else None,
            keys=[LimitKeyOut.of(key) for key in state.keys],
            in_flight=InFlightOut.model_validate(state.in_flight) if state.in_flight else None,
        )


class PauseIn(BaseModel):
    """Pause by hand: a reason, and a ``duration`` or an ``until`` (neither: until resumed)."""

    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(min_length=1, max_length=500)
    duration: Text | None = Field(default=None, max_length=32, description="e.g. '30min', '2h'")
    until: UtcDateTime | None = Field(default=None, description="UTC if no zone")


class PinIn(BaseModel):
    """Pin a lower rate on a key: at most its configured rate."""

    model_config = ConfigDict(extra="forbid")

    rate: Text = Field(min_length=1, max_length=32, description="e.g. '5/s', '100/min'")
    reason: Text = Field(min_length=1, max_length=500)


class ControlOut(BaseModel):
    """What a control action did (its audit record has the same action and target)."""

    model_config = ConfigDict(from_attributes=True)

    action: str = Field(description="limit.pause, limit.resume, limit.pin or limit.unpin")
    target: str = Field(description="the provider or limit key")
    at: datetime
    changed: bool = Field(description="false: nothing was paused or pinned to clear")
    detail: dict[str, Any]


# -- explain (sluice/explain.py) -----------------------------------------------------------


class _FromAttributes(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ParentOut(_FromAttributes):
    id: int
    status: TaskStatus


class SlotOut(_FromAttributes):
    key: str | None
    ahead: int = Field(description="due tasks of the provider that go first")
    ahead_capped: bool = Field(description="true: at least `ahead` (the count stops there)")
    eta_s: float | None = Field(description="about how long until its turn, at the rate in force")


class QuotaWaitOut(_FromAttributes):
    key: str
    quota: str = Field(description="the quota, e.g. 15000/d")
    used: int
    limit: int
    resets_at: datetime
    resets_at_local: str | None = Field(
        description="the reset on the clock of the quota's time zone (null: rolling)"
    )


class BackoffOut(_FromAttributes):
    until: datetime | None
    attempt: int
    max_attempts: int
    last_error: str | None


class LookupOut(_FromAttributes):
    maybe_created: bool
    due_at: datetime | None


class PollOut(_FromAttributes):
    next_poll_at: datetime | None
    polls: int


class FinalOut(_FromAttributes):
    status: TaskStatus
    why: str


class RateOut(_FromAttributes):
    key: str
    configured: str
    in_force: str
    per_second: float
    source: str
    reason: str
    since: datetime | None


class KeyRateOut(_FromAttributes):
    """One row of ``GET /api/rates`` (and of ``sluice rates``): a limit key's configured rate
    beside the rate in force, in requests per second, and why."""

    provider: str
    key: str
    configured_per_s: float
    in_force_per_s: float
    source: str = Field(description="configured, or the ceiling in force: pinned, learned, quota")
    reason: str
    since: datetime | None = Field(description="when the ceiling in force began (null: none)")


class ExplainOut(_FromAttributes):
    """Why a task is where it is: one ``state`` and its details (sluice/explain.py).

    ``state`` is one of final, waiting_parent, paused, in_flight_cap, backing_off,
    awaiting_lookup, polling, scheduled, waiting_quota, sending, waiting_slot; the object of
    that name (``final``, ``parent``, ``pause``, ``in_flight``, ``backoff``, ``lookup``, ``poll``,
    ``quota``, ``slot``) holds its details, and ``rates`` the rate in force on each key of the
    task.
    """

    task_id: int
    status: TaskStatus
    phase: Phase
    state: str
    summary: str
    operation: str | None
    parent: ParentOut | None
    pause: PauseOut | None
    slot: SlotOut | None
    quota: QuotaWaitOut | None
    in_flight: InFlightOut | None
    backoff: BackoffOut | None
    lookup: LookupOut | None
    poll: PollOut | None
    final: FinalOut | None
    rates: list[RateOut]


class ShareOut(BaseModel):
    """One fairness key on a provider's budget."""

    key: str
    weight: float
    waiting: int = Field(description="tasks due and not claimed")
    granted_last_minute: float = Field(
        description="budget units claimed for it over the last 60 s (each task at its cost)"
    )
    share: float = Field(description="its part of all units claimed over the last 60 s (0..1)")


class SharesOut(BaseModel):
    provider: str
    fairness_field: str | None = Field(description="payload path of the key; none: the tenant")
    keys: list[ShareOut]
