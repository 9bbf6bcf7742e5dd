"""The Alembic head builds exactly the models' schema, and migrations go down as well as up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Engine, Index, create_engine, inspect, text
from sqlalchemy.schema import CreateIndex

from sluice.store import db
from sluice.store.tables import Base, UTCDateTime


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh, empty database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'migrations.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = db.make_engine(url)
    yield engine
    engine.dispose()


def schema_diff(engine: Engine) -> list[object]:
    """What autogenerate finds different; expression indexes, which it cannot reflect, and
    partial indexes' predicates, which it does not compare, are checked by
    :func:`test_indexes_autogenerate_cannot_compare_are_built_as_the_models_declare`."""
    with engine.connect() as conn, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression")
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def indexes_autogenerate_cannot_compare() -> list[Index]:
    """The indexes on expressions, and the partial ones (``WHERE``)."""
    return [
        index
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if any(not isinstance(e, Column) for e in index.expressions)
        or any(index.dialect_options[d]["where"] is not None for d in ("postgresql", "sqlite"))
    ]


def test_indexes_autogenerate_cannot_compare_are_built_as_the_models_declare(
    engine: Engine,
) -> None:
    """Each index on expressions and each partial index exists after the migrations,
    defined as the model says (its columns, its expressions and its predicate)."""
    db.upgrade(engine)
    names = {index.name for index in indexes_autogenerate_cannot_compare()}
    assert {"ix_tasks_fair_order", "ix_tasks_parent_id", "ix_tasks_external_id"} <= names
    for index in indexes_autogenerate_cannot_compare():
        declared = str(CreateIndex(index).compile(dialect=engine.dialect))
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                built = conn.execute(
                    text("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"),
                    {"n": index.name},
                ).scalar_one()
                assert " ".join(built.split()) == " ".join(declared.split())
            else:
                built = conn.execute(
                    text("SELECT pg_get_indexdef(to_regclass(:n))"), {"n": index.name}
                ).scalar_one()
                # PostgreSQL gives its own spelling back: compare it with an index the
                # models' DDL builds beside it.
                conn.execute(text(declared.replace(f"INDEX {index.name}", "INDEX probe_ix")))
                probe = conn.execute(
                    text("SELECT pg_get_indexdef('probe_ix'::regclass)")
                ).scalar_one()
                conn.rollback()
                assert built == probe.replace("probe_ix", str(index.name))


def test_head_matches_the_models(engine: Engine) -> None:
    """After upgrading to head, autogenerate finds no difference from the table models."""
    db.upgrade(engine)

    assert schema_diff(engine) == []


def test_upgrade_is_idempotent(engine: Engine) -> None:
    """Upgrading a database already at head changes nothing and keeps the schema right."""
    db.ensure_schema(engine)
    db.ensure_schema(engine)

    assert db.has_schema(engine)
    assert schema_diff(engine) == []


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    """Downgrading to base removes every table; upgrading again restores the models' schema."""
    db.upgrade(engine)
    command.downgrade(db.alembic_config(engine), "base")

    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    assert tables == set()
    assert not db.has_schema(engine)

    db.upgrade(engine)
    assert schema_diff(engine) == []


def test_concurrent_upgrades_on_a_fresh_postgres_database_all_succeed(postgres_url: str) -> None:
    """Several processes migrating one empty PostgreSQL database at once all succeed."""
    import threading

    from sluice.store import db as store_db

    failures: list[str] = []

    def upgrade() -> None:
        engine = store_db.make_engine(postgres_url)
        try:
            store_db.upgrade(engine)
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            engine.dispose()

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert store_db.has_schema(store_db.make_engine(postgres_url))


