"""The task routes: the prototype's contract plus submissions, bulk, listing, cancel, retry.

A viewer's or submitter's key sees and acts on its own tenant's tasks only; another
tenant's task answers 404 exactly like a missing one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status

from sluice import errors, submissions
from sluice.api.auth import SUBMITTER, VIEWER, GuardedRoute, Principal
from sluice.api.deps import Context
from sluice.api.schemas import (
    BulkCreate,
    BulkCreated,
    CancelOut,
    Cursor,
    EventOut,
    ExplainOut,
    TaskCreate,
    TaskOut,
    TaskPage,
    TenantQuery,
    Text,
    UtcDateTime,
)
from sluice.domain import TaskStatus

router = APIRouter(prefix="/api/tasks", tags=["tasks"], route_class=GuardedRoute)
TaskId = Annotated[int, Path(ge=1, le=2**53)]
Viewer = Annotated[Principal, Depends(VIEWER)]
Submitter = Annotated[Principal, Depends(SUBMITTER)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TaskOut)
def create_task(
    body: TaskCreate,
    context: Context,
    principal: Submitter,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    tenant: TenantQuery = None,
) -> TaskOut:
    """Create a task (or track one by id, the prototype's way)."""
    item = body.to_submission(idempotency_key, tenant=principal.write_tenant(tenant))
    body_hash = (lambda: submissions.request_hash(body.hashed_body())) if idempotency_key else None
    task, created = submissions.create_task(
        context.repo, context.catalog, item, body_hash, principal.actor
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return TaskOut.of(task, context.catalog)


BULK_HEADER_KEY = (
    "POST /api/tasks/bulk does not read the Idempotency-Key header (a retry would create "
    "every task again); give each item its own idempotency_key"
)


@router.post("/bulk", status_code=status.HTTP_201_CREATED, response_model=BulkCreated)
def create_tasks(
    body: BulkCreate,
    context: Context,
    principal: Submitter,
    response: Response,
    tenant: TenantQuery = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> BulkCreated:
    """Create up to 10,000 tasks atomically; items may name earlier items as parents.
    Each item may carry its own ``idempotency_key``: the same batch sent again answers
    with the ids the first created (``Idempotent-Replayed: true``). The
    ``Idempotency-Key`` header is refused (it used to be ignored: a retried batch was
    created again)."""
    if idempotency_key is not None:
        raise errors.InvalidTask(BULK_HEADER_KEY)
    home = principal.write_tenant(tenant)
    batch = submissions.create_batch(
        context.repo,
        context.catalog,
        [item.to_submission(tenant=home) for item in body.tasks],
        principal.actor,
    )
    if batch.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return BulkCreated(count=len(batch.ids), ids=batch.ids)


@router.get("", response_model=TaskPage)
def list_tasks(
    context: Context,
    principal: Viewer,
    status_: Annotated[TaskStatus | None, Query(alias="status")] = None,
    provider: Annotated[Text | None, Query(max_length=64)] = None,
    kind: Annotated[Text | None, Query(max_length=64)] = None,
    parent_id: Annotated[int | None, Query(ge=1, le=2**53)] = None,
    created_from: Annotated[
        UtcDateTime | None, Query(description="created at or after; UTC if no zone")
    ] = None,
    created_to: Annotated[
        UtcDateTime | None, Query(description="created before (exclusive); UTC if no zone")
    ] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    tenant: TenantQuery = None,
) -> TaskPage:
    """List tasks in id order; pass ``next_cursor`` back as ``cursor``, with the same
    filters, for the next page. ``created_from``/``created_to`` bound ``created_at`` as on
    the bulk actions and the console (a range whose start is not before its end lists
    nothing)."""
    page = context.repo.list_tasks(
        status=status_,
        provider=provider,
        kind=kind,
        parent_id=parent_id,
        created_from=created_from,
        created_to=created_to,
        cursor=cursor,
        limit=limit,
        tenant=principal.read_scope(tenant),
    )
    return TaskPage(
        items=[TaskOut.of(t, context.catalog) for t in page.items], next_cursor=page.next_cursor
    )


@router.get("/{task_id}", response_model=TaskOut)
def get_task(task_id: TaskId, context: Context, principal: Viewer) -> TaskOut:
    """One task, or 404."""
    return TaskOut.of(context.repo.get(task_id, tenant=principal.tenant), context.catalog)


@router.get("/{task_id}/events", response_model=list[EventOut])
def task_events(task_id: TaskId, context: Context, principal: Viewer) -> list[EventOut]:
    """The task's history, oldest first."""
    return [EventOut.of(e) for e in context.repo.events(task_id, tenant=principal.tenant)]


@router.get("/{task_id}/explain", response_model=ExplainOut)
def explain_task(task_id: TaskId, context: Context, principal: Viewer) -> ExplainOut:
    """Why the task is where it is: one state (waiting for its parent, paused, waiting for
    a slot, backing off, awaiting a lookup, polling, final...) with its details."""
    explained = context.explainer.explain(task_id, tenant=principal.tenant)
    return ExplainOut.model_validate(explained)


@router.post("/{task_id}/cancel", response_model=CancelOut)
def cancel_task(task_id: TaskId, context: Context, principal: Submitter) -> CancelOut:
    """Cancel an unfinished task and its unfinished descendants."""
    task, count = context.repo.cancel(task_id, tenant=principal.tenant, actor=principal.actor)
    return CancelOut(task=TaskOut.of(task, context.catalog), descendants_cancelled=count)


@router.post("/{task_id}/retry", response_model=TaskOut)
def retry_task(task_id: TaskId, context: Context, principal: Submitter) -> TaskOut:
    """Put an Error or Cancelled task back to Not Started (attempts reset)."""
    task = context.repo.retry(task_id, tenant=principal.tenant, actor=principal.actor)
    return TaskOut.of(task, context.catalog)
