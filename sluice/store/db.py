"""Engines and schema management: SQLite (WAL, foreign keys) or PostgreSQL (psycopg 3)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from sluice import errors, masking

log = logging.getLogger("sluice.store")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _credentials(url: str) -> tuple[str, str, str] | None:
    """(what comes before the password, the password, what follows) of ``url``, or None.

    Plain string work, so that it also serves URLs SQLAlchemy cannot parse.
    """
    scheme, sep, rest = url.partition("://")
    address, query_sep, query = rest.partition("?")
    userinfo, at, host = address.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return None
    user, password = userinfo.split(":", 1)
    return f"{scheme}://{user}:", password, f"@{host}{query_sep}{query}"


def mask_url(url: str) -> str:
    """``url`` with its password shown as ``***``, even when the URL does not parse.

    ``postgresql://user:secret@host/db`` becomes ``postgresql://user:***@host/db``.
    """
    parts = _credentials(url)
    # A '?' in the password hides the '@' from _credentials: the log masking's pattern
    # then finds it (it runs to the last '@').
    return masking.mask_urls(url) if parts is None else f"{parts[0]}***{parts[2]}"


def scheme_of(url: str) -> str:
    """How an unusable URL is named in errors: its scheme only, never the rest."""
    scheme, sep, _ = url.partition("://")
    if sep and scheme and len(scheme) <= 32 and all(c.isalnum() or c in "+.-" for c in scheme):
        return f"{scheme}://..."
    return "no scheme://"


def _parse_problem(exc: Exception) -> str:
    """Why a URL did not parse, in words that quote nothing of it."""
    if "int()" in str(exc):
        return "its port is not a number"
    return "it does not parse"


def scrub(message: str, secret: str | None) -> str:
    """``message`` with ``secret`` (and its URL-encoded form) replaced by ``***``."""
    if not secret:
        return message
    for form in {secret, quote(secret, safe="")}:
        message = message.replace(form, "***")
    return message


def import_driver(url: str) -> None:
    """Import the DB-API driver ``url`` would connect with, without connecting.

    A worker's main process calls this before it forks its pool, so that the pool
    processes share the driver's pages instead of each importing a copy at its first
    pump. A URL that names no known driver is left for :func:`make_engine` to reject.
    """
    with suppress(Exception):
        make_url(normalise_url(url)).get_dialect().import_dbapi()


def parse_url(given: str) -> URL:
    """``given`` (a database URL as configured) parsed, or ConfigError in one line that
    quotes none of it."""
    # Its password is then masked in every log line of this process.
    masking.remember_url(given)
    try:
        return make_url(normalise_url(given))
    except Exception as exc:
        # Named by its scheme only, with a reason of our own: SQLAlchemy's quotes the part
        # it choked on, which may be a piece of the password (a URL without a scheme is
        # not recognised as one, so masking cannot find its password either).
        raise errors.ConfigError(
            f"database_url ({scheme_of(given)}) is not a database URL: {_parse_problem(exc)}; "
            "expected postgresql://user:password@host:5432/name or sqlite:///path.db"
        ) from None


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the per-backend settings Sluice relies on.

    A database that cannot be reached raises :class:`errors.StoreUnavailable` (one line,
    password masked) from any use of the engine, instead of a driver error.
    """
    given, url = url, normalise_url(url)
    parsed = parse_url(given)
    parts = _credentials(given)
    if parts is not None and parsed.password is not None and parsed.password != unquote(parts[1]):
        # An unencoded '@' in the password: SQLAlchemy would take the rest as the host and
        # name it in every connection error.
        raise errors.ConfigError(
            f"database_url ({scheme_of(given)}): its password holds an '@' that is not "
            "percent-encoded; write it as %40"
        )
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            **kwargs,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take it over so writers
        # serialise with BEGIN IMMEDIATE instead of failing on lock upgrades. A reading
        # connection (:func:`reading`) begins deferred: under WAL it reads a snapshot and
        # never waits for the writer.
        event.listen(engine, "begin", _sqlite_begin)
    elif backend == "postgresql":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("poolclass", _pool_class(mask_url(given)))
        # The URL's own libpq parameters (?connect_timeout=30) win over these defaults.
        defaults = {k: v for k, v in POSTGRES_CONNECT.items() if k not in parsed.query}
        kwargs["connect_args"] = {**defaults, **kwargs.get("connect_args", {})}
        engine = create_engine(url, **kwargs)
        settings = _server_tcp_settings({**parsed.query, **kwargs["connect_args"]})
        if settings:
            event.listen(engine, "connect", _set_server_tcp(settings))
    else:
        raise errors.ConfigError(
            f"database_url backend {backend!r} is not supported; "
            "use sqlite:///path.db or postgresql://..."
        )
    event.listen(engine, "handle_error", _unavailable_translator(mask_url(given), parsed.password))
    return engine


