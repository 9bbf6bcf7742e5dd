"""SQLAlchemy table models: tasks, their events, pauses, pins, learned rates, fair shares,
API keys, audit, console sessions, usage counters and bulk jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sluice import errors
from sluice.clock import as_utc
from sluice.domain import EXTERNAL_ID_MAX_CHARS, Phase, storable_text

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY is the rowid).
BigId = BigInteger().with_variant(Integer(), "sqlite")
Payload = JSON().with_variant(postgresql.JSONB(), "postgresql")


ACTIVE_PHASES = (Phase.READY.value, Phase.POLLING.value, Phase.UNCERTAIN.value)
"""The phases of a task with work left, due now or later (a claimed one is ``submitting``)."""
READY_PHASE_SQL = f"phase = '{Phase.READY.value}'"
"""The predicate of ``ix_tasks_fair_order`` (a create, or a child's, waiting to be sent),
with a literal value: SQLite uses a partial index only when the query repeats its predicate
with literals (a bound value would not match)."""
POLL_PHASES = (Phase.POLLING.value, Phase.UNCERTAIN.value)
"""The active phases that ask the provider about an object (a status poll, a lookup by
client reference): a fair claim's poll stream, beside the creates of ``ready``."""
POLL_PHASE_SQL = "phase IN (" + ", ".join(f"'{phase}'" for phase in POLL_PHASES) + ")"
"""The predicate of ``ix_tasks_due_polls``, with literal values as ``READY_PHASE_SQL``."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored and returned as timezone-aware UTC on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise errors.InvalidValue("naive datetime given to the store; use timezone-aware UTC")
        value = as_utc(value)
        # SQLite keeps text; store it naive-UTC so ordering comparisons stay lexical.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class ForeignText(TypeDecorator[str]):
    """Text from outside Sluice (a provider's messages, an event's detail quoting one, an
    operator's reason): a
    U+0000 (PostgreSQL refused the writer's whole batch of outcomes for one) or a lone
    surrogate (which UTF-8 cannot encode: both databases refused it) is stored as U+FFFD."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return storable_text(value)


class ForeignString(TypeDecorator[str]):
    """:class:`ForeignText` in a ``VARCHAR`` of a given length (a provider's ids)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return storable_text(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime()}


class TaskRow(Base):
    """One unit of work for a provider (or one tracked object, the prototype's mode)."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # Every query the API runs filters on it; rows from before tenants are "default".
    tenant: Mapped[str] = mapped_column(String(64), server_default="default")
    provider: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any] | None] = mapped_column(Payload)
    external_id: Mapped[str | None] = mapped_column(ForeignString(EXTERNAL_ID_MAX_CHARS))
    parent_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("tasks.id", ondelete="RESTRICT")
    )
    status: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(16))
    track_only: Mapped[bool] = mapped_column(Boolean, default=False)
    validation_error: Mapped[str | None] = mapped_column(ForeignText)
    last_error: Mapped[str | None] = mapped_column(ForeignText)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    poll_interval_s: Mapped[float | None] = mapped_column(Float)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    client_ref: Mapped[str | None] = mapped_column(String(64), unique=True)
    maybe_created: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Orders work within its fairness key (higher first); never across keys.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Who shares the provider's budget fairly: the tenant, or a payload field's value.
    fairness_key: Mapped[str] = mapped_column(String(128), server_default="default")

    __table_args__ = (
        Index("ix_tasks_due", "phase", "next_attempt_at"),
        # A fair claim (store/fairshare.py) takes a key's creates and its polls in turns.
        # Its creates (ready) are read in within-key order along ix_tasks_fair_order,
        # stopping at its share (migration 0012_fair_order; only ready tasks since
        # 0016_due_polls: a tree's children polled in flight sorted before every root); its
        # polls and lookups in due order along ix_tasks_due_polls, stopping at the first not
        # due. The fairness keys with work are found one index seek each in both.
        Index(
            "ix_tasks_fair_order",
            "provider",
            "fairness_key",
            text("priority DESC"),
            text("(parent_id IS NULL)"),
            "next_attempt_at",
            "id",
            postgresql_where=text(READY_PHASE_SQL),
            sqlite_where=text(READY_PHASE_SQL),
        ),
        Index(
            "ix_tasks_due_polls",
            "provider",
            "fairness_key",
            "next_attempt_at",
            "id",
            postgresql_where=text(POLL_PHASE_SQL),
            sqlite_where=text(POLL_PHASE_SQL),
        ),
        Index("ix_tasks_provider_status", "provider", "status"),
        # Only the rows with a value (migration 0017_partial_null_indexes): a root has no
        # parent, and a task has no external id until its create is answered. Reads compare
        # the column with a value, which implies IS NOT NULL on both databases.
        Index(
            "ix_tasks_parent_id",
            "parent_id",
            postgresql_where=text("parent_id IS NOT NULL"),
            sqlite_where=text("parent_id IS NOT NULL"),
        ),
        Index(
            "ix_tasks_external_id",
            "provider",
            "external_id",
            postgresql_where=text("external_id IS NOT NULL"),
            sqlite_where=text("external_id IS NOT NULL"),
        ),
        Index("ix_tasks_tenant", "tenant", "id"),
        # A tenant's tasks in one status, read in id order without fetching other tenants'
        # rows (migration 0013_tenant_status): a tenant's key always filters by tenant.
        Index("ix_tasks_tenant_status", "tenant", "status", "id"),
        # A large backlog (migration 0007_scale): the claim reads one provider's due tasks
        # in order and stops at its limit; listings filtered by status or kind read in id
        # order (with or without a tenant) instead of sorting every match.
        Index("ix_tasks_claim", "provider", "next_attempt_at", "id"),
        Index("ix_tasks_status", "status", "id"),
        Index("ix_tasks_kind", "kind", "id"),
        # The reconciler's lapsed claims: only claimed rows are in it (a few per worker).
        Index(
            "ix_tasks_claimed_until",
            "claimed_until",
            postgresql_where=text("claimed_until IS NOT NULL"),
            sqlite_where=text("claimed_until IS NOT NULL"),
        ),
        # The console's task list and GET /api/tasks: created between (a range on the creation
        # time; tests/integration/test_query_plans.py says which ranges it serves).
        Index("ix_tasks_created_at", "created_at"),
        # Scoped per tenant: one global namespace would let a caller probe others' keys.
        UniqueConstraint("tenant", "idempotency_key", name="uq_tasks_tenant_idempotency_key"),
    )


