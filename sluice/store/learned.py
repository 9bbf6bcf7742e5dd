"""Learned rates in the database: the last drop of each limit key (engine/adaptive.py).

One row per key refused with no numbers, until its climb has long ended
(:data:`sluice.engine.adaptive.FORGET_AFTER_S`). A drop is written only when the row
is still the version the caller computed it from (``dropped_at_s`` unchanged), so of many
workers refused in the same burst exactly one makes the drop; the drop and its audit
record (``provider.rate_learned`` on ``provider:NAME``) commit together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Engine, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sluice.domain import Actor
from sluice.store import audit
from sluice.store.tables import LearnedRateRow

learned: Table = LearnedRateRow.__table__  # type: ignore[assignment]

ACTOR = Actor("system:limiter")
ACTION = "provider.rate_learned"


@dataclass(frozen=True)
class LearnedDrop:
    """One key's last drop: refused at ``peak_per_s``, dropped to ``low_per_s`` at
    ``dropped_at_s`` (POSIX seconds)."""

    key: str
    provider: str
    configured_per_s: float
    peak_per_s: float
    low_per_s: float
    dropped_at_s: float
    decreases: int
    reason: str


class LearnedRateStore:
    """The ``learned_rates`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def all(self) -> list[LearnedDrop]:
        with self.engine.connect() as conn:
            return [LearnedDrop(**row._mapping) for row in conn.execute(select(learned))]

    def get(self, key: str) -> LearnedDrop | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(learned).where(learned.c.key == key)).first()
        return None if row is None else LearnedDrop(**row._mapping)

    def record_drop(self, drop: LearnedDrop, previous_at: float | None, *, at: datetime) -> bool:
        """Write ``drop`` if the key's row is still the one dropped at ``previous_at`` (None:
        no row yet); whether it was written. Audits the drop in the same transaction."""
        values = asdict(drop)
        with self.engine.begin() as conn:
            # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT.
            if previous_at is None:
                made = conn.execute(
                    self._insert(learned)
                    .values(**values)
                    .on_conflict_do_nothing()
                    .returning(learned.c.key)
                ).first()
            else:
                made = conn.execute(
                    update(learned)
                    .where(learned.c.key == drop.key, learned.c.dropped_at_s == previous_at)
                    .values(**values)
                    .returning(learned.c.key)
                ).first()
            if made is None:
                return False
            audit.record(
                conn,
                ACTOR,
                ACTION,
                f"provider:{drop.provider}",
                tenant=None,
                at=at,
                detail={
                    "key": drop.key,
                    "configured_per_s": round(drop.configured_per_s, 6),
                    "from_per_s": round(drop.peak_per_s, 6),
                    "to_per_s": round(drop.low_per_s, 6),
                    "reason": drop.reason,
                },
            )
            return True

    def forget_drops(self, drops: Sequence[LearnedDrop]) -> int:
        """Delete each of ``drops`` still as read (a key dropped again since keeps its new
        row); how many went."""
        gone = 0
        with self.engine.begin() as conn:
            for drop in drops:
                gone += int(
                    conn.execute(
                        delete(learned).where(
                            learned.c.key == drop.key,
                            learned.c.dropped_at_s == drop.dropped_at_s,
                        )
                    ).rowcount
                )
        return gone

    def forget(self, key: str | None = None) -> int:
        """Forget one key's learned rate (or every key's): it runs at its configured rate."""
        query = delete(learned) if key is None else delete(learned).where(learned.c.key == key)
        with self.engine.begin() as conn:
            return int(conn.execute(query).rowcount)
