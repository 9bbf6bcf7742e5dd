"""One embedded engine per database: the lock an embedded engine holds while it sends.

An embedded engine (``sluice up``, ``sluice submit`` without ``--api``) paces each provider
with a limiter in its own memory: two of them on one database send twice the rate (with a
20/s sandbox, 22 calls in a second and 31 creates refused). So an engine holds a lock on
its database while it runs, and a second one does not start. With ``SLUICE_REDIS_URL`` the
limiter is shared, engines may run side by side, and no lock is taken.

* **SQLite**: ``<database file>.engine.lock``, a kernel ``flock``. It goes with the
  process, even one killed with SIGKILL, so a restart is never refused. The file holds the
  holder's pid and command, for the refusal.
* **PostgreSQL**: a session advisory lock, held on a connection of its own (its
  ``application_name`` names the holder's command, pid and host, for the refusal). It goes
  when the connection does: at once when the process ends, and when PostgreSQL notices a
  vanished host (its TCP keepalives). A PostgreSQL restart drops it too, so a watch thread
  pings the connection every :data:`WATCH_S` and takes the lock again once the server is
  back; if another engine took it meanwhile, the watch calls ``on_lost`` (the caller stops
  its engine) and gives up.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text

from sluice import errors
from sluice.store import db

log = logging.getLogger("sluice.driver")

UP = "sluice up"
SUBMIT = "sluice submit"

ADVISORY_KEY = 0x736C_7569_6365_0001
"""The PostgreSQL advisory lock's key ("sluice" and 1): one per database."""
WATCH_S = 2.0
"""How often the PostgreSQL lock's connection is checked (and the lock taken again)."""
APPLICATION_NAME_MAX = 63  # PostgreSQL truncates longer names


