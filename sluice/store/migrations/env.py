"""Alembic environment: runs against the connection or engine handed in by ``sluice.store.db``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, Engine, create_engine

from sluice import errors
from sluice.store import db
from sluice.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    shared = config.attributes.get("connection")
    if isinstance(shared, Connection):
        # The caller holds a transaction (and a lock): migrate inside it.
        _migrate(shared)
        return
    engine = config.attributes.get("engine")
    if not isinstance(engine, Engine):
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise errors.ConfigError("no engine or sqlalchemy.url given to the migrations")
        engine = create_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            _migrate(connection)
            connection.commit()
            return
        with db.sqlite_foreign_keys_off(connection), connection.begin():
            _migrate(connection)
            db.check_foreign_keys(connection)


run_migrations()
