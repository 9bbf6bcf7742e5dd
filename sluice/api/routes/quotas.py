"""Quotas of a provider (operators and admins): used, left, reset, and when they run out.

``GET /api/providers/{name}/quotas`` answers for every ``quota`` the provider configures
(one entry per account seen for a ``per`` quota): what this window has used, when it
resets (in UTC, and on the clock of the quota's time zone: ``resets_at_local``), whether
work is waiting for that reset, and a forecast of when what is left runs
out at the pace of the window so far (``null``: it lasts until the reset).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from sluice import errors
from sluice.api.auth import OPERATOR, GuardedRoute, Principal
from sluice.engine.quotas import QuotaState, quota_states
from sluice.providers.base import Provider
from sluice.store.quotas import QuotaStore

router = APIRouter(prefix="/api/providers", tags=["providers"], route_class=GuardedRoute)
Operator = Annotated[Principal, Depends(OPERATOR)]


@dataclass(frozen=True)
class QuotaView:
    """What the quota route reads: the providers and the quota store."""

    providers: Mapping[str, Provider]
    store: QuotaStore


class QuotaOut(BaseModel):
    key: str
    quota: str
    reset: str
    limit: int
    used: int
    remaining: int
    window_start: datetime
    resets_at: datetime
    runs_out_at: datetime | None
    waiting: bool
    zone: str | None
    resets_at_local: str | None

    @classmethod
    def of(cls, state: QuotaState) -> QuotaOut:
        return cls(**state.__dict__)


class QuotasOut(BaseModel):
    provider: str
    at: datetime
    quotas: list[QuotaOut]


@router.get("/{name}/quotas", response_model=QuotasOut)
def provider_quotas(name: str, request: Request, principal: Operator) -> QuotasOut:
    """Every quota of provider ``name`` now, with a forecast of when it runs out."""
    view: QuotaView | None = getattr(request.app.state, "quotas", None)
    provider = view.providers.get(name) if view is not None else None
    if view is None or provider is None:
        raise errors.UnknownLimit(f"unknown provider {name!r}")
    now = request.app.state.context.repo.clock.now()
    states = quota_states(view.store, provider, now)
    return QuotasOut(provider=name, at=now, quotas=[QuotaOut.of(s) for s in states])
