"""Engines and schema management: SQLite (WAL, foreign keys) or PostgreSQL (psycopg 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

from sluice import errors

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the per-backend settings Sluice relies on."""
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise errors.ConfigError(f"database_url {url!r} is not a database URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take it over so writers
        # serialise with BEGIN IMMEDIATE instead of failing on lock upgrades.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    raise errors.ConfigError(
        f"database_url backend {parsed.get_backend_name()!r} is not supported; "
        "use sqlite:///path.db or postgresql://..."
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # autocommit at the driver; SQLAlchemy issues BEGIN
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at the packaged migrations and this engine."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


# Any constant: processes that start together serialise their migrations on it.
MIGRATION_LOCK_ID = 0x51_1C_E0_01


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (idempotent).

    On PostgreSQL the migration runs under a transaction-scoped advisory lock, so workers
    starting at once on a fresh database do not race to create the same tables.
    """
    cfg = alembic_config(engine)
    if engine.dialect.name != "postgresql":
        command.upgrade(cfg, revision)
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def ensure_schema(engine: Engine) -> None:
    """Upgrade to head; cheap when already there."""
    upgrade(engine)


def has_schema(engine: Engine) -> bool:
    return inspect(engine).has_table("tasks")
