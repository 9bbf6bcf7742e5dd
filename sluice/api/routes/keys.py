"""API keys (admin): make one (its text shown once), list them (never a secret), revoke one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from sluice import apikeys
from sluice.api.auth import ADMIN, GuardedRoute, Principal
from sluice.api.deps import Context
from sluice.api.schemas import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/api/keys", tags=["keys"], route_class=GuardedRoute)
Admin = Annotated[Principal, Depends(ADMIN)]
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(body: KeyCreate, context: Context, principal: Admin) -> KeyCreated:
    """Make a key; the answer holds its full text, which Sluice never shows again."""
    made = apikeys.create_key(
        context.keys,
        name=body.name,
        role=body.role.value,
        tenant=body.tenant,
        expires=body.expires,
        actor=principal.actor,
    )
    return KeyCreated(**KeyOut.of(made.key, context.keys.clock.now()).model_dump(), key=made.token)


@router.get("", response_model=list[KeyOut])
def list_keys(context: Context, principal: Admin) -> list[KeyOut]:
    """Every key, revoked and expired ones included, oldest first."""
    now = context.keys.clock.now()
    return [KeyOut.of(key, now) for key in context.keys.list()]


@router.post("/{key_id}/revoke", response_model=KeyOut)
def revoke_key(key_id: KeyId, context: Context, principal: Admin) -> KeyOut:
    """Revoke a key: every request with it is refused from now on (revoking twice is a no-op)."""
    key, _ = context.keys.revoke(key_id, actor=principal.actor)
    return KeyOut.of(key, context.keys.clock.now())