def _pool_class(where: str) -> type[QueuePool]:
    """A QueuePool whose wait for a free connection, timed out, is StoreUnavailable.

    While the database's host is cut off, every request waiting on it holds a pooled
    connection for 10-40 s (the TCP settings below); once all are held, the next one waits
    ``pool_timeout`` (30 s) and SQLAlchemy raised its own ``TimeoutError``, which the API
    answered 500 with a traceback in its log (measured on a partition with 96 clients),
    and which :func:`transient` did not know. Now it is the outage it is: a 503 with
    ``Retry-After`` from the API, one line from a command, a retry in the engine.
    """

    class WaitedPool(QueuePool):
        # SQLAlchemy names a pool's logger after its class: keep QueuePool's (under
        # sluice.* its INFO records of invalidated connections joined the API's log).
        _sqla_logger_namespace = "sqlalchemy.pool.impl.QueuePool"

        def _do_get(self) -> Any:
            try:
                return super()._do_get()
            except PoolTimeout:
                raise errors.StoreUnavailable(
                    f"no free connection within {self.timeout():g} s: all "
                    f"{self.size() + max(self._max_overflow, 0)} of this process's "
                    "connections to it are in use",
                    where,
                ) from None

    return WaitedPool


def _unavailable_translator(
    where: str, password: str | None
) -> Callable[[ExceptionContext], BaseException | None]:
    """A ``handle_error`` hook: lost or refused connections, and an SQLite file that cannot
    be written right now (locked past the busy timeout, read-only, full), become
    StoreUnavailable: a 503 from the API, one line from a command, a retry in the engine."""

    def translate(context: ExceptionContext) -> BaseException | None:
        # A failed pre-ping must stay SQLAlchemy's: the pool then reconnects quietly.
        if context.is_pre_ping:
            return None
        connecting = context.connection is None
        if not (connecting or context.is_disconnect or _sqlite_file_refused(context)):
            return None
        lines = str(context.original_exception).strip().splitlines()
        reason = scrub(lines[0] if lines else type(context.original_exception).__name__, password)
        return errors.StoreUnavailable(reason, where)

    return translate


SQLITE_FILE_REFUSALS = (
    "database is locked",
    "database table is locked",
    "attempt to write a readonly database",
    "database or disk is full",
    "disk i/o error",
    "unable to open database file",
)
"""SQLite's answers when its file cannot be used right now (another process holds the write
lock past the busy timeout; the file, its folder or the disk refuses writes). Each is a
state of the file an operator can end, not a mistake in the statement: like a database
that is down, the API answers 503 and the engine tries again."""


def _sqlite_file_refused(context: ExceptionContext) -> bool:
    if context.dialect.name != "sqlite":
        return False
    if not isinstance(context.sqlalchemy_exception, OperationalError):
        return False
    message = str(context.original_exception).strip().lower()
    return message.startswith(SQLITE_FILE_REFUSALS)


