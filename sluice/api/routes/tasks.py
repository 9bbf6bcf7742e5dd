"""The task routes: the prototype's contract plus submissions, bulk, listing, cancel, retry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response, status

from sluice import submissions
from sluice.api.deps import Context
from sluice.api.schemas import (
    BulkCreate,
    BulkCreated,
    CancelOut,
    EventOut,
    TaskCreate,
    TaskOut,
    TaskPage,
    Text,
)
from sluice.domain import TaskStatus

router = APIRouter(prefix="/api/tasks", tags=["tasks"])
TaskId = Annotated[int, Path(ge=1, le=2**53)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TaskOut)
def create_task(
    body: TaskCreate,
    context: Context,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> TaskOut:
    """Create a task (or track one by id, the prototype's way)."""
    body_hash = submissions.request_hash(body.model_dump(mode="json")) if idempotency_key else None
    task, created = submissions.create_task(
        context.repo, context.catalog, body.to_submission(idempotency_key), body_hash
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return TaskOut.of(task)


@router.post("/bulk", status_code=status.HTTP_201_CREATED, response_model=BulkCreated)
def create_tasks(body: BulkCreate, context: Context) -> BulkCreated:
    """Create up to 10,000 tasks atomically; items may name earlier items as parents."""
    ids = submissions.create_tasks(
        context.repo, context.catalog, [item.to_submission() for item in body.tasks]
    )
    return BulkCreated(count=len(ids), ids=ids)


@router.get("", response_model=TaskPage)
def list_tasks(
    context: Context,
    status_: Annotated[TaskStatus | None, Query(alias="status")] = None,
    provider: Annotated[Text | None, Query(max_length=64)] = None,
    kind: Annotated[Text | None, Query(max_length=64)] = None,
    parent_id: Annotated[int | None, Query(ge=1, le=2**53)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TaskPage:
    """List tasks in id order; pass ``next_cursor`` back as ``cursor`` for the next page."""
    page = context.repo.list_tasks(
        status=status_,
        provider=provider,
        kind=kind,
        parent_id=parent_id,
        cursor=cursor,
        limit=limit,
    )
    return TaskPage(items=[TaskOut.of(t) for t in page.items], next_cursor=page.next_cursor)


@router.get("/{task_id}", response_model=TaskOut)
def get_task(task_id: TaskId, context: Context) -> TaskOut:
    """One task, or 404."""
    return TaskOut.of(context.repo.get(task_id))


@router.get("/{task_id}/events", response_model=list[EventOut])
def task_events(task_id: TaskId, context: Context) -> list[EventOut]:
    """The task's history, oldest first."""
    return [EventOut.of(e) for e in context.repo.events(task_id)]


@router.post("/{task_id}/cancel", response_model=CancelOut)
def cancel_task(task_id: TaskId, context: Context) -> CancelOut:
    """Cancel an unfinished task and its unfinished descendants."""
    task, count = context.repo.cancel(task_id)
    return CancelOut(task=TaskOut.of(task), descendants_cancelled=count)


@router.post("/{task_id}/retry", response_model=TaskOut)
def retry_task(task_id: TaskId, context: Context) -> TaskOut:
    """Put an Error or Cancelled task back to Not Started (attempts reset)."""
    return TaskOut.of(context.repo.retry(task_id))
