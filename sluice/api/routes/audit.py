"""The audit trail (operators and admins): who did what, to which tenant's data, when."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from sluice.api.auth import OPERATOR, GuardedRoute, Principal
from sluice.api.deps import Context
from sluice.api.schemas import AuditOut, AuditPage, Cursor, TenantQuery, Text, UtcDateTime

router = APIRouter(prefix="/api/audit", tags=["audit"], route_class=GuardedRoute)
Operator = Annotated[Principal, Depends(OPERATOR)]


@router.get("", response_model=AuditPage)
def list_audit(
    context: Context,
    principal: Operator,
    tenant: TenantQuery = None,
    action: Annotated[
        Text | None, Query(max_length=64, description="e.g. task.cancel, or task. for all")
    ] = None,
    key_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{12}$")] = None,
    target: Annotated[Text | None, Query(max_length=255, description="e.g. task:42")] = None,
    since: Annotated[UtcDateTime | None, Query(description="inclusive; UTC if no zone")] = None,
    until: Annotated[UtcDateTime | None, Query(description="exclusive; UTC if no zone")] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """Audit records, newest first; pass ``next_cursor`` back as ``cursor`` for older ones."""
    page = context.audit.list(
        tenant=principal.read_scope(tenant),
        action=action,
        key_id=key_id,
        target=target,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    return AuditPage(items=[AuditOut.of(r) for r in page.items], next_cursor=page.next_cursor)