class EngineLock(Protocol):
    """What both locks offer: take it without waiting, say who holds it, give it back."""

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; whether this process now holds it."""

    def refusal(self) -> errors.EngineLocked:
        """The error naming the holder (after :meth:`acquire` returned False)."""

    def release(self) -> None:
        """Give the lock back (nothing if it was not taken)."""


def engine_lock(
    database_url: str,
    redis_url: str | None,
    role: str,
    on_lost: Callable[[str], None] | None = None,
) -> EngineLock | None:
    """The lock an embedded engine on ``database_url`` must hold, or None when none is
    needed: a shared limiter (``redis_url``), or an in-memory SQLite database."""
    if redis_url:
        return None
    path = db.sqlite_path(db.parse_url(database_url))
    if path is not None:
        return FileLock(path, role)
    if db.parse_url(database_url).get_backend_name() == "postgresql":
        return AdvisoryLock(database_url, role, on_lost)
    return None


def holder_is_gone(lock: EngineLock | None) -> bool:
    """Whether holding ``lock`` proves that no other engine still works on the database:
    then every claim found there is a dead engine's, to recover at once.

    A ``flock`` is let go only when its process ends (or gives it back after stopping its
    engine cleanly). A PostgreSQL advisory lock is not such proof: it goes with its
    connection, which a server restart drops while its engine still runs for up to
    :data:`WATCH_S`, so its claims are left to their lease.
    """
    return isinstance(lock, FileLock)


@contextmanager
def holding(lock: EngineLock | None) -> Iterator[None]:
    """Hold ``lock`` (if any) for the block, or raise :class:`errors.EngineLocked`."""
    if lock is None:
        yield
        return
    if not lock.acquire():
        refusal = lock.refusal()
        lock.release()
        raise refusal
    try:
        yield
    finally:
        lock.release()


class FileLock:
    """``<path>.engine.lock``, a kernel ``flock`` (the file need not exist yet)."""

    def __init__(self, path: str, role: str) -> None:
        self.path = Path(f"{path}.engine.lock")
        self.role = role
        self._handle: IO[str] | None = None

    def acquire(self) -> bool:
        if self._handle is not None:
            return True
        try:
            handle = self.path.open("a+")
        except OSError as exc:
            raise errors.StoreUnavailable(
                f"cannot open {self.path}: {exc.strerror or exc}", str(self.path)
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {self.role}\n")
        handle.flush()
        self._handle = handle
        return True

    def refusal(self) -> errors.EngineLocked:
        try:
            pid, _, role = self.path.read_text().strip().partition(" ")
        except OSError:
            pid, role = "", ""
        # A lock file written before the command was recorded holds the pid alone.
        role, pid = role or UP, pid or "?"
        return errors.EngineLocked(role, f"pid {pid}, lock {self.path}", f"{role} (pid {pid})")

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file lets the flock go
            self._handle = None


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection of its own, watched."""

    def __init__(self, database_url: str, role: str, on_lost: Callable[[str], None] | None) -> None:
        self.database_url = database_url
        self.role = role
        self.on_lost = on_lost
        self.name = f"{role} (pid {os.getpid()} on {socket.gethostname()})"[:APPLICATION_NAME_MAX]
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._held = False
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def acquire(self) -> bool:
        with self._guard:
            if not self._held:
                self._held = self._take()
            if self._held and self._watch is None:
                self._watch = threading.Thread(
                    target=self._watch_loop, name="sluice-engine-lock", daemon=True
                )
                self._watch.start()
            return self._held

    def _take(self) -> bool:
        """Connect if need be and try for the lock (under ``_guard``)."""
        if self._engine is None:
            self._engine = db.make_engine(
                self.database_url, pool_size=1, max_overflow=0, pool_pre_ping=False
            )
        if self._conn is None:
            self._conn = self._engine.connect()
            self._conn.execute(
                text("SELECT set_config('application_name', :name, false)"), {"name": self.name}
            )
        taken = bool(
            self._conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}
            ).scalar_one()
        )
        self._conn.commit()  # the lock is the session's: not left idle in a transaction
        return taken

    def refusal(self) -> errors.EngineLocked:
        with self._guard:
            holder = self._holder()
        if holder is None:  # let go meanwhile
            return errors.EngineLocked(
                "engine", "it stopped while this one started: try again", "?"
            )
        backend, name = holder
        name = name or "process"
        return errors.EngineLocked(
            name,
            f"PostgreSQL backend {backend}; if that process is gone, its lock goes when "
            f"PostgreSQL drops its connection: SELECT pg_terminate_backend({backend})",
            name,
        )

    def _holder(self) -> tuple[int, str] | None:
        """The backend pid and application name holding the lock (under ``_guard``)."""
        assert self._conn is not None
        row = self._conn.execute(
            text(
                """
                SELECT a.pid, a.application_name
                FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND l.classid::bigint = :high AND l.objid::bigint = :low AND l.objsubid = 1
                """
            ),
            {"high": ADVISORY_KEY >> 32, "low": ADVISORY_KEY & 0xFFFF_FFFF},
        ).first()
        self._conn.commit()
        return None if row is None else (int(row[0]), str(row[1] or ""))

    def _watch_loop(self) -> None:
        """Ping the lock's connection; after losing it, take the lock again or give up."""
        while not self._stop.wait(WATCH_S):
            with self._guard:
                if self._stop.is_set():
                    return
                try:
                    if self._conn is not None:
                        self._conn.execute(text("SELECT 1"))
                        self._conn.commit()
                        continue
                    if self._take():
                        self._held = True
                        log.warning("engine.lock_retaken", extra={"holder": self.name})
                        continue
                    holder = self._holder()
                except Exception as exc:
                    if not db.transient(exc) and not isinstance(exc, errors.StoreUnavailable):
                        log.warning("engine.lock_check_failed", exc_info=True)
                    self._drop_connection()
                    self._held = False
                    continue
                self._held = False
                self._drop_connection()
            message = (
                f"another engine ({holder[1] if holder else 'unknown'}) took this database's "
                "engine lock while this process's connection was down; this process stops "
                "its engine"
            )
            log.error("engine.lock_lost", extra={"reason": message})
            if self.on_lost is not None:
                self.on_lost(message)
            return

    def _drop_connection(self) -> None:
        """Forget a broken connection (under ``_guard``); the next try makes a new one."""
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:
                log.debug("engine.lock_close_failed", exc_info=True)
            self._conn = None

    def release(self) -> None:
        self._stop.set()
        with self._guard:
            if self._conn is not None and self._held:
                try:
                    self._conn.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY}
                    )
                    self._conn.commit()
                except Exception:  # the connection's end lets it go anyway
                    log.debug("engine.lock_unlock_failed", exc_info=True)
            self._held = False
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(timeout=WATCH_S * 2)
