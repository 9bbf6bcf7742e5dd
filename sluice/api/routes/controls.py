"""Operator controls and the providers' overview (operators and admins).

``GET /api/providers`` lists every provider's limit keys with the configured rate, the
rate in force and its source, pauses and the in-flight cap; ``GET /api/rates`` lists the
rows of ``sluice rates`` (each key's configured rate beside the rate in force, and why).
Pause and resume a provider or one of its keys, pin a lower rate on a key and unpin it:
each action writes an audit record (``GET /api/audit?action=limit.`` lists them), a
refusal writes nothing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from sluice.api.auth import OPERATOR, GuardedRoute, Principal
from sluice.api.deps import Context
from sluice.api.schemas import ControlOut, KeyRateOut, PauseIn, PinIn, ProviderOut
from sluice.controls import ControlResult, pause_end, pin_rate
from sluice.engine.adaptive import rates_in_force_now

router = APIRouter(tags=["controls"], route_class=GuardedRoute)
Operator = Annotated[Principal, Depends(OPERATOR)]
ProviderName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^:/\x00-\x1f\x7f]+$")]
LimitKey = Annotated[
    str,
    Path(
        min_length=1,
        max_length=255,
        pattern=r"^[^/\x00-\x1f\x7f]+$",
        description="e.g. sandbox:write, or one account's key sandbox:write:advertiser_id=42",
    ),
]


def _shown(result: ControlResult) -> ControlOut:
    return ControlOut.model_validate(result)


@router.get("/api/providers", response_model=list[ProviderOut])
def list_providers(context: Context, principal: Operator) -> list[ProviderOut]:
    """Every provider with its limit keys: rates configured and in force, pauses, in flight."""
    return [ProviderOut.of(state) for state in context.controls.overview()]


@router.get("/api/rates", response_model=list[KeyRateOut])
def list_rates(context: Context, principal: Operator) -> list[KeyRateOut]:
    """Each provider-wide and read/write limit key (and each key with a learned rate), its
    configured rate beside the rate in force, and why: the rows of ``sluice rates``."""
    controls = context.controls
    rows = rates_in_force_now(controls.providers, controls.rates, context.learner)
    return [KeyRateOut.model_validate(row) for row in rows]


@router.get("/api/providers/{name}", response_model=ProviderOut)
def get_provider(name: ProviderName, context: Context, principal: Operator) -> ProviderOut:
    """One provider, or 404 naming it."""
    return ProviderOut.of(context.controls.overview([name])[0])


@router.post("/api/providers/{name}/pause", response_model=ControlOut)
def pause_provider(
    name: ProviderName, body: PauseIn, context: Context, principal: Operator
) -> ControlOut:
    """Pause every request to the provider (reason; a duration, an end, or until resumed)."""
    return _pause(context, name, body, principal)


@router.post("/api/providers/{name}/resume", response_model=ControlOut)
def resume_provider(name: ProviderName, context: Context, principal: Operator) -> ControlOut:
    """End the provider's pauses (its own and its keys')."""
    return _shown(context.controls.resume(name, actor=principal.actor))


@router.post("/api/limits/{key}/pause", response_model=ControlOut)
def pause_key(key: LimitKey, body: PauseIn, context: Context, principal: Operator) -> ControlOut:
    """Pause one configured limit key (e.g. ``sandbox:write``) and the keys below it."""
    return _pause(context, key, body, principal)


@router.post("/api/limits/{key}/resume", response_model=ControlOut)
def resume_key(key: LimitKey, context: Context, principal: Operator) -> ControlOut:
    """End the pause on the key and on every key below it."""
    return _shown(context.controls.resume(key, actor=principal.actor))


@router.post("/api/limits/{key}/pin", response_model=ControlOut)
def pin_key(key: LimitKey, body: PinIn, context: Context, principal: Operator) -> ControlOut:
    """Pin a rate no higher than the configured one; every worker runs at it within 1 s."""
    rate = pin_rate(body.rate)
    return _shown(context.controls.pin(key, rate, reason=body.reason, actor=principal.actor))


@router.post("/api/limits/{key}/unpin", response_model=ControlOut)
def unpin_key(key: LimitKey, context: Context, principal: Operator) -> ControlOut:
    """Clear the key's pin: back to the configured rate."""
    return _shown(context.controls.unpin(key, actor=principal.actor))


def _pause(context: Context, target: str, body: PauseIn, principal: Principal) -> ControlOut:
    controls = context.controls
    end = pause_end(controls.clock.now(), duration=body.duration, until=body.until)
    result = controls.pause(target, reason=body.reason, until=end, actor=principal.actor)
    return _shown(result)