def test_upgrade_marks_tasks_mid_submission_as_maybe_created(engine: Engine) -> None:
    """Tasks mid-submission or uncertain when 0002 runs come out maybe_created (a retry or
    recovery looks them up first); others do not."""
    command.upgrade(db.alembic_config(engine), "0001")
    row = {
        "provider": "p",
        "status": "Not Started",
        "track_only": False,
        "attempts": 0,
        "polls": 0,
        "created_at": "2026-01-01 00:00:00",
        "updated_at": "2026-01-01 00:00:00",
    }
    with engine.begin() as conn:
        for task_id, phase in enumerate(("ready", "submitting", "uncertain", "polling"), 1):
            conn.execute(
                text(
                    "INSERT INTO tasks (id, provider, status, phase, track_only, attempts, "
                    "polls, created_at, updated_at) VALUES (:id, :provider, :status, :phase, "
                    ":track_only, :attempts, :polls, :created_at, :updated_at)"
                ),
                {**row, "id": task_id, "phase": phase},
            )

    db.upgrade(engine)

    with engine.connect() as conn:
        marked = conn.execute(text("SELECT id, maybe_created FROM tasks ORDER BY id")).all()
    assert [(task_id, bool(flag)) for task_id, flag in marked] == [
        (1, False),
        (2, True),
        (3, True),
        (4, False),
    ]


def test_tasks_from_before_tenants_move_to_default_with_their_history(engine: Engine) -> None:
    """Upgrading a database with tasks from revision 0001 puts them in tenant 'default',
    keeps every event and parent link, and scopes their idempotency keys to it."""

    db.upgrade(engine, "0001")
    row = (
        "INSERT INTO tasks (id, provider, status, phase, track_only, attempts, polls, "
        "created_at, updated_at, idempotency_key, parent_id) VALUES "
        "(:id, 'sandbox', 'Not Started', 'ready', false, 0, 0, :at, :at, :key, :parent)"
    )
    at = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        conn.execute(text(row), {"id": 1, "at": at, "key": "k1", "parent": None})
        conn.execute(text(row), {"id": 2, "at": at, "key": None, "parent": 1})
        conn.execute(
            text(
                "INSERT INTO task_events (task_id, at, event) "
                "VALUES (1, :at, 'created'), (2, :at, 'created')"
            ),
            {"at": at},
        )

    db.upgrade(engine)

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, tenant, parent_id FROM tasks ORDER BY id")).all()
        event_count = conn.execute(text("SELECT COUNT(*) FROM task_events")).scalar_one()
    assert [tuple(r) for r in rows] == [(1, "default", None), (2, "default", 1)]
    assert event_count == 2
    assert schema_diff(engine) == []


def test_a_pause_written_before_pause_details_reads_back_without_them(engine: Engine) -> None:
    """A provider's pause stored before the revision that added signal, reason and actor
    (and the pins table) survives the upgrade, with those details empty."""
    from datetime import UTC, datetime

    import sqlalchemy as sa
    from alembic.script import ScriptDirectory

    from sluice.store.pauses import Pause, PauseStore

    script = ScriptDirectory.from_config(db.alembic_config(engine))
    (details,) = [r for r in script.walk_revisions() if "pins_pause_details" in (r.path or "")]
    assert isinstance(details.down_revision, str)
    db.upgrade(engine, details.down_revision)
    until = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    old = sa.table("limiter_pauses", sa.column("key"), sa.column("until", UTCDateTime()))
    with engine.begin() as conn:
        conn.execute(sa.insert(old).values(key="sandbox", until=until))

    db.upgrade(engine)

    now = datetime(2029, 1, 1, tzinfo=UTC)
    assert PauseStore(engine).details(now) == {"sandbox": Pause("sandbox", until)}
    assert PauseStore(engine).active(now) == {"sandbox": until}


def test_fair_share_revision_keys_existing_tasks_by_their_tenant(engine: Engine) -> None:
    """Tasks written before 0010 get priority 0 and their tenant as fairness key."""
    config = db.alembic_config(engine)
    command.upgrade(config, "0005")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tasks (id, tenant, provider, kind, status, phase, track_only, "
                "attempts, polls, created_at, updated_at) VALUES (1, 'acme', 'sandbox', "
                "'campaign', 'Not Started', 'ready', false, 0, 0, "
                "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    command.upgrade(config, "head")

    with engine.connect() as conn:
        row = conn.execute(text("SELECT priority, fairness_key FROM tasks WHERE id = 1")).one()
    assert tuple(row) == (0, "acme")
    assert "fair_shares" in inspect(engine).get_table_names()


def test_events_lose_their_foreign_key_and_a_downgrade_deletes_orphans_to_restore_it(
    engine: Engine,
) -> None:
    """0015 drops the foreign key from ``task_events`` to ``tasks`` and keeps every event;
    its downgrade deletes only the events whose task is gone, then adds the key back
    (``ON DELETE CASCADE``); upgrading again matches the models."""
    from sluice.domain import Submission
    from sluice.store.repository import TaskRepository

    def foreign_keys() -> list[tuple[str, str | None]]:
        return [
            (fk["referred_table"], fk["options"].get("ondelete"))
            for fk in inspect(engine).get_foreign_keys("task_events")
        ]

    def event_task_ids() -> list[int]:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT task_id FROM task_events ORDER BY id")).scalars())

    db.upgrade(engine, "0014_fair_share_units")
    ids = TaskRepository(engine).create_many([Submission("sandbox", "campaign")] * 3)
    assert foreign_keys() == [("tasks", "CASCADE")]

    db.upgrade(engine)
    assert foreign_keys() == []
    assert event_task_ids() == ids
    with engine.begin() as conn:  # the task goes without its event: nothing refuses now
        conn.execute(text("DELETE FROM tasks WHERE id = :id"), {"id": ids[1]})
    assert event_task_ids() == ids

    command.downgrade(db.alembic_config(engine), "0014_fair_share_units")
    assert event_task_ids() == [ids[0], ids[2]]
    assert foreign_keys() == [("tasks", "CASCADE")]

    db.upgrade(engine)
    assert schema_diff(engine) == []
    assert event_task_ids() == [ids[0], ids[2]]


def test_due_polls_revision_gives_existing_fair_share_rows_the_polls_turn(
    engine: Engine,
) -> None:
    """0016 adds ``fair_shares.polls_next`` (each key's turn across claims): rows written
    before it start with the polls' turn; its downgrade drops the column and keeps the
    rows; upgrading again matches the models."""

    def columns() -> list[str]:
        return [c["name"] for c in inspect(engine).get_columns("fair_shares")]

    db.upgrade(engine, "0015_events_without_fk")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO fair_shares (provider, fairness_key, vtime, weight, granted, "
                "prev_granted) VALUES ('sandbox', 'acme', 2.5, 1.0, 0, 0)"
            )
        )

    db.upgrade(engine)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT vtime, polls_next FROM fair_shares")).one()
    assert (float(row[0]), bool(row[1])) == (2.5, True)

    command.downgrade(db.alembic_config(engine), "0015_events_without_fk")
    assert "polls_next" not in columns()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM fair_shares")).scalar_one() == 1

    db.upgrade(engine)
    assert schema_diff(engine) == []


def test_a_database_newer_than_these_migrations_is_refused_naming_both_revisions(
    engine: Engine,
) -> None:
    """A database a newer release upgraded is refused in one line that names its revision
    and this release's newest, and is left as it is (no upgrade is tried)."""
    from alembic.script import ScriptDirectory

    from sluice import errors

    db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_newer'"))
    head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()

    with pytest.raises(errors.ConfigError) as refused:
        db.ensure_schema(engine)

    assert str(refused.value) == (
        "the database is at schema revision '0099_newer', which this Sluice does not have "
        f"(its newest is '{head}'): a newer release upgraded it. Run that release, or "
        "restore the backup taken before its upgrade (docs/deployment.md, Upgrading)"
    )
    assert db.current_revision(engine) == "0099_newer"


def test_an_upgrade_that_changes_the_schema_says_so_in_the_log(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Every process brings the database to its head when it starts: an API or a worker of a
    new release started before `sluice db upgrade` migrated a production database and said
    nothing. Each upgrade that changes the revision is one line, from and to; none at head."""
    import logging

    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()
    db.upgrade(engine, "0001")
    with caplog.at_level(logging.INFO, logger="sluice.store"):
        db.ensure_schema(engine)
        db.ensure_schema(engine)

    migrated = [r for r in caplog.records if r.getMessage() == "store.migrated"]
    assert [(r.__dict__["from_revision"], r.__dict__["to_revision"]) for r in migrated] == [
        ("0001", head)
    ]


HEAD = ScriptDirectory.from_config(db.alembic_config(create_engine("sqlite://"))).get_current_head()


def _first_release_with_tasks(engine: Engine, count: int) -> None:
    """The database at revision 0001 holding ``count`` tasks, each with its created event."""
    db.upgrade(engine, "0001")
    at = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tasks (id, provider, kind, status, phase, track_only, attempts, "
                "polls, created_at, updated_at) VALUES (:id, 'sandbox', 'campaign', "
                "'Not Started', 'ready', false, 0, 0, :at, :at)"
            ),
            [{"id": n, "at": at} for n in range(1, count + 1)],
        )
        conn.execute(
            text(
                "INSERT INTO task_events (task_id, at, event) SELECT id, :at, 'created' FROM tasks"
            ),
            {"at": at},
        )


def _db_upgrade(url: str) -> subprocess.Popen[str]:
    """`sluice db upgrade` on ``url`` in a process of its own."""
    env = {**os.environ, "SLUICE_DATABASE_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "sluice", "db", "upgrade"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _at_head_with(engine: Engine, count: int) -> None:
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM tasks")).scalar_one() == count
        assert conn.execute(text("SELECT COUNT(*) FROM task_events")).scalar_one() == count
    assert db.current_revision(engine) == HEAD
    assert schema_diff(engine) == []


def test_db_upgrade_run_by_several_processes_at_once_on_an_old_database(
    engine: Engine,
) -> None:
    """Three `sluice db upgrade` processes started together on a database of the first
    release (an operator's and two deploy hooks) all end well, and the data is whole: on
    PostgreSQL they queue on the advisory lock, on SQLite on the write lock; each one after
    the first finds the database at head."""
    _first_release_with_tasks(engine, 500)
    url = engine.url.render_as_string(hide_password=False)

    runs = [_db_upgrade(url) for _ in range(3)]
    outputs = [run.communicate(timeout=180)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    _at_head_with(engine, 500)


@pytest.mark.postgres
def test_db_upgrade_killed_mid_migration_leaves_the_old_schema_and_runs_again(
    postgres_url: str,
) -> None:
    """`sluice db upgrade` killed (SIGKILL) while it migrates leaves the database at the
    revision it had, data whole (the whole chain is one transaction), and running it
    again brings it to head. The test holds a lock on `tasks`, so that the migration is
    surely inside its transaction, waiting, when it is killed."""
    engine = db.make_engine(postgres_url)
    try:
        _first_release_with_tasks(engine, 200)
        blocker = engine.connect()
        blocker.execute(text("LOCK TABLE tasks IN ACCESS SHARE MODE"))
        run = _db_upgrade(postgres_url)
        deadline = time.monotonic() + 120
        waiting = 0
        while waiting == 0 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            with engine.connect() as conn:
                waiting = conn.execute(
                    text(
                        "SELECT COUNT(*) FROM pg_locks WHERE NOT granted "
                        "AND relation = 'tasks'::regclass"
                    )
                ).scalar_one()
        assert waiting, "the migration never reached the lock on tasks"
        run.kill()
        run.wait(timeout=30)
        blocker.rollback()
        blocker.close()
        # The killed migration's server backend ends its statement, finds its client
        # gone and rolls back; until then it holds the advisory lock.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                others = conn.execute(
                    text(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND pid <> pg_backend_pid() AND state <> 'idle'"
                    )
                ).scalar_one()
            if not others:
                break
            time.sleep(0.2)
        assert db.current_revision(engine) == "0001"

        again = _db_upgrade(postgres_url)
        output = again.communicate(timeout=180)[0]

        assert again.returncode == 0, output
        _at_head_with(engine, 200)
    finally:
        engine.dispose()
