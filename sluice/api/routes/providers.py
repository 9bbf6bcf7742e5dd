"""Provider-wide reads (operators and admins): how each fairness key shares the budget."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from sluice import errors
from sluice.api.auth import OPERATOR, GuardedRoute, Principal
from sluice.api.deps import Context
from sluice.api.schemas import ShareOut, SharesOut

router = APIRouter(prefix="/api/providers", tags=["providers"], route_class=GuardedRoute)
Operator = Annotated[Principal, Depends(OPERATOR)]
ProviderName = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("/{name}/shares", response_model=SharesOut)
def provider_shares(name: ProviderName, context: Context, principal: Operator) -> SharesOut:
    """Per fairness key: tasks waiting, weight, and its share of the last minute's claims.

    Keys span tenants, so only operators and admins may read them.
    """
    info = context.catalog.providers.get(name)
    if info is None:
        raise errors.UnknownLimit(f"unknown provider {name!r}; known: {context.catalog.known()}")
    shares = context.repo.fair_shares(name, info.fairness_weights)
    return SharesOut(
        provider=name,
        fairness_field=info.fairness_field,
        keys=[ShareOut.model_validate(s, from_attributes=True) for s in shares],
    )