class TaskEventRow(Base):
    """An append-only record of one change to a task."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign key (migration 0015): every event is written beside its task's insert or
    # update, and retention deletes events before their tasks; the check cost a lookup and
    # a row lock per event.
    task_id: Mapped[int] = mapped_column(BigId, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    event: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(ForeignText)


class LimiterPauseRow(Base):
    """A pause on a limit key, kept beyond the limiter's Redis: one a provider asked for
    (429, Retry-After) or one an operator set by hand (``signal = "manual"``)."""

    __tablename__ = "limiter_pauses"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime())
    signal: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(ForeignText)
    actor: Mapped[str | None] = mapped_column(String(200))
    since: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LimitPinRow(Base):
    """A lower rate an operator pinned on one limit key (``rate_limit`` per ``window_s``)."""

    __tablename__ = "limit_pins"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    rate_limit: Mapped[int] = mapped_column(Integer)
    window_s: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(ForeignText)
    actor: Mapped[str] = mapped_column(String(200))
    since: Mapped[datetime] = mapped_column(UTCDateTime())


class LearnedRateRow(Base):
    """The last drop of one limit key's learned rate (engine/adaptive.py): the rate it was
    refused at, the rate it dropped to, and when; the climb since is computed, not stored."""

    __tablename__ = "learned_rates"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    configured_per_s: Mapped[float] = mapped_column(Float)
    peak_per_s: Mapped[float] = mapped_column(Float)
    low_per_s: Mapped[float] = mapped_column(Float)
    dropped_at_s: Mapped[float] = mapped_column(Float)
    decreases: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(String(255), default="")


class FairShareRow(Base):
    """Weighted fair queuing state of one fairness key on one provider's budget.

    ``vtime`` is the key's virtual finish time: each task claimed for it adds
    ``cost/weight`` (its cost: what its request uses of the provider's budget). The row
    whose ``fairness_key`` is ``""`` holds the provider's own virtual clock (the start tag
    of the last slot handed out), which a key coming back from idle starts from, so an
    idle key saves up no credit. ``granted``/``prev_granted`` count claimed budget units
    in the current and the previous minute (``minute`` starts the current). ``polls_next``:
    whose turn comes first in the key's next claim, its polls' (true) or its creates'; each
    claim stores the turn after what it took, so the turns run on across claims.
    """

    __tablename__ = "fair_shares"

    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    fairness_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    vtime: Mapped[float] = mapped_column(Float, default=0.0)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    minute: Mapped[datetime | None] = mapped_column(UTCDateTime())
    granted: Mapped[float] = mapped_column(Float, default=0.0)
    prev_granted: Mapped[float] = mapped_column(Float, default=0.0)
    polls_next: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class QuotaUsageRow(Base):
    """Units of a quota used in one window (a fixed window, or one bucket of a rolling one).

    Kept here, not in Redis, so a restart or a lost Redis never hands a window out twice.
    """

    __tablename__ = "quota_usage"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    used: Mapped[int] = mapped_column(Integer, default=0)
    limit: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKeyRow(Base):
    """An API key: its public id and what it may do; of its secret only a SHA-256 digest."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str | None] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditRow(Base):
    """One audited action, by an API key or by one of Sluice's own parts (``actor``)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(32))
    key_name: Mapped[str | None] = mapped_column(String(128))
    tenant: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(Payload)

    __table_args__ = (
        Index("ix_audit_tenant", "tenant", "id"),
        Index("ix_audit_action", "action", "id"),
        Index("ix_audit_key_id", "key_id", "id"),
    )


class ConsoleSessionRow(Base):
    """A signed-in console session, tied to the API key it was opened with.

    ``id`` is the SHA-256 digest of the cookie's token: a copy of this table opens no
    session. Deleting (or revoking) the key ends its sessions.
    """

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageCountRow(Base):
    """How many requests (and of which kind) one limit key saw in one time bucket.

    Each sending process adds its counts every second or so (an upsert that increments), so
    the rows of many processes sum by themselves. ``width_s`` is 1 for the last few minutes
    (the overview's "current window") and 60 for the history kept ``usage_retention_s``.
    """

    __tablename__ = "usage_counts"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    width_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_usage_counts_bucket", "width_s", "bucket"),)


class BulkJobRow(Base):
    """A bulk retry or cancel of every task matching a filter, run in batches.

    ``max_id`` bounds it to the matches that existed when it was previewed; ``cursor`` is
    the highest id already handled, advanced in the same transaction as each batch's
    changes, so a job resumed after a crash neither skips nor repeats a task.
    """

    __tablename__ = "bulk_jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(16))
    filter: Mapped[dict[str, Any]] = mapped_column(Payload)
    tenant: Mapped[str | None] = mapped_column(String(64))
    max_id: Mapped[int] = mapped_column(BigId)
    previewed: Mapped[int] = mapped_column(BigInteger)
    cursor: Mapped[int] = mapped_column(BigId, default=0)
    changed: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(32))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_bulk_jobs_state", "state", "id"),)
