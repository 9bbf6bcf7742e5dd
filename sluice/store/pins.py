"""Rates an operator pinned on limit keys: lower than configured, until unpinned.

A pin is a row per key. Every process reads the table through the ``pinned`` ceiling
source (:class:`sluice.controls.PinnedCeilings`, cached by
:class:`sluice.engine.rates.RatesInForce`), so a pin reaches every worker within a second
and survives restarts. Writes take the caller's connection, so the pin and its audit
record commit together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from sluice.store.tables import LimitPinRow

pins: Table = LimitPinRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Pin:
    """At most ``rate_limit`` requests per ``window_s`` on ``key``, set by ``actor``."""

    key: str
    rate_limit: int
    window_s: float
    reason: str
    actor: str
    since: datetime


class PinStore:
    """The ``limit_pins`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def all(self) -> list[Pin]:
        """Every pin, by key."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(pins).order_by(pins.c.key)).all()
        return [_to_pin(row) for row in rows]

    def get(self, conn: Connection, key: str) -> Pin | None:
        row = conn.execute(select(pins).where(pins.c.key == key)).first()
        return None if row is None else _to_pin(row)

    def put(self, conn: Connection, pin: Pin) -> None:
        """Set (or replace) the pin on ``pin.key`` in ``conn``'s transaction."""
        values = {
            "rate_limit": pin.rate_limit,
            "window_s": pin.window_s,
            "reason": pin.reason,
            "actor": pin.actor,
            "since": pin.since,
        }
        # One upsert: two operators pinning a new key at once never both insert.
        conn.execute(
            self._insert(pins)
            .values(key=pin.key, **values)
            .on_conflict_do_update(index_elements=[pins.c.key], set_=values)
        )

    def clear(self, conn: Connection, key: str) -> Pin | None:
        """Remove the pin on ``key`` in ``conn``'s transaction; returns it, if there was one."""
        found = self.get(conn, key)
        if found is not None:
            conn.execute(delete(pins).where(pins.c.key == key))
        return found


def _to_pin(row: Row[Any]) -> Pin:
    return Pin(row.key, row.rate_limit, row.window_s, row.reason, row.actor, row.since)
