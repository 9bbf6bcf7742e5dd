"""Pauses in the database: what the limiter's Redis may lose and must not.

A provider that says "slow down" (429 + Retry-After) pauses its key in the limiter for
every worker at once. The limiter's Redis holds only what can be rebuilt, so the pause is
also written here, and every dispatcher copies the pauses still running back into its
limiter every :data:`sluice.engine.dispatcher.PAUSE_SYNC_S`. After a Redis flush the
limiter holds every key for at least 1 s (:mod:`sluice.ratelimit.gcra`), long enough for
that copy: no request goes out into a pause the provider already announced.

An operator's pause by hand (:mod:`sluice.controls`) is a row here too, with
``signal = "manual"``, its reason and who set it. Resuming deletes the rows; each
dispatcher then sees the key gone and clears it in its limiter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Table,
    and_,
    case,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from sluice.store import db
from sluice.store.rows import tasks
from sluice.store.tables import ACTIVE_PHASES, LimiterPauseRow

NO_EXPIRY = datetime(2100, 1, 1, tzinfo=UTC)
"""The end recorded for a pause set without one: it lasts until someone resumes it."""

pauses: Table = LimiterPauseRow.__table__  # type: ignore[assignment]

RELEASE_SLACK = timedelta(seconds=5)
MANUAL = "manual"
"""The ``signal`` of a pause an operator set by hand."""


@dataclass(frozen=True)
class Pause:
    """A pause running on ``key`` until ``until``: what set it (``signal``), why, who."""

    key: str
    until: datetime
    signal: str | None = None
    reason: str | None = None
    actor: str | None = None
    since: datetime | None = None


def under(key: str) -> ColumnElement[bool]:
    """The WHERE clause of ``key`` and every key below it (``key:...``)."""
    prefix = key + ":"
    return or_(pauses.c.key == key, pauses.c.key.startswith(prefix, autoescape=True))


class PauseStore:
    """Pauses by limiter key (``sandbox``, ``sandbox:write``), each with its end."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def record(
        self,
        key: str,
        until: datetime,
        *,
        signal: str | None = None,
        reason: str | None = None,
        since: datetime | None = None,
    ) -> None:
        """Pause ``key`` until ``until``; like the limiter, only ever extends a pause.

        ``signal`` and ``reason`` (e.g. ``rate_limited``, the provider's answer) describe
        the pause when it is the one that sets the end.
        """
        described = {"signal": signal, "reason": reason, "actor": None, "since": since}
        statement = self._insert(pauses).values(key=key, until=until, **described)
        with self.engine.begin() as conn:
            # One statement: it locks the row it finds and compares with the row as
            # committed, so of two workers recording at once the later end stands.
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[pauses.c.key],
                    set_={"until": statement.excluded.until, **described},
                    where=pauses.c.until < statement.excluded.until,
                )
            )

    def set_manual(
        self, conn: Connection, key: str, until: datetime, reason: str, actor: str, now: datetime
    ) -> Pause:
        """An operator's pause of ``key`` in ``conn``'s transaction: it ends at ``until`` or
        later (a running pause is never shortened), and its reason and actor are the
        operator's."""
        statement = self._insert(pauses).values(
            key=key, until=until, signal=MANUAL, reason=reason, actor=actor, since=now
        )
        offered = statement.excluded.until
        # One statement, not a read then a write: a pause a worker records meanwhile is
        # compared as committed (never shortened), and two operators never both insert.
        running_later = and_(pauses.c.until > now, pauses.c.until > offered)
        end: datetime = conn.execute(
            statement.on_conflict_do_update(
                index_elements=[pauses.c.key],
                set_={
                    "until": case((running_later, pauses.c.until), else_=offered),
                    "signal": MANUAL,
                    "reason": reason,
                    "actor": actor,
                    "since": now,
                },
            ).returning(pauses.c.until)
        ).scalar_one()
        return Pause(key, end, MANUAL, reason, actor, now)

    def lift(self, conn: Connection, key: str, now: datetime, provider: str) -> list[Pause]:
        """End the running pauses of ``key`` and every key below it in ``conn``'s
        transaction; returns the ones that were running.

        A dispatcher that waited out a long pause gave its claimed tasks back due at the
        pause's end; those tasks of ``provider`` (due within :data:`RELEASE_SLACK` of a
        lifted pause's end, unclaimed) are made due now.
        """
        rows = conn.execute(select(pauses).where(under(key))).all()
        conn.execute(delete(pauses).where(under(key)))
        lifted = [_to_pause(row) for row in rows if row.until > now]
        for pause in lifted:
            conn.execute(
                update(tasks)
                .where(
                    tasks.c.provider == provider,
                    tasks.c.phase.in_(ACTIVE_PHASES),
                    tasks.c.next_attempt_at > pause.until - RELEASE_SLACK,
                    tasks.c.next_attempt_at < pause.until + RELEASE_SLACK,
                    or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now),
                )
                .values(next_attempt_at=now)
            )
        return lifted

    def active(self, now: datetime) -> dict[str, datetime]:
        """Every pause still running at ``now``."""
        with db.reading(self.engine) as conn:
            rows = conn.execute(select(pauses.c.key, pauses.c.until).where(pauses.c.until > now))
            return {key: until for key, until in rows}

    def details(self, now: datetime) -> dict[str, Pause]:
        """Every pause still running at ``now``, with what set it, by key."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(pauses).where(pauses.c.until > now)).all()
        return {row.key: _to_pause(row) for row in rows}

    def prune(self, now: datetime) -> int:
        """Forget pauses that ended before ``now``; returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(pauses).where(pauses.c.until <= now)).rowcount)


def _to_pause(row: Row[Any]) -> Pause:
    return Pause(row.key, row.until, row.signal, row.reason, row.actor, row.since)
