"""The task filter of the console, the bulk actions and ``GET /api/tasks``: what it matches,
as SQL, and as JSON for a stored bulk job."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement

from sluice.clock import as_utc
from sluice.domain import Phase, TaskStatus
from sluice.store.rows import tasks


@dataclass(frozen=True)
class TaskFilter:
    """Tasks matching every field that is set (None: any)."""

    status: TaskStatus | None = None
    phase: Phase | None = None
    provider: str | None = None
    kind: str | None = None
    parent_id: int | None = None
    error_text: str | None = None
    """Case-insensitive text in ``validation_error``."""
    created_from: datetime | None = None
    created_to: datetime | None = None
    """Created before this moment (exclusive)."""

    def to_json(self) -> dict[str, Any]:
        """The filter as JSON (None fields left out)."""
        out: dict[str, Any] = {}
        for name, value in asdict(self).items():
            if value is None:
                continue
            out[name] = value.isoformat() if isinstance(value, datetime) else str(value)
            if name == "parent_id":
                out[name] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskFilter:
        def when(name: str) -> datetime | None:
            value = data.get(name)
            return as_utc(datetime.fromisoformat(value)) if value else None

        return cls(
            status=TaskStatus(data["status"]) if data.get("status") else None,
            phase=Phase(data["phase"]) if data.get("phase") else None,
            provider=data.get("provider"),
            kind=data.get("kind"),
            parent_id=data.get("parent_id"),
            error_text=data.get("error_text"),
            created_from=when("created_from"),
            created_to=when("created_to"),
        )

    def clauses(self, tenant: str | None) -> list[ColumnElement[bool]]:
        """SQL conditions for the filter, within ``tenant`` (None: every tenant)."""
        where: list[ColumnElement[bool]] = []
        if tenant is not None:
            where.append(tasks.c.tenant == tenant)
        if self.status is not None:
            where.append(tasks.c.status == self.status.value)
        if self.phase is not None:
            where.append(tasks.c.phase == self.phase.value)
        if self.provider is not None:
            where.append(tasks.c.provider == self.provider)
        if self.kind is not None:
            where.append(tasks.c.kind == self.kind)
        if self.parent_id is not None:
            where.append(tasks.c.parent_id == self.parent_id)
        if self.error_text:
            where.append(tasks.c.validation_error.icontains(self.error_text, autoescape=True))
        if self.created_from is not None:
            where.append(tasks.c.created_at >= self.created_from)
        if self.created_to is not None:
            where.append(tasks.c.created_at < self.created_to)
        return where
