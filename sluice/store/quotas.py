"""Quota use in the database: atomic across workers and hosts, kept across restarts.

One row per quota key and window (a fixed window, or one bucket of a rolling quota). A
worker *reserves* units before it sends (:meth:`QuotaStore.reserve`): for a fixed window
one conditional ``UPDATE ... SET used = used + :n WHERE used + :n <= limit``, which
PostgreSQL applies atomically per row (a concurrent writer waits and re-checks the
``WHERE`` on the new row version) and SQLite runs one writer at a time; for a rolling quota
the sum over the buckets still counting and the bucket's update run in one transaction under
a per-key lock (``pg_advisory_xact_lock``; SQLite's ``BEGIN IMMEDIATE``). Either way no two
workers can both take the last units. Units reserved and not sent go back with
:meth:`QuotaStore.give_back`; a worker that dies keeps its reservation counted (at most one
block each), which can only under-use the quota, never exceed it.

This store knows nothing of quotas' calendars: callers pass the window
(:class:`sluice.ratelimit.quota.Quota` computes it).

The reset of a fixed window that was spent is audited (``quota.reset`` on ``key:<quota
key>``, actor ``system:limiter``): the first reservation of the new window creates its row,
exactly one worker does so (``ON CONFLICT DO NOTHING ... RETURNING``), and in the same
transaction it finds the previous window spent. A window nobody used up resets silently, as
do the buckets of a rolling quota, which never reset at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from sluice.clock import as_utc
from sluice.domain import Actor, Phase
from sluice.store import audit
from sluice.store.rows import tasks
from sluice.store.tables import QuotaUsageRow

usage: Table = QuotaUsageRow.__table__  # type: ignore[assignment]

ACTOR = Actor("system:limiter")
RESET = "quota.reset"

_RETRIES = 8

WAKE_SCAN = 5_000
"""How many tasks waiting for a window's end :meth:`QuotaStore.give_back` reads, oldest
first, to find those that draw on the quota whose units came back."""

WaitsOn = Callable[[str | None, Mapping[str, Any] | None, str], bool]
"""Whether a waiting task (its kind, payload and phase) draws on the quota given back."""


@dataclass(frozen=True)
class Window:
    """Where a reservation counts: ``key``'s row for ``start..end`` under ``limit``.

    ``counted_since`` is the start of the oldest row that still counts (a rolling quota's
    buckets); ``None`` for a fixed window, which counts only its own row.
    """

    key: str
    start: datetime
    end: datetime
    limit: int
    counted_since: datetime | None = None


@dataclass(frozen=True)
class UsageRow:
    key: str
    start: datetime
    end: datetime
    used: int
    limit: int


class QuotaStore:
    """Reserves, gives back and reports quota units."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._postgres else sqlite.insert

    def reserve(self, window: Window, want: int, now: datetime) -> int:
        """Take up to ``want`` units of ``window``; returns how many (0: spent).

        Never takes more than the window has left, whatever other workers do meanwhile.
        """
        if want <= 0:
            return 0
        if window.counted_since is not None:
            return self._reserve_rolling(window, want, now)
        self._ensure_row(window, now)
        asked = min(want, window.limit)
        for _ in range(_RETRIES):
            with self.engine.begin() as conn:
                taken = conn.execute(
                    update(usage)
                    .where(
                        usage.c.key == window.key,
                        usage.c.window_start == window.start,
                        usage.c.used + asked <= window.limit,
                    )
                    .values(used=usage.c.used + asked, updated_at=now)
                )
                if taken.rowcount == 1:
                    return asked
                used = conn.execute(
                    select(usage.c.used).where(
                        usage.c.key == window.key, usage.c.window_start == window.start
                    )
                ).scalar_one()
            left = window.limit - int(used)
            if left <= 0:
                return 0
            asked = min(asked, left)
        return 0

    def give_back(
        self,
        key: str,
        start: datetime,
        units: int,
        now: datetime,
        *,
        wake_at: datetime | None = None,
        waits_on: WaitsOn | None = None,
    ) -> None:
        """Return ``units`` reserved in ``key``'s window (or bucket) from ``start`` and not
        sent, and make the work that waits for that window's reset due again.

        A worker that found the window spent while other workers still held blocks of it
        gave its tasks back until the reset; when those blocks come back (at the end of a
        pump round), the units are there again, and that work is what they are for: it
        used to wait for the reset (at midnight) with units left. At most ``units`` tasks
        wake, oldest first; one woken in vain finds the quota spent again and goes back to
        waiting. They come due at ``wake_at`` (default ``now``).

        Every quota of a provider with the same window ends at the same time (each
        advertiser's of a limit kept ``per`` one), so the tasks waiting for that time are
        not all waiting for ``key``: ``waits_on(kind, payload, phase)`` says whether one
        draws on it. Only those wake, the oldest of the first :data:`WAKE_SCAN` waiting
        (without it, any task waiting for that time wakes, as before: units given back
        for one advertiser woke another's spent work, which went straight back to wait,
        while the work the units were for waited for the reset).
        """
        if units <= 0:
            return
        with self.engine.begin() as conn:
            ended = conn.execute(
                update(usage)
                .where(
                    usage.c.key == key,
                    usage.c.window_start == start,
                    usage.c.used >= units,
                )
                .values(used=usage.c.used - units, updated_at=now)
                .returning(usage.c.window_end)
            ).scalar()
            if ended is None:
                return
            # The dispatcher gives such work back due exactly at the window's end
            # (engine.dispatcher._wait_for_quota); a quota key starts with its provider.
            # At most one task per unit: each costs at least one, and a large backlog
            # waiting for the reset is not woken whole by a few units.
            waiting = (
                select(tasks.c.id, tasks.c.kind, tasks.c.payload, tasks.c.phase)
                .where(
                    tasks.c.provider == key.partition(":")[0],
                    tasks.c.next_attempt_at == ended,
                    tasks.c.claimed_by.is_(None),
                    tasks.c.phase != Phase.DONE.value,
                )
                .order_by(tasks.c.id)
            )
            if waits_on is None:
                ids = list(conn.execute(waiting.limit(units)).scalars())
            else:
                ids = []
                for row in conn.execute(waiting.limit(WAKE_SCAN)):
                    if waits_on(row.kind, row.payload, row.phase):
                        ids.append(row.id)
                        if len(ids) >= units:
                            break
            if ids:
                conn.execute(
                    update(tasks).where(tasks.c.id.in_(ids)).values(next_attempt_at=wake_at or now)
                )

    def used(self, window: Window) -> int:
        """Units used in ``window`` (for a rolling quota: in every bucket still counting)."""
        with self.engine.connect() as conn:
            return self._used(conn, window)

    def oldest_use(self, window: Window) -> datetime | None:
        """For a rolling quota: the start of the oldest bucket still counting that holds
        any use (``None``: none does, or a fixed window). Its units come back when the
        bucket's end leaves the window."""
        if window.counted_since is None:
            return None
        with self.engine.connect() as conn:
            oldest = conn.execute(
                select(func.min(usage.c.window_start)).where(
                    usage.c.key == window.key,
                    usage.c.window_start >= window.counted_since,
                    usage.c.used > 0,
                )
            ).scalar_one()
        return None if oldest is None else as_utc(oldest)

    def most_used(self, prefix: str, suffix: str, since: datetime, until: datetime) -> int:
        """The most units any one key (``prefix`` + an account + ``suffix``) used in the
        buckets starting from ``since`` to ``until``, summed per key in the database: one
        number however many accounts a ``per`` quota has (``/metrics`` reads it)."""
        per_key = (
            select(func.sum(usage.c.used).label("used"))
            .where(
                usage.c.key.startswith(prefix, autoescape=True),
                usage.c.key.endswith(suffix, autoescape=True),
                usage.c.window_start >= since,
                usage.c.window_start <= until,
            )
            .group_by(usage.c.key)
            .subquery()
        )
        with self.engine.connect() as conn:
            most = conn.execute(select(func.max(per_key.c.used))).scalar_one()
        return 0 if most is None else int(most)

    def rows(self, prefix: str, since: datetime) -> list[UsageRow]:
        """Every row of keys starting with ``prefix`` whose window ends after ``since``."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(usage)
                .where(usage.c.key.startswith(prefix, autoescape=True), usage.c.window_end > since)
                .order_by(usage.c.key, usage.c.window_start)
            )
            return [
                UsageRow(r.key, r.window_start, r.window_end, int(r.used), int(r.limit))
                for r in found
            ]

    def rekey(self, old: str, new: str, now: datetime) -> None:
        """Move every row of key ``old`` to key ``new`` (one transaction): a window ``new``
        has a row for already adds ``old``'s use to it, so nothing counted is lost."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(usage.c.window_start, usage.c.window_end, usage.c.used, usage.c.limit)
                .where(usage.c.key == old)
                .with_for_update()
            ).all()
            for start, end, used, limit in rows:
                insert = self._insert(usage).values(
                    key=new,
                    window_start=start,
                    window_end=end,
                    used=used,
                    limit=limit,
                    updated_at=now,
                )
                conn.execute(
                    insert.on_conflict_do_update(
                        index_elements=[usage.c.key, usage.c.window_start],
                        set_={"used": usage.c.used + insert.excluded.used, "updated_at": now},
                    )
                )
            conn.execute(delete(usage).where(usage.c.key == old))

    def prune(self, before: datetime) -> int:
        """Forget windows that ended before ``before`` (kept a while for the console)."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(usage).where(usage.c.window_end < before)).rowcount)

    def _ensure_row(self, window: Window, now: datetime) -> None:
        with self.engine.begin() as conn:
            if self._add_row(conn, window, now):
                self._audit_reset(conn, window, now)

    def _add_row(self, conn: Connection, window: Window, now: datetime) -> bool:
        """The window's row with nothing used, unless it is there already; whether it was
        made here."""
        # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT.
        made = conn.execute(
            self._insert(usage)
            .values(
                key=window.key,
                window_start=window.start,
                window_end=window.end,
                used=0,
                limit=window.limit,
                updated_at=now,
            )
            .on_conflict_do_nothing()
            .returning(usage.c.key)
        ).first()
        return made is not None

    def _audit_reset(self, conn: Connection, window: Window, now: datetime) -> None:
        """Audit the reset when the window before ``window`` was spent.

        The previous row is read under a shared lock: a reservation of its last units still
        uncommitted (a worker whose clock had not turned yet) is waited for, not missed.
        """
        query = (
            select(usage.c.window_start, usage.c.used, usage.c.limit)
            .where(usage.c.key == window.key, usage.c.window_start < window.start)
            .order_by(usage.c.window_start.desc())
            .limit(1)
        )
        if self._postgres:
            query = query.with_for_update(read=True)
        previous = conn.execute(query).first()
        if previous is None or previous.used < previous.limit:
            return
        audit.record(
            conn,
            ACTOR,
            RESET,
            f"key:{window.key}",
            tenant=None,
            at=now,
            detail={
                "window_start": window.start.isoformat(),
                "window_end": window.end.isoformat(),
                "limit": window.limit,
                "spent_window_start": as_utc(previous.window_start).isoformat(),
                "spent_used": int(previous.used),
            },
        )

    def _used(self, conn: Connection, window: Window) -> int:
        """A fixed window's own row; for a rolling quota every bucket from the oldest that
        still counts on, newer than ``window``'s own included: a worker whose clock is a
        little behind (or that read it before waiting for the key's lock) must count what
        a worker ahead of it reserved, or both take the last units."""
        if window.counted_since is None:
            counted = usage.c.window_start == window.start
        else:
            counted = usage.c.window_start >= window.counted_since
        total = conn.execute(
            select(func.coalesce(func.sum(usage.c.used), 0)).where(
                usage.c.key == window.key, counted
            )
        ).scalar_one()
        return int(total)

    def _reserve_rolling(self, window: Window, want: int, now: datetime) -> int:
        with self.engine.begin() as conn:
            if self._postgres:
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 7))"),
                    {"key": window.key},
                )
            left = window.limit - self._used(conn, window)
            taken = max(0, min(want, left))
            if taken == 0:
                return 0
            self._add_row(conn, window, now)
            conn.execute(
                update(usage)
                .where(usage.c.key == window.key, usage.c.window_start == window.start)
                .values(used=usage.c.used + taken, updated_at=now)
            )
            return taken
