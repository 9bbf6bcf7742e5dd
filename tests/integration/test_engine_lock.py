"""One embedded engine per database: the SQLite file lock and the PostgreSQL advisory lock.

Two embedded engines on one database each pace the providers with a limiter of their own
and send twice the rate. On SQLite the engine lock was a file lock; on PostgreSQL there was
none: two `sluice up` without Redis both ran their engines.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from sluice.drivers import engine_lock
from sluice.drivers.engine_lock import AdvisoryLock, FileLock, holding
from sluice.errors import EngineLocked

DEADLINE_S = 60.0


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_second_engine_on_an_sqlite_file_is_refused_naming_the_first(tmp_path: Path) -> None:
    database = str(tmp_path / "sluice.db")
    first = FileLock(database, engine_lock.SUBMIT)
    assert first.acquire()
    try:
        with pytest.raises(EngineLocked) as refused, holding(FileLock(database, engine_lock.UP)):
            pytest.fail("a second engine started")
        message = str(refused.value)
        assert message.startswith("another sluice submit runs the engine on this database")
        assert f"lock {database}.engine.lock" in message
        assert refused.value.who.startswith("sluice submit (pid ")
    finally:
        first.release()
    with holding(FileLock(database, engine_lock.UP)):  # free once the first lets go
        pass


def test_no_lock_with_a_shared_limiter_or_an_in_memory_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sluice.db'}"
    assert engine_lock.engine_lock(url, "redis://127.0.0.1:6379/0", engine_lock.UP) is None
    assert engine_lock.engine_lock("sqlite://", None, engine_lock.UP) is None
    assert isinstance(engine_lock.engine_lock(url, None, engine_lock.UP), FileLock)


@pytest.mark.postgres
def test_a_second_engine_on_postgresql_is_refused_naming_the_first(postgres_url: str) -> None:
    lock = engine_lock.engine_lock(postgres_url, None, engine_lock.UP)
    assert isinstance(lock, AdvisoryLock)
    assert lock.acquire()
    try:
        second = AdvisoryLock(postgres_url, engine_lock.SUBMIT, None)
        with pytest.raises(EngineLocked) as refused, holding(second):
            pytest.fail("a second engine started")
        message = str(refused.value)
        assert message.startswith("another sluice up (pid "), message
        assert "runs the engine on this database (PostgreSQL backend " in message
        assert "pg_terminate_backend(" in message
        assert second._conn is None  # the refused one kept no connection
    finally:
        lock.release()
    other = AdvisoryLock(postgres_url, engine_lock.SUBMIT, None)
    with holding(other):  # free once the first lets go
        pass


def backend_holding(admin: sa.Engine) -> list[tuple[int, str]]:
    with admin.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND a.datname = current_database()"
            )
        ).all()
    return [(int(r[0]), str(r[1])) for r in rows]


@pytest.mark.postgres
def test_an_engine_takes_its_lock_again_after_its_connection_is_dropped(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL restart (here: its backend terminated) drops a session lock: the engine
    takes it again rather than leave the database open to a second engine."""
    monkeypatch.setattr(engine_lock, "WATCH_S", 0.2)
    lost: list[str] = []
    lock = AdvisoryLock(postgres_url, engine_lock.UP, lost.append)
    admin = sa.create_engine(postgres_url)
    assert lock.acquire()
    try:
        ((backend, name),) = backend_holding(admin)
        assert name.startswith("sluice up (pid ")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        wait_for(
            lambda: [b for b, _ in backend_holding(admin)] not in ([], [backend]),
            "the lock was not taken again",
        )
        assert not lost
        refused = AdvisoryLock(postgres_url, engine_lock.SUBMIT, None)
        assert not refused.acquire()
        refused.release()
    finally:
        lock.release()
        admin.dispose()


@pytest.mark.postgres
def test_an_engine_whose_lock_another_took_meanwhile_is_told_to_stop(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_lock, "WATCH_S", 0.5)
    lost: list[str] = []
    told = threading.Event()

    def on_lost(reason: str) -> None:
        lost.append(reason)
        told.set()

    lock = AdvisoryLock(postgres_url, engine_lock.UP, on_lost)
    admin = sa.create_engine(postgres_url)
    assert lock.acquire()
    other = AdvisoryLock(postgres_url, engine_lock.SUBMIT, None)
    try:
        ((backend, _),) = backend_holding(admin)
        # Held here, the first engine's watch cannot take the lock again before the other
        # engine has it (as when the other one reconnects first after a restart).
        with lock._guard:
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            wait_for(other.acquire, "the other engine never got the lock")
        assert told.wait(DEADLINE_S), "the first engine was never told"
        assert "took this database's engine lock" in lost[0]
        assert "sluice submit (pid " in lost[0]
        assert len(lost) == 1
    finally:
        other.release()
        lock.release()
        admin.dispose()
