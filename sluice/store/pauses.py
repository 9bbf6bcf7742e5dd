"""Provider pauses in the database: what the limiter's Redis may lose and must not.

A provider that says "slow down" (429 + Retry-After) pauses its key in the limiter for
every worker at once. The limiter's Redis holds only what can be rebuilt, so the pause is
also written here, and every dispatcher copies the pauses still running back into its
limiter every :data:`sluice.engine.dispatcher.PAUSE_SYNC_S`. After a Redis flush the
limiter holds every key for at least 1 s (:mod:`sluice.ratelimit.gcra`), long enough for
that copy: no request goes out into a pause the provider already announced.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sluice.store.tables import LimiterPauseRow

pauses: Table = LimiterPauseRow.__table__  # type: ignore[assignment]


class PauseStore:
    """Pauses by limiter key (``sandbox``, ``sandbox:write``), each with its end."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def record(self, key: str, until: datetime) -> None:
        """Pause ``key`` until ``until``; like the limiter, only ever extends a pause."""
        with self.engine.begin() as conn:
            extended = conn.execute(
                update(pauses)
                .where(pauses.c.key == key, pauses.c.until < until)
                .values(until=until)
            )
            if extended.rowcount == 0:
                conn.execute(
                    self._insert(pauses).values(key=key, until=until).on_conflict_do_nothing()
                )

    def active(self, now: datetime) -> dict[str, datetime]:
        """Every pause still running at ``now``."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(pauses.c.key, pauses.c.until).where(pauses.c.until > now))
            return {key: until for key, until in rows}

    def prune(self, now: datetime) -> int:
        """Forget pauses that ended before ``now``; returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(pauses).where(pauses.c.until <= now)).rowcount)