POSTGRES_CONNECT: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
"""libpq's connection parameters, where the URL sets none of its own. A connection attempt
gives up after 10 s (psycopg's own default is 130 s: a server that accepts connections
but does not answer, or a host that drops packets, held every command, each of the
engine's reconnects and the API's new connections that long); an
idle connection whose server vanished is found dead about 40 s after it last heard from it
(a keepalive probe from 30 s of silence; ``tcp_user_timeout`` then ends it at the next probe,
10 s later, rather than after the three: 40.7 s measured on a dropped-packet partition), one
whose request goes unacknowledged for 30 s at once (``tcp_user_timeout``), instead of the
kernel's two hours and fifteen minutes. None of them ends a request to a server that is up
but stalled (the kernel still acknowledges): that waits for the server."""

SERVER_TCP_SETTINGS = {
    "keepalives_idle": "tcp_keepalives_idle",
    "keepalives_interval": "tcp_keepalives_interval",
    "keepalives_count": "tcp_keepalives_count",
    "tcp_user_timeout": "tcp_user_timeout",
}
"""Each connection's TCP settings (libpq's names) and the server's settings of the same
meaning for its end of the connection, which every session may set for itself."""


def _server_tcp_settings(client: dict[str, Any]) -> dict[str, str]:
    """The server's TCP settings for a session whose client end has ``client`` (the URL's
    libpq parameters and the connect arguments, :data:`POSTGRES_CONNECT` by default)."""

    def one(value: Any) -> str:
        return str(value[-1] if isinstance(value, tuple | list) else value)

    keepalives = one(client.get("keepalives", 1)) != "0"
    return {
        server: one(client[name])
        for name, server in SERVER_TCP_SETTINGS.items()
        if name in client and (keepalives or name == "tcp_user_timeout")
    }


