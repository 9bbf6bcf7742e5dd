"""Celery glue, kept thin: ``sluice worker`` or ``celery -A sluice.celery_app worker --beat``.

One task: ``sluice.pump``, a bounded dispatch round in this worker process (see
:mod:`sluice.drivers.pump`; its dispatcher also reconciles stuck tasks). Beat sends
``SLUICE_PUMPS`` pumps every ``SLUICE_PUMP_S`` seconds, but only while fewer than that many
wait in the queue (:class:`PumpScheduler`), so the broker never holds more than a few short
messages whatever the backlog of tasks is.
Settings are read when Celery first configures the app, not at import. The pump's modules
are imported here, in the worker's main process, so that the prefork children share their
pages; each child builds its own runtime (connections, threads) at its first pump.
"""

from __future__ import annotations

import gc
import logging
import socket
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from celery import Celery, beat, signals
from kombu.transport import virtual

from sluice import errors, logs, masking, metrics_host, process_memory
from sluice.drivers.pump import pump_driver
from sluice.settings import Settings, load_settings
from sluice.store import db

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
PUMP = "sluice.pump"
QUEUE = "sluice"

log = logging.getLogger("sluice.beat")

app = Celery("sluice")


class PumpScheduler(beat.Scheduler):  # type: ignore[misc]
    """Celery's in-memory scheduler, sending a pump only while fewer pumps than
    ``SLUICE_PUMPS`` wait in the queue.

    This bounds the queue instead of an expiry: Celery turns ``expires`` into a time on
    beat's clock and each worker compares it with its own, so with beat's host 5 s behind
    the workers' (or a worker's ahead) every pump was discarded as expired and nothing was
    ever sent. The queue is counted on a connection of its own, kept open; a queue that
    cannot be counted (the broker down, RabbitMQ not having declared it yet) does not stop
    a send.

    A send that fails is logged with its traceback once per outage (``beat.send_failed``),
    then at DEBUG until one gets through again (``beat.send_recovered``, with how long
    sends failed). Celery's own ``apply_entry`` logged a traceback (and the whole stack)
    for every entry every ``SLUICE_PUMP_S``: a 44 s RabbitMQ restart wrote 280 of them,
    7,684 lines.
    """

    _counting: Any = None
    _failing_since: float | None = None

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if entry.task == PUMP and self._pumps_waiting() >= self._pumps():
            log.debug("beat.pump_skipped", extra={"entry": entry.name})
            return
        beat.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception as exc:
            self._send_failed(entry, exc)
            return
        if self._failing_since is not None:
            failed_s = round(time.monotonic() - self._failing_since, 1)
            self._failing_since = None
            log.info("beat.send_recovered", extra={"entry": entry.name, "failed_s": failed_s})

    def _send_failed(self, entry: Any, exc: Exception) -> None:
        fields = {"entry": entry.name, "error": logs.one_line(exc)}
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            # One traceback for the outage; the sends that fail after it are at DEBUG.
            log.error("beat.send_failed", exc_info=True, extra=fields)
        else:
            log.debug("beat.send_failed", extra=fields)

    def close(self) -> None:
        self._forget_counting()
        super().close()

    def _pumps(self) -> int:
        return sum(1 for entry in self.schedule.values() if entry.task == PUMP)

    def _pumps_waiting(self) -> int:
        channel = None
        try:
            if self._counting is None:
                # One try to connect: a broker that is down must not hold beat here.
                self._counting = self.app.connection_for_read(
                    connect_timeout=2, transport_options={"max_retries": 0}
                )
            channel = self._counting.default_channel
            _, waiting, _ = channel.queue_declare(QUEUE, passive=True)
            return int(waiting)
        except Exception:
            # A Redis broker's queue does not exist while it is empty: the refusal leaves
            # its (virtual) channel usable. Anything else starts a new connection next time.
            if not isinstance(channel, virtual.Channel):
                self._forget_counting()
            return 0

    def _forget_counting(self) -> None:
        if self._counting is not None:
            with suppress(Exception):
                self._counting.release()
            self._counting = None


BROKER_SOCKET_TIMEOUT_S = 10.0
"""How long a command to a Redis broker (a publish, an ack, beat's count of the queue) may
wait for its answer, and a connection attempt for the server."""
BROKER_HEALTH_CHECK_S = 10
"""Kombu's check of a Redis broker's long-lived connections: a consumer's BRPOP with no
answer for 1 s plus this long is dropped and made again (kombu's default is 25 s)."""
_TCP_OPTIONS = {
    "TCP_KEEPIDLE": 30,
    "TCP_KEEPINTVL": 10,
    "TCP_KEEPCNT": 3,
    "TCP_USER_TIMEOUT": 30_000,
}
"""The TCP settings the database's connections have too (:data:`sluice.store.db.POSTGRES_CONNECT`):
an idle connection whose server vanished is found dead about 40 s after it last heard from
it (the user timeout ends it at the second keepalive probe), one whose data goes
unacknowledged for 30 s at once. Each is set where the platform has it."""


