"""Bulk retry or cancel of every task matching a filter: preview, start, follow.

``POST /api/bulk-actions/preview`` counts what the action would change now and gives the
highest id it covers; ``POST /api/bulk-actions`` starts a stored job for those tasks (no
later ones), run in batches that survive a crash; ``GET /api/bulk-actions/{id}`` follows
it. A submitter's key acts on its own tenant's tasks only; operators and admins on every
tenant (or the one named with ``?tenant=``). A filter that matches nothing answers 200
with count 0 (and a job that is done at once).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, ConfigDict, Field

from sluice.api.auth import SUBMITTER, VIEWER, GuardedRoute, Principal
from sluice.api.deps import Context
from sluice.api.schemas import TenantQuery, Text, UtcDateTime
from sluice.domain import Phase, TaskStatus
from sluice.store.bulkjobs import BulkJob, BulkJobs, Preview
from sluice.store.filters import TaskFilter

router = APIRouter(prefix="/api/bulk-actions", tags=["tasks"], route_class=GuardedRoute)
Submitter = Annotated[Principal, Depends(SUBMITTER)]
Viewer = Annotated[Principal, Depends(VIEWER)]
JobId = Annotated[int, Path(ge=1, le=2**53)]


class FilterIn(BaseModel):
    """Tasks matching every field given."""

    model_config = ConfigDict(extra="forbid")

    status: TaskStatus | None = None
    phase: Phase | None = None
    provider: Text | None = Field(default=None, max_length=64)
    kind: Text | None = Field(default=None, max_length=64)
    parent_id: int | None = Field(default=None, ge=1, le=2**53)
    error_text: Text | None = Field(
        default=None, max_length=200, description="text in validation_error"
    )
    created_from: UtcDateTime | None = Field(default=None, description="inclusive; UTC if no zone")
    created_to: UtcDateTime | None = Field(default=None, description="exclusive; UTC if no zone")

    def to_filter(self) -> TaskFilter:
        return TaskFilter(
            status=self.status,
            phase=self.phase,
            provider=self.provider,
            kind=self.kind,
            parent_id=self.parent_id,
            error_text=self.error_text or None,
            created_from=self.created_from,
            created_to=self.created_to,
        )


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["retry", "cancel"]
    filter: FilterIn = Field(default_factory=FilterIn)


class StartIn(PreviewIn):
    max_id: int | None = Field(
        default=None,
        ge=0,
        le=2**53,
        description="the max_id of the preview; the job covers no task above it "
        "(default: the highest id matching now)",
    )


class PreviewOut(BaseModel):
    action: str
    count: int
    max_id: int

    @classmethod
    def of(cls, preview: Preview) -> PreviewOut:
        return cls(action=preview.action, count=preview.count, max_id=preview.max_id)


class BulkJobOut(BaseModel):
    id: int
    action: str
    filter: dict[str, object]
    tenant: str | None
    max_id: int
    count: int = Field(description="tasks previewed when the job started")
    changed: int
    skipped: int
    state: str = Field(
        description="running, done, or stopped (the key that started it was revoked or "
        "expired: tasks.bulk_stop in the audit trail says when)"
    )
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, job: BulkJob) -> BulkJobOut:
        return cls(
            id=job.id,
            action=job.action,
            filter=job.filter.to_json(),
            tenant=job.tenant,
            max_id=job.max_id,
            count=job.previewed,
            changed=job.changed,
            skipped=job.skipped,
            state=job.state,
            created_at=job.created_at,
            finished_at=job.finished_at,
        )


def _jobs(context: Context) -> BulkJobs:
    assert context.bulk is not None  # create_app always builds it
    return context.bulk


@router.post("/preview", response_model=PreviewOut)
def preview(
    body: PreviewIn, context: Context, principal: Submitter, tenant: TenantQuery = None
) -> PreviewOut:
    """How many tasks the action would change now, and the highest id it would cover."""
    scope = principal.read_scope(tenant)
    return PreviewOut.of(_jobs(context).preview(body.action, body.filter.to_filter(), scope))


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=BulkJobOut)
def start(
    body: StartIn, context: Context, principal: Submitter, tenant: TenantQuery = None
) -> BulkJobOut:
    """Start the action on the previewed tasks; it runs in batches (follow it by id)."""
    job = start_job(context, principal, body.action, body.filter.to_filter(), body.max_id, tenant)
    return BulkJobOut.of(job)


def start_job(
    context: Context,
    principal: Principal,
    action: str,
    task_filter: TaskFilter,
    max_id: int | None,
    tenant: str | None,
) -> BulkJob:
    """Preview bounded by ``max_id``, store the job, wake the runner (API and console)."""
    scope = principal.read_scope(tenant)
    jobs = _jobs(context)
    preview = jobs.preview(action, task_filter, scope)
    if max_id is not None and max_id < preview.max_id:
        preview = jobs.preview(action, task_filter, scope, upto=max_id)
    job = jobs.start(action, task_filter, scope, preview, principal.actor)
    if context.bulk_runner is not None:
        context.bulk_runner.wake()
    return job


@router.get("/{job_id}", response_model=BulkJobOut)
def get_job(job_id: JobId, context: Context, principal: Viewer) -> BulkJobOut:
    """A bulk job: how far it got."""
    return BulkJobOut.of(_jobs(context).get(job_id, principal.tenant))
