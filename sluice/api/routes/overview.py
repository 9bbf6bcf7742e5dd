"""The overview of providers, limit keys, pauses and queues (``sluice status --api`` reads it).

Operators and admins see every provider; a viewer's or submitter's key sees only its own
tenant's task counts (limits, pauses and usage are provider-wide).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from sluice.api.auth import VIEWER, GuardedRoute, Principal
from sluice.api.deps import Context
from sluice.api.schemas import TenantQuery

router = APIRouter(prefix="/api/overview", tags=["console"], route_class=GuardedRoute)
Viewer = Annotated[Principal, Depends(VIEWER)]


@router.get("")
def overview(context: Context, principal: Viewer, tenant: TenantQuery = None) -> dict[str, Any]:
    """Per provider and limit key: rates, current window use, the last hour, pauses,
    in-flight, queue by status and phase, creates/s and polls/s, errors in the last hour."""
    scope = principal.read_scope(tenant)
    assert context.overview is not None  # create_app always builds it
    return context.overview.overview(scope, provider_wide=principal.tenant is None)