def broker_transport_options(broker_url: str) -> dict[str, Any]:
    """Kombu's transport options for a Redis broker (none for RabbitMQ: py-amqp already
    sets TCP keepalives and a user timeout, and Celery sends heartbeats).

    Kombu's Redis transport waits for ever by default: a network partition between a
    worker or beat and the broker left their connections open, unanswered, for as long as
    the kernel retransmits (about 15 minutes); a beat waiting on a publish sent no pump,
    and it went on only when a retransmission after the partition got through (33 s after
    a 75 s partition healed, measured with ``harness.partitions``)."""
    if not broker_url.split("://", 1)[0].lower().startswith(("redis", "rediss", "sentinel")):
        return {}
    options = {
        getattr(socket, name): value
        for name, value in _TCP_OPTIONS.items()
        if hasattr(socket, name)
    }
    return {
        "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": BROKER_SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "socket_keepalive_options": options,
        "health_check_interval": BROKER_HEALTH_CHECK_S,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for Sluice's workers."""
    schedule = {
        f"sluice-pump-{n}": {"task": PUMP, "schedule": settings.pump_s, "args": (settings.pump_s,)}
        for n in range(settings.pumps)
    }
    return {
        "broker_url": settings.broker_url or DEFAULT_BROKER,
        "broker_connection_retry_on_startup": True,
        # Reconnect for as long as the broker is away. Celery's default gives up after 100
        # tries (the waits grow to 30 s: about 47 min), and a worker (or a beat started
        # while the broker was down) then ended with "Unrecoverable error" and exit code 0,
        # which a supervisor restarting on failure leaves stopped.
        "broker_connection_max_retries": None,
        "broker_transport_options": broker_transport_options(settings.broker_url or DEFAULT_BROKER),
        # No remote control (`celery inspect`/`control`, which Sluice does not use): on
        # RabbitMQ it is an exclusive queue per worker (NAME.celery.pidbox), and after a
        # partition the broker still held it for the old, dead connection, so the
        # worker's reconnect failed with RESOURCE_LOCKED and Celery ended the worker
        # ("Unrecoverable error"): every worker was gone once a 75 s partition healed.
        "worker_enable_remote_control": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        "beat_schedule": schedule,
        "worker_hijack_root_logger": False,
        # Beat keeps the schedule in memory: Celery's default kept it in a shelve file
        # (this was one path in the temp directory, shared by every deployment on a host and
        # unwritable to a second user). Nothing in it needs to outlive beat: every entry
        # recurs each pump_s, and a pump is sent only while the queue holds fewer than
        # SLUICE_PUMPS of them (no expiry: that compared two hosts' clocks).
        "beat_scheduler": "sluice.drivers.celery_app:PumpScheduler",
        "timezone": "UTC",
        "enable_utc": True,
    }


_passed: list[Settings] = []
"""The settings :func:`check_worker_settings` has passed in this process (at most one)."""


def check_worker_settings(settings: Settings) -> None:
    """Refuse to run a worker without the shared limiter's Redis, with a database URL or
    providers that its pool processes could not build (no provider is called), with a
    database a newer release upgraded (:func:`_check_schema`, one look), or that the
    broker turns away (:func:`check_broker_access`, one try to connect).

    Without the Redis every pool process built a limiter of its own, in memory: a worker
    with ``--concurrency 4`` sent four times each configured rate, and each quota's pace
    and ``max_in_flight`` held per process, not across them. The database and providers
    are read by each pool process at its first pump: a mistake there was a traceback in
    the log every pump, for ever, from a worker that looked started.

    It runs before Celery starts under `sluice worker` (so a mistake is one line, before
    Celery's banner) and at worker_init for `celery -A sluice.celery_app worker`. Under
    `sluice worker` both happen in one process: settings equal to ones that passed here
    already are not checked again (every provider was built twice, and each of its
    warnings logged twice).
    """
    if settings in _passed:
        return
    if not settings.redis_url:
        raise errors.ConfigError(
            "a worker needs SLUICE_REDIS_URL (the limiter every worker process shares); "
            "without it each process would keep limits of its own and send more than them"
        )
    from sluice.providers.registry import load_providers
    from sluice.runtime import with_default_providers

    _check_schema(settings.database_url)
    load_providers(with_default_providers(settings))
    check_broker_access(settings)
    _passed[:] = [settings]


def _check_schema(url: str) -> None:
    """ConfigError when the database is at a schema revision this release does not have (a
    newer release upgraded it): each pool process failed at its first pump, a traceback
    for every pump, for ever, from a worker that said it was ready. One look; a database
    that cannot be reached now is not refused (its pumps wait for it), and an SQLite file
    that does not exist yet is not created here."""
    engine = db.make_engine(url)
    try:
        path = db.sqlite_path(engine.url)
        if engine.dialect.name != "sqlite" or (path is not None and Path(path).exists()):
            db.check_known_revision(engine)
    except errors.StoreUnavailable as exc:
        log.debug("database.unreachable", extra={"error": logs.one_line(exc)})
    finally:
        engine.dispose()


BROKER_CHECK_TIMEOUT_S = 5.0


def check_broker_access(settings: Settings) -> None:
    """Refuse to run a worker or beat that the broker turns away: credentials it refuses
    (RabbitMQ's ``ACCESS_REFUSED``, Redis's ``WRONGPASS`` or ``NOAUTH``) or a virtual host
    the user may not open, or that does not exist (``NOT_ALLOWED``). One try to connect; a
    broker that is down or does not answer is not a refusal (Celery waits for it, and the
    worker starts when it is back).

    Celery takes a refusal for a lost connection: a worker tried again at once, five times
    a second ("Frequent restarts detected", a traceback each second), for ever, and took
    no pump (554 log lines in its first 26 s); beat ended on a traceback.
    """
    from amqp.exceptions import AccessRefused, NotAllowed
    from kombu.connection import Connection

    connection = Connection(  # type: ignore[no-untyped-call]
        settings.broker_url or DEFAULT_BROKER, connect_timeout=BROKER_CHECK_TIMEOUT_S
    )
    try:
        once = {"max_retries": 1, "interval_start": 0, "timeout": BROKER_CHECK_TIMEOUT_S}
        connection.ensure_connection(**once)  # type: ignore[no-untyped-call]
    except (AccessRefused, NotAllowed) as exc:
        raise errors.ConfigError(
            f"the broker refused the connection: {logs.one_line(exc)} "
            "(check SLUICE_BROKER_URL's user, password and virtual host)"
        ) from None
    except Exception as exc:
        refusal = _redis_refusal(exc)
        if refusal is not None:
            raise errors.ConfigError(
                f"the broker refused the connection: {refusal} "
                "(check SLUICE_BROKER_URL's user, password and database number)"
            ) from None
        # Down or unreachable: Celery retries until it is back.
        log.debug("broker.unreachable", extra={"error": logs.one_line(exc)})
    finally:
        connection.release()  # type: ignore[no-untyped-call]


def _redis_refusal(exc: BaseException) -> str | None:
    """A Redis broker's refusal behind kombu's ``OperationalError``, in one line: a wrong or
    missing password, an ACL user without the rights, a database number out of range. A
    worker took these for a lost connection too ("Cannot connect to redis://...: invalid
    username-password pair", every 2 s, for ever). None for anything else."""
    import redis.exceptions

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.exceptions.AuthenticationError | redis.exceptions.ResponseError):
            return logs.one_line(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _settings_or_exit(*, worker: bool = False) -> Settings:
    """The settings, or one line on stderr and exit code 2.

    Celery logs and swallows an exception raised by a signal's receiver and goes on: on
    its own defaults when configuring the app failed (`celery -A sluice.celery_app worker`
    consumed from amqp://guest@localhost).
    """
    try:
        settings = load_settings()
        if worker:
            check_worker_settings(settings)
    except errors.ConfigError as exc:
        sys.stderr.write(f"configuration error: {masking.mask(str(exc))}\n")
        raise SystemExit(2) from None
    return settings


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.conf.update(celery_config(_settings_or_exit()))


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _mask_logs(logger: Any, **_: Any) -> None:
    """Celery's own log handlers mask secrets too (URLs, passwords, tokens)."""
    logs.mask_handlers(logger)


@signals.worker_init.connect
def _import_database_driver(**_: Any) -> None:
    """The pool processes share the database driver's pages: imported here, before they
    are forked (each connects at its own first pump). They inherit the cap on malloc arenas
    too, before any of them starts its sending threads. A worker without the shared
    limiter stops here (:func:`check_worker_settings`)."""
    settings = _settings_or_exit(worker=True)
    process_memory.limit_malloc_arenas()
    db.import_driver(settings.database_url)


@signals.worker_before_create_process.connect
def _freeze_before_fork(**_: Any) -> None:
    """Move every object the main process holds so far out of the collector's reach before
    a pool process is forked: a collection walks (and so writes to) every object it
    tracks, which would copy each shared page into the process collecting, parent or child.
    Frozen objects are never collected; they are the imported modules and Celery's own
    state, which live as long as the process anyway."""
    gc.freeze()


@signals.worker_process_shutdown.connect
def _forget_in_flight(**_: Any) -> None:
    """A pool process is ending: its requests in flight no longer count in /metrics."""
    metrics_host.process_ended()


@app.task(name=PUMP)
def pump(seconds: float = 1.0) -> int:
    """Dispatch due work from this worker process for up to ``seconds``."""
    return pump_driver().pump(seconds)
