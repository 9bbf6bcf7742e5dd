"""API keys as stored: public id, name, role, tenant, times, and a SHA-256 digest of the
secret (never the secret). Creating and revoking a key write their audit record in the
same transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, Table, and_, func, insert, or_, select, update

from sluice import errors
from sluice.clock import Clock, SystemClock
from sluice.domain import LOCAL_ACTOR, Actor, ApiKey, Role
from sluice.store import audit
from sluice.store.tables import ApiKeyRow

api_keys: Table = ApiKeyRow.__table__  # type: ignore[assignment]

TOUCH_EVERY = timedelta(minutes=1)
"""``last_used_at`` moves at most this often per key: a busy key costs no write per request."""


class KeyStore:
    """Persistence of API keys."""

    def __init__(self, engine: Engine, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()

    def add(self, key: ApiKey, secret_hash: str, *, actor: Actor = LOCAL_ACTOR) -> None:
        """Store a new key (its digest only) and its ``key.create`` audit record."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(api_keys),
                [
                    {
                        "id": key.id,
                        "name": key.name,
                        "role": key.role.value,
                        "tenant": key.tenant,
                        "secret_hash": secret_hash,
                        "created_at": key.created_at,
                        "expires_at": key.expires_at,
                        "revoked_at": None,
                        "last_used_at": None,
                    }
                ],
            )
            audit.record(
                conn,
                actor,
                "key.create",
                f"key:{key.id}",
                tenant=key.tenant,
                at=key.created_at,
                detail={
                    "name": key.name,
                    "role": key.role.value,
                    "expires_at": key.expires_at.isoformat() if key.expires_at else None,
                },
            )

    def find(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key and its secret's digest, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else (_to_key(row), row.secret_hash)

    def get(self, key_id: str) -> ApiKey:
        """The key, or KeyNotFound."""
        found = self.find(key_id)
        if found is None:
            raise errors.KeyNotFound(key_id)
        return found[0]

    def list(self, *, include_unusable: bool = True) -> list[ApiKey]:
        """Every key, oldest first; without revoked and expired ones when asked."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_unusable:
            query = query.where(*_usable(self.clock.now()))
        with self.engine.connect() as conn:
            return [_to_key(row) for row in conn.execute(query)]

    def count_usable(self) -> int:
        """How many keys are neither revoked nor expired now."""
        with self.engine.connect() as conn:
            query = select(func.count()).select_from(api_keys).where(*_usable(self.clock.now()))
            return int(conn.execute(query).scalar_one())

    def revoke(self, key_id: str, *, actor: Actor = LOCAL_ACTOR) -> tuple[ApiKey, bool]:
        """Revoke a key from now on; returns (key, revoked now). Revoking a revoked key
        changes nothing and writes no audit record."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            revoked = result.rowcount == 1
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
            if row is None:
                raise errors.KeyNotFound(key_id)
            key = _to_key(row)
            if revoked:
                audit.record(
                    conn,
                    actor,
                    "key.revoke",
                    f"key:{key_id}",
                    tenant=key.tenant,
                    at=now,
                    detail={"name": key.name, "role": key.role.value},
                )
        return key, revoked

    def touch(self, key: ApiKey, now: datetime) -> None:
        """Record that ``key`` was used at ``now``, unless it was within :data:`TOUCH_EVERY`."""
        if not needs_touch(key, now):
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(api_keys)
                .where(
                    api_keys.c.id == key.id,
                    or_(
                        api_keys.c.last_used_at.is_(None),
                        api_keys.c.last_used_at <= now - TOUCH_EVERY,
                    ),
                )
                .values(last_used_at=now)
            )


def needs_touch(key: ApiKey, now: datetime) -> bool:
    """Whether a use of ``key`` at ``now`` should be written (see :data:`TOUCH_EVERY`)."""
    return key.last_used_at is None or now - key.last_used_at >= TOUCH_EVERY


def _usable(now: datetime) -> tuple[Any, ...]:
    return (
        api_keys.c.revoked_at.is_(None),
        or_(api_keys.c.expires_at.is_(None), and_(api_keys.c.expires_at > now)),
    )


def _to_key(row: Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        tenant=row.tenant,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )
