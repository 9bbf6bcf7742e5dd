"""The audit trail: one table for every audited action, by API keys and by Sluice itself.

:func:`record` writes inside the caller's transaction, so an action and its record commit
together or not at all: a refused or failed action leaves no record claiming it happened.
The console's controls and the limiter's own events (learned rates, quota resets) use the
same function with a ``system:<part>`` actor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, insert, select

from sluice.domain import Actor, AuditRecord
from sluice.store.rows import decode_cursor, encode_cursor
from sluice.store.tables import AuditRow

audit: Table = AuditRow.__table__  # type: ignore[assignment]

MAX_PAGE = 1000


def record(
    conn: Connection,
    actor: Actor,
    action: str,
    target: str,
    *,
    tenant: str | None,
    at: datetime,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add one audit record in ``conn``'s transaction.

    Args:
        action: a stable dotted name, e.g. ``task.cancel``, ``key.create``, ``limit.pause``.
        target: what it acted on, e.g. ``task:42``, ``key:ab12cd34ef56``, ``provider:sandbox``.
        tenant: the tenant whose data it touched; None for provider-wide actions.
        detail: the action's parameters (JSON); never a secret.
    """
    conn.execute(
        insert(audit),
        [
            {
                "at": at,
                "actor": actor.kind,
                "key_id": actor.key_id,
                "key_name": actor.key_name,
                "tenant": tenant,
                "action": action,
                "target": target,
                "detail": detail or {},
            }
        ],
    )


@dataclass(frozen=True)
class AuditPage:
    """One page of the audit trail, newest first, and the cursor of the next (older) page."""

    items: list[AuditRecord]
    next_cursor: str | None


class AuditLog:
    """Reads of the audit trail."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def list(
        self,
        *,
        tenant: str | None = None,
        action: str | None = None,
        key_id: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """Records matching every given filter, newest first, after ``cursor``.

        ``action`` matches exactly or, ending in ``.``, as a prefix (``task.``);
        ``since`` is inclusive and ``until`` exclusive.
        """
        limit = max(1, min(limit, MAX_PAGE))
        query = select(audit).order_by(audit.c.id.desc()).limit(limit + 1)
        if cursor is not None:
            query = query.where(audit.c.id < decode_cursor(cursor))
        if tenant is not None:
            query = query.where(audit.c.tenant == tenant)
        if action is not None:
            if action.endswith("."):
                query = query.where(audit.c.action.startswith(action, autoescape=True))
            else:
                query = query.where(audit.c.action == action)
        if key_id is not None:
            query = query.where(audit.c.key_id == key_id)
        if target is not None:
            query = query.where(audit.c.target == target)
        if since is not None:
            query = query.where(audit.c.at >= since)
        if until is not None:
            query = query.where(audit.c.at < until)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        items = [_to_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        return AuditPage(items, encode_cursor(items[-1].id) if more and items else None)


def _to_record(row: Row[Any]) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=row.at,
        actor=row.actor,
        key_id=row.key_id,
        key_name=row.key_name,
        tenant=row.tenant,
        action=row.action,
        target=row.target,
        detail=dict(row.detail or {}),
    )
