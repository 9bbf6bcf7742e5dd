"""SQLite's WAL is checkpointed by a background thread, not by the commits themselves.

A commit that grows the WAL past SQLite's default 1,000 pages copies it back and syncs the
database file itself: the slowest single creates were those. With
:class:`sluice.store.db.WalCheckpoints` the commits checkpoint only past 20,000 pages and
a thread keeps the WAL short. Real SQLite files, real threads.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

from sqlalchemy import Engine, text

from sluice.store import db

ROWS = 1_500
FIRST = 300
PAGE = 4096


def fill(engine: Engine, rows: int) -> None:
    """``rows`` commits of one row each, about a page of WAL apiece, a millisecond apart
    (single creates arrive with gaps; a checkpoint that catches up with the last commit
    lets the next one restart the WAL from its head)."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)"))
    for n in range(rows):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": "x" * 200 + str(n)})
        time.sleep(0.001)


def wal_pages(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size // PAGE if wal.exists() else 0


def checkpointed_rows(path: Path) -> int:
    """The rows in the database file itself, read past the WAL (``immutable=1``): those a
    checkpoint has copied back. A read that races a checkpoint's writes counts as none."""
    try:
        with closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    except sqlite3.DatabaseError:
        return -1


def test_commits_leave_checkpoints_to_the_background_thread(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    engine = db.make_engine(f"sqlite:///{path}")
    checkpoints = db.WalCheckpoints(engine, every_s=0.02)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == (
                db.FOREGROUND_CHECKPOINT_PAGES
            )
        fill(engine, FIRST)
        grown = wal_pages(path)
        # Nobody but the thread checkpoints (the commits only past 20,000 pages): waiting
        # for the rows to reach the database file waits for the thread, however loaded
        # the host is, instead of betting on how far it got during the commits.
        deadline = time.monotonic() + 60
        while checkpointed_rows(path) != FIRST:
            assert time.monotonic() < deadline, "the thread never checkpointed the WAL"
            time.sleep(0.05)
        # Caught up, so the next commit restarts the WAL from its head instead of
        # appending to it: the file is no longer than it was.
        fill(engine, 1)
        assert wal_pages(path) == grown
    finally:
        checkpoints.close()
        engine.dispose()


def test_a_thread_that_opens_the_file_first_still_checkpoints(tmp_path: Path) -> None:
    """The thread's connection opens a new database before the engine's first connection
    switches it to WAL (on a loaded host the thread can win that race): its checkpoints
    must still reach the WAL. Before, they were no-ops for the life of the process (the
    connection never read the file, so never learnt it was in WAL mode)."""
    path = tmp_path / "c.db"
    engine = db.make_engine(f"sqlite:///{path}")
    checkpoints = db.WalCheckpoints(engine, every_s=0.02)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():  # the thread's connection creates the file
            assert time.monotonic() < deadline, "the thread never opened the database"
            time.sleep(0.01)
        fill(engine, FIRST)
        while checkpointed_rows(path) != FIRST:
            assert time.monotonic() < deadline + 60, "the thread never checkpointed the WAL"
            time.sleep(0.05)
    finally:
        checkpoints.close()
        engine.dispose()


def test_without_the_thread_the_wal_would_hold_the_whole_run(tmp_path: Path) -> None:
    """The control: the same commits, thread stopped, commits checkpointing only at the
    raised threshold: the WAL grows by a page or more per commit."""
    path = tmp_path / "c.db"
    engine = db.make_engine(f"sqlite:///{path}")
    checkpoints = db.WalCheckpoints(engine, every_s=0.02)
    checkpoints.close()
    try:
        fill(engine, ROWS)
        assert wal_pages(path) >= ROWS
    finally:
        engine.dispose()


def test_close_stops_the_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    engine = db.make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    checkpoints = db.WalCheckpoints(engine, every_s=0.01)
    started = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in started] == ["sluice-wal-checkpoints"]

    checkpoints.close()

    assert not started[0].is_alive()
    engine.dispose()