def _set_server_tcp(settings: dict[str, str]) -> Callable[[Any, Any], None]:
    """A ``connect`` hook: the server's end of each new connection gives up on a vanished
    client as soon as the client's end gives up on the server.

    Without it a network partition left the server's end open for the kernel's default
    (keepalives after two hours of silence): every session of a partitioned worker stayed
    on the server (15 of them after two partitions, measured with ``harness.partitions``)
    counting against ``max_connections``, and one caught in a transaction kept its row
    locks. Settings the server does not know (``tcp_user_timeout`` before PostgreSQL 12)
    are skipped; ``set_config`` goes through a connection pooler where a startup option
    would be refused."""
    rows = ", ".join("(%s, %s)" for _ in settings)
    query = (
        f"SELECT set_config(s.name, v.value, false) FROM (VALUES {rows}) AS v(name, value)"
        " JOIN pg_settings AS s ON s.name = v.name"
    )
    params = [word for pair in settings.items() for word in pair]

    def apply(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(query, params)
        dbapi_connection.commit()

    return apply


TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "53300"})
"""PostgreSQL's errors of the moment: a serialization failure, a deadlock, a lock not
available, a statement cancelled (a timeout), too many connections."""
TRANSIENT_SQLSTATE_CLASSES = ("08", "57P")
"""... and whole classes: connection exceptions, a server shutting down or starting."""
SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long an SQLite connection waits for another process's write lock before it gives up
("database is locked")."""
TRANSIENT_SQLITE = ("database is locked", "database table is locked", "busy")


def transient(exc: BaseException) -> bool:
    """Whether the same transaction, begun again, may succeed: the database was unreachable
    or the connection lost (:class:`errors.StoreUnavailable`), or the server gave up on it
    for a reason of the moment (a deadlock or serialization failure on PostgreSQL, a server
    shutting down; on SQLite, a file locked past the busy timeout, read-only or full, which
    :func:`make_engine` raises as StoreUnavailable). A constraint, a bad statement or a
    missing table is not: SQLite raises those as ``OperationalError`` too, so the class
    alone does not tell."""
    if isinstance(exc, errors.StoreUnavailable):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith(TRANSIENT_SQLSTATE_CLASSES)
    message = str(exc.orig).lower()
    return any(sign in message for sign in TRANSIENT_SQLITE)


WAL_CHECKPOINT_S = 0.5
"""How often a long-lived process checkpoints an SQLite WAL in the background."""
FOREGROUND_CHECKPOINT_PAGES = 20_000
"""The WAL size (pages of 4 KiB: 80 MiB) at which a commit checkpoints anyway, should the
background thread fall behind or stop (SQLite's default is 1,000)."""


class WalCheckpoints:
    """SQLite WAL checkpoints on a thread of their own, off the committing requests.

    By default the commit that grows the WAL past 1,000 pages copies it back into the
    database file and syncs it (``synchronous=NORMAL`` syncs only there): with ~20 pages
    per create, one create in 50 paid that, and those were the slowest single creates
    (docs/scaling.md, Ingest). Here a daemon thread runs a ``PASSIVE`` checkpoint (it never
    waits for, nor blocks, readers or the writer) every :data:`WAL_CHECKPOINT_S`, and the
    engine's connections only checkpoint themselves past
    :data:`FOREGROUND_CHECKPOINT_PAGES`. A checkpoint that catches up with the last commit
    lets the next commit restart the WAL from its head; under an unbroken stream of commits
    (a bulk import) it cannot catch up, and the WAL grows until a gap or that threshold.
    Create it before the engine's first connection; :meth:`close` stops the thread. A no-op
    on other databases.
    """

    def __init__(self, engine: Engine, every_s: float = WAL_CHECKPOINT_S) -> None:
        self._engine = engine
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if engine.dialect.name != "sqlite":
            return
        event.listen(engine, "connect", _fewer_foreground_checkpoints)
        self._thread = threading.Thread(
            target=self._run, name="sluice-wal-checkpoints", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        # A connection of its own, outside the engine's pool: it never takes a pooled
        # connection from a request.
        database = self._engine.url.database
        if not database or database == ":memory:":
            return
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self._every_s):
                try:
                    if conn is None:
                        conn = sqlite3.connect(database, isolation_level=None)
                    _, wal_frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if wal_frames == -1:
                        # Not in WAL mode to this connection: it opened the file before the
                        # engine switched it to WAL (a thread that won the race on a new
                        # database), and a checkpoint reads nothing, so it never finds out.
                        # A read of the schema opens the WAL for the next checkpoint.
                        conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
                except sqlite3.Error:
                    # A busy or missing file: the commits' own checkpoints bound the WAL.
                    log.debug("wal_checkpoint_failed", exc_info=True)
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _fewer_foreground_checkpoints(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA wal_autocheckpoint={FOREGROUND_CHECKPOINT_PAGES}")
    cursor.close()


READ_ONLY = "sluice_read_only"
"""Execution option of a connection that only reads (:func:`reading`)."""


def _sqlite_begin(conn: Connection) -> None:
    read_only = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only: on SQLite its transaction begins deferred, so it never
    queues behind the writer for the write lock (``BEGIN IMMEDIATE`` sleeps in SQLite's
    busy handler, 1, 2, 5, 10... ms at a time, while the outcome writer commits). A write
    on it may fail with "database is locked": write through ``engine.begin()``."""
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        yield conn


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # autocommit at the driver; SQLAlchemy issues BEGIN
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={round(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


@contextmanager
def sqlite_foreign_keys_off(connection: Connection) -> Iterator[None]:
    """Foreign keys off on this SQLite connection (outside any transaction) until exit.

    Alembic changes a constraint on SQLite by copying the table and dropping the old one;
    with foreign keys on, that drop would cascade to ``task_events`` or be refused. The
    pragma only takes effect outside a transaction, so it goes to the driver directly.
    Call :func:`check_foreign_keys` before committing.
    """
    driver = connection.connection.driver_connection
    if driver is None:
        raise errors.StoreError("the SQLite connection is closed")
    driver.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        driver.execute("PRAGMA foreign_keys=ON")


def check_foreign_keys(connection: Connection) -> None:
    """Refuse (roll back) a SQLite migration that left a row pointing nowhere."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise errors.StoreError(f"a migration left {len(broken)} broken foreign key(s)")


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
    starting at once on a fresh database do not race to create the same tables. A revision
    Alembic cannot resolve (``nope``, ``-1`` on a fresh database) is InvalidValue naming it.
    """
    cfg = alembic_config(engine)
    before = check_known_revision(engine)
    try:
        if engine.dialect.name != "postgresql":
            command.upgrade(cfg, revision)
        else:
            with engine.begin() as connection:
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID}
                )
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, revision)
    except CommandError as exc:
        raise errors.InvalidValue(f"no migration {revision!r}: {exc}") from None
    after = current_revision(engine)
    if after != before:
        # Every process (API, worker, status...) upgrades at start, not only `sluice db
        # upgrade`: one that does so says it, so a migration never goes unseen.
        log.info("store.migrated", extra={"from_revision": before, "to_revision": after})


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None before the first)."""
    with reading(engine) as connection:
        revision: str | None = MigrationContext.configure(connection).get_current_revision()
        return revision


def check_known_revision(engine: Engine) -> str | None:
    """The revision the database is at (None before the first), or ConfigError when these
    migrations do not have it: a newer release upgraded the database. Alembic's own
    answer was "no migration 'head': Can't locate revision identified by ...", which
    reads as a mistyped argument."""
    current = current_revision(engine)
    if current is None:
        return None
    script = ScriptDirectory.from_config(alembic_config(engine))
    try:
        script.get_revision(current)
    except CommandError:
        raise errors.ConfigError(
            f"the database is at schema revision {current!r}, which this Sluice does not "
            f"have (its newest is {script.get_current_head()!r}): a newer release upgraded "
            "it. Run that release, or restore the backup taken before its upgrade "
            "(docs/deployment.md, Upgrading)"
        ) from None
    return current


def ensure_schema(engine: Engine) -> None:
    """Upgrade to head; cheap when already there."""
    upgrade(engine)


def require_schema(engine: Engine) -> None:
    """For the commands that read or change what a running Sluice holds (status, keys,
    audit, explain, rates, pause, pin...): a database at this release's head is used as
    it is, an empty one is given the schema, and one at an older revision is refused with
    ConfigError asking for `sluice db upgrade`. They used to upgrade it: a newer release's
    `sluice status` run against production migrated the database under the older
    release's processes, unasked (docs/deployment.md, Upgrading)."""
    current = check_known_revision(engine)
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if current is None:
        upgrade(engine)
    elif current != head:
        raise errors.ConfigError(
            f"the database is at schema revision {current!r}, older than this Sluice's "
            f"{head!r}: run `sluice db upgrade` first, with every process of the older "
            "release stopped (docs/deployment.md, Upgrading)"
        )


def check_writable(engine: Engine) -> None:
    """StoreUnavailable when an SQLite file refuses writes (read-only file or mount): a
    process that writes would otherwise start, serve reads, and fail every write and every
    step of its engine in the log. The probe changes nothing and is rolled back."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        transaction.rollback()


def sqlite_path(url: str | URL) -> str | None:
    """The absolute path of the SQLite file ``url`` names (None for PostgreSQL or an
    in-memory database)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        return None
    name = parsed.database or ""
    if name.startswith("file:"):
        name = name.removeprefix("file:").split("?", 1)[0]
    if name in {"", ":memory:"} or "mode=memory" in str(parsed):
        return None
    return str(Path(name).resolve())


def require_existing(url: str) -> None:
    """SluiceError when ``url`` names an SQLite file that does not exist. Commands that
    read or change what a running Sluice holds (status, explain, a pause) would otherwise
    create and migrate an empty database there, answer from it ("no such task", "paused")
    and leave a stray file: a wrong folder or a typo went unnoticed."""
    # Parsed as make_engine parses it: SLUICE_DATABASE_URL=garbage was a traceback of
    # SQLAlchemy's ArgumentError from sluice status, audit, keys list, explain, pause...
    path = sqlite_path(parse_url(url))
    if path is not None and not Path(path).exists():
        raise errors.SluiceError(
            f"no database at {path} (SLUICE_DATABASE_URL names a file that does not exist; "
            "sluice up, sluice api or sluice db upgrade creates it)"
        )


def has_schema(engine: Engine) -> bool:
    return inspect(engine).has_table("tasks")
