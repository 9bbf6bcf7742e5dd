"""Console sessions kept on the server: open one for a key, find it by cookie, end it.

The browser holds a random token (256 bits); the table holds only its SHA-256 digest, so
a copy of the database opens no session. A session is good while all of these hold:

- it is younger than its lifetime (``expires_at``) and was used within the idle limit;
- its API key still exists, is not revoked and has not expired.

The key is read on every lookup, so revoking a key ends its sessions at their next
request; a session found unusable is deleted then and there.

Signing in and signing out are audited (``console.sign_in``, ``console.sign_out`` on
``key:<id>``, as the key) in the same transaction as the session's row, so the trail of a
leaked key shows its console sessions too. Sessions that end by themselves are not.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, Table, delete, insert, select, update

from sluice.clock import Clock, SystemClock
from sluice.domain import Actor, ApiKey, Role
from sluice.store import audit
from sluice.store.tables import ApiKeyRow, ConsoleSessionRow

sessions: Table = ConsoleSessionRow.__table__  # type: ignore[assignment]
api_keys: Table = ApiKeyRow.__table__  # type: ignore[assignment]

TOKEN_BYTES = 32
TOUCH_EVERY = timedelta(seconds=60)
"""``last_seen_at`` moves at most this often: a page view is not a write each time."""


def token_digest(token: str) -> str:
    """The stored form of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ConsoleSession:
    """A live session and the key it speaks for."""

    digest: str
    key: ApiKey
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime


class SessionStore:
    """The ``console_sessions`` table."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock | None = None,
        *,
        lifetime: timedelta = timedelta(hours=8),
        idle: timedelta = timedelta(hours=1),
    ) -> None:
        self.engine = engine
        self.clock: Clock = clock or SystemClock()
        self.lifetime = lifetime
        self.idle = idle

    def open(self, key: ApiKey) -> str:
        """Start a session for ``key``; returns the token for the cookie (shown once)."""
        now = self.clock.now()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        expires_at = now + self.lifetime
        if key.expires_at is not None:
            expires_at = min(expires_at, key.expires_at)
        with self.engine.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_at <= now))
            conn.execute(
                insert(sessions),
                [
                    {
                        "id": token_digest(token),
                        "key_id": key.id,
                        "created_at": now,
                        "expires_at": expires_at,
                        "last_seen_at": now,
                    }
                ],
            )
            audit.record(
                conn,
                Actor.of_key(key),
                "console.sign_in",
                f"key:{key.id}",
                tenant=key.tenant,
                at=now,
                detail={"session_ends_at": expires_at.isoformat()},
            )
        return token

    def find(self, token: str) -> ConsoleSession | None:
        """The usable session ``token`` opens, or None (an unusable one is deleted)."""
        now = self.clock.now()
        digest = token_digest(token)
        query = (
            select(sessions, *[c.label(f"k_{c.name}") for c in api_keys.c])
            .join(api_keys, api_keys.c.id == sessions.c.key_id)
            .where(sessions.c.id == digest)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        session = _to_session(row)
        if (
            now >= session.expires_at
            or now - session.last_seen_at >= self.idle
            or not session.key.usable_at(now)
        ):
            self.close(token)
            return None
        # At most every minute, and at least twice per idle time: touching only every
        # minute signed out, as idle, users active all along under an idle time below it.
        if now - session.last_seen_at >= min(TOUCH_EVERY, self.idle / 2):
            with self.engine.begin() as conn:
                conn.execute(
                    update(sessions).where(sessions.c.id == digest).values(last_seen_at=now)
                )
        return session

    def close(self, token: str, *, signed_out: ApiKey | None = None) -> None:
        """End the session ``token`` opens (nothing happens when there is none); with
        ``signed_out``, its key signed out: audited when a session did end."""
        with self.engine.begin() as conn:
            ended = conn.execute(delete(sessions).where(sessions.c.id == token_digest(token)))
            if signed_out is not None and ended.rowcount == 1:
                audit.record(
                    conn,
                    Actor.of_key(signed_out),
                    "console.sign_out",
                    f"key:{signed_out.id}",
                    tenant=signed_out.tenant,
                    at=self.clock.now(),
                )

    def close_all(self, key_id: str) -> int:
        """End every session of a key; returns how many there were."""
        with self.engine.begin() as conn:
            return conn.execute(delete(sessions).where(sessions.c.key_id == key_id)).rowcount

    def count(self, key_id: str) -> int:
        """How many sessions a key has open (expired ones included until purged)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(sessions.c.id).where(sessions.c.key_id == key_id))
            return len(rows.all())


def _to_session(row: Row[Any]) -> ConsoleSession:
    m = row._mapping
    key = ApiKey(
        id=m["k_id"],
        name=m["k_name"],
        role=Role(m["k_role"]),
        tenant=m["k_tenant"],
        created_at=m["k_created_at"],
        expires_at=m["k_expires_at"],
        revoked_at=m["k_revoked_at"],
        last_used_at=m["k_last_used_at"],
    )
    return ConsoleSession(
        digest=m["id"],
        key=key,
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        last_seen_at=m["last_seen_at"],
    )
