"""Counts for ``/metrics``: tasks by provider and status, and how old the oldest due task is.

Both are read at scrape time (and cached by the caller), so they must stay cheap on a
table of millions of rows: the counts read the ``(provider, status)`` index alone (an
index-only scan on PostgreSQL), and the oldest due task of a provider is the first entry
of the ``(phase, next_attempt_at)`` index for each active phase, never a scan of the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, func, select

from sluice.store.rows import tasks
from sluice.store.tables import ACTIVE_PHASES


def tasks_by_provider_status(engine: Engine) -> dict[tuple[str, str], int]:
    """How many tasks each provider has in each status."""
    query = select(tasks.c.provider, tasks.c.status, func.count()).group_by(
        tasks.c.provider, tasks.c.status
    )
    with engine.connect() as conn:
        return {(provider, status): int(count) for provider, status, count in conn.execute(query)}


def oldest_due(engine: Engine, providers: Sequence[str], now: datetime) -> dict[str, datetime]:
    """By provider: the earliest ``next_attempt_at`` at or before ``now`` of an active task
    (ready to submit, polling, or to look up); providers with none due are left out."""
    found: dict[str, datetime] = {}
    with engine.connect() as conn:
        for provider in providers:
            for phase in ACTIVE_PHASES:
                query = (
                    select(tasks.c.next_attempt_at)
                    .where(
                        tasks.c.phase == phase,
                        tasks.c.next_attempt_at <= now,
                        tasks.c.provider == provider,
                    )
                    .order_by(tasks.c.next_attempt_at)
                    .limit(1)
                )
                due = conn.execute(query).scalar()
                if due is not None and (provider not in found or due < found[provider]):
                    found[provider] = due
    return found
