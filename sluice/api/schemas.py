"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sluice import errors, submissions
from sluice.catalog import Catalog
from sluice.domain import (
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
from sluice.submissions import MAX_BULK, MAX_ID, MAX_KEY_CHARS, MAX_NAME_CHARS

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

    def to_submission(
        self, idempotency_key: str | None = None, parent_index: int | None = None
    ) -> Submission:
        return Submission(
            provider=self.provider,
            kind=self.kind,
            payload=self.payload,
            id=self.id,
            status=self.status,
            parent_id=self.parent_id,
            parent_index=parent_index,
            idempotency_key=idempotency_key,
        )


class BulkItem(TaskCreate):
    """A task in a bulk call; ``parent_index`` names an earlier item of the same batch."""

    parent_index: int | None = Field(default=None, ge=0, lt=MAX_BULK)
    idempotency_key: str | None = Field(
        default=None, **_bounds(minLength=1, maxLength=MAX_KEY_CHARS)
    )

    def to_submission(
        self, idempotency_key: str | None = None, parent_index: int | None = None
    ) -> Submission:
        return super().to_submission(idempotency_key or self.idempotency_key, self.parent_index)

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

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls.model_validate(key, from_attributes=True)


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
