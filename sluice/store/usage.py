"""Usage counters: the console's history, kept compactly in the database.

Each sending process counts what it sends per limit key and adds its counts here about
once a second (:meth:`UsageStore.add`, an upsert that increments, so the counts of many
processes and hosts sum by themselves). Every count lands in two buckets:

- ``width_s = 1``, per second, kept :data:`SECOND_BUCKETS_KEPT_S`: the usage in a limit's
  current window (a 1 s or 60 s window);
- ``width_s = 60``, per minute, kept ``usage_retention_s``: the last hour's chart and
  errors, surviving restarts.

Metrics (``metric``): ``sent`` (requests that went out under the key), ``create``,
``poll``, ``lookup`` (requests by operation), ``error`` (a failed attempt or an Error),
``rate_limited`` (answers that paused the key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import Engine, Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from sluice.store.tables import UsageCountRow

usage_counts: Table = UsageCountRow.__table__  # type: ignore[assignment]

SECOND = 1
MINUTE = 60
SECOND_BUCKETS_KEPT_S = 300
"""Per-second buckets older than this are pruned (enough for any window up to 5 minutes)."""

METRICS = ("sent", "create", "poll", "lookup", "error", "rate_limited")


def bucket_start(at: datetime, width_s: int) -> datetime:
    """The start of the ``width_s`` bucket holding ``at``."""
    at = at.replace(microsecond=0)
    if width_s == MINUTE:
        return at.replace(second=0)
    return at


class UsageStore:
    """Adds and reads usage counters and pause signals."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        statement = insert(usage_counts)
        # Built once: its ``excluded`` alias is a reference cycle, left to the collector
        # when a statement was built per call (docs/ratelimit.md, "The collector").
        self._upsert = statement.on_conflict_do_update(
            index_elements=["key", "bucket", "width_s", "metric"],
            set_={"count": usage_counts.c.count + statement.excluded.count},
        )

    def add(self, counts: Mapping[tuple[str, str, datetime], int]) -> None:
        """Add ``{(key, metric, second): n}`` to the per-second and per-minute buckets."""
        merged: dict[tuple[str, datetime, int, str], int] = {}
        for (key, metric, at), n in counts.items():
            if n <= 0:
                continue
            for width in (SECOND, MINUTE):
                slot = (key, bucket_start(at, width), width, metric)
                merged[slot] = merged.get(slot, 0) + n
        if not merged:
            return
        rows = [
            {"key": k, "bucket": b, "width_s": w, "metric": m, "count": n}
            for (k, b, w, m), n in sorted(merged.items())
        ]
        with self.engine.begin() as conn:
            conn.execute(self._upsert, rows)

    def totals(
        self, since: datetime, width_s: int = SECOND, keys: Iterable[str] | None = None
    ) -> dict[tuple[str, str], int]:
        """``{(key, metric): count}`` over buckets of ``width_s`` starting at or after ``since``."""
        query = (
            select(usage_counts.c.key, usage_counts.c.metric, func.sum(usage_counts.c.count))
            .where(usage_counts.c.width_s == width_s, usage_counts.c.bucket >= since)
            .group_by(usage_counts.c.key, usage_counts.c.metric)
        )
        if keys is not None:
            query = query.where(usage_counts.c.key.in_(list(keys)))
        with self.engine.connect() as conn:
            return {(k, m): int(n or 0) for k, m, n in conn.execute(query)}

    def sent_per_s(self, keys: Iterable[str], since: datetime, until: datetime) -> dict[str, float]:
        """What every process sent under each of ``keys`` from ``since`` until ``until``
        (whole per-second buckets), per second: the rate a key was actually used at."""
        keys = list(keys)
        span_s = (until - since).total_seconds()
        if not keys or span_s <= 0:
            return {}
        query = (
            select(usage_counts.c.key, func.sum(usage_counts.c.count))
            .where(
                usage_counts.c.width_s == SECOND,
                usage_counts.c.metric == "sent",
                usage_counts.c.bucket >= since,
                usage_counts.c.bucket < until,
                usage_counts.c.key.in_(keys),
            )
            .group_by(usage_counts.c.key)
        )
        with self.engine.connect() as conn:
            found = {k: int(n or 0) / span_s for k, n in conn.execute(query)}
        return {key: found.get(key, 0.0) for key in keys}

    def minutes(self, since: datetime) -> dict[tuple[str, str], dict[datetime, int]]:
        """Per-minute counts since ``since``: ``{(key, metric): {minute: count}}``."""
        return self.series(since, MINUTE)

    def series(self, since: datetime, width_s: int) -> dict[tuple[str, str], dict[datetime, int]]:
        """Counts in ``width_s`` buckets since ``since``: ``{(key, metric): {bucket: n}}``."""
        query = select(
            usage_counts.c.key, usage_counts.c.metric, usage_counts.c.bucket, usage_counts.c.count
        ).where(usage_counts.c.width_s == width_s, usage_counts.c.bucket >= since)
        series: dict[tuple[str, str], dict[datetime, int]] = {}
        with self.engine.connect() as conn:
            for key, metric, bucket, count in conn.execute(query):
                series.setdefault((key, metric), {})[bucket] = int(count)
        return series

    def prune(self, now: datetime, retention_s: float) -> int:
        """Drop per-second buckets older than 5 minutes and minutes older than ``retention_s``."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(usage_counts).where(
                    usage_counts.c.width_s == SECOND,
                    usage_counts.c.bucket < now - timedelta(seconds=SECOND_BUCKETS_KEPT_S),
                )
            ).rowcount
            gone += conn.execute(
                delete(usage_counts).where(
                    usage_counts.c.width_s == MINUTE,
                    usage_counts.c.bucket < now - timedelta(seconds=retention_s),
                )
            ).rowcount
        return int(gone)
