"""The ``sluice`` command line: thin commands over the service functions.

Each command imports what it runs when it runs, so ``sluice worker`` (and the Celery worker
processes it forks) never load the API, FastAPI or the sandbox.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from sluice import errors, logs, masking, process_memory
from sluice.domain import MAX_ID
from sluice.settings import load_settings

SANDBOX_HELP = "Run the sandbox DSP (a simulated third-party API)."


class _Commands(TyperGroup):
    """The commands, with ``sandbox`` built only when asked for (it imports FastAPI), and
    Click's usage errors translated where they arise, for :func:`main` to say in one line.

    Typer prints a usage error itself, as a box of five lines or more, unless it is handed
    on: the top command's parsing (``make_context``) and its invocation (which parses and
    runs every subcommand, nested groups included) are the two places one can arise.
    """

    # Typer's Context and Command types are its vendored Click's; Any keeps this seam small.
    def list_commands(self, ctx: Any) -> list[str]:
        return sorted({*super().list_commands(ctx), "sandbox"})

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name == "sandbox" and cmd_name not in self.commands:
            from sluice.sandbox.cli import sandbox_command

            single = typer.Typer()
            single.command("sandbox", help=SANDBOX_HELP)(sandbox_command)
            self.add_command(typer.main.get_command(single), "sandbox")
        return super().get_command(ctx, cmd_name)

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        with _usage_errors_translated():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _usage_errors_translated():
            return super().invoke(ctx)


USAGE_EXIT_CODE = 2
"""Click's exit code for a command line that does not parse (its ``UsageError``)."""


@contextmanager
def _usage_errors_translated() -> Iterator[None]:
    """Click's usage errors raised inside as :class:`errors.UsageError`, in one line.

    Typer vendors Click and exports none of its usage errors but ``BadParameter``; its
    maintainers ask that ``typer._click`` not be imported. So a usage error is known by
    what Click documents of it: a ``ClickException`` (Typer's ``TyperException``) with exit
    code 2, whose context, when Click attached one, names the command. A group given no
    command keeps its help page (Click's ``NoArgsIsHelpError``, known by name as Typer
    itself knows it).
    """
    try:
        yield
    except typer.TyperException as exc:
        if exc.exit_code != USAGE_EXIT_CODE or type(exc).__name__ == "NoArgsIsHelpError":
            raise
        raise _usage_error(exc.format_message(), getattr(exc, "ctx", None)) from None


def _usage_error(message: str, ctx: Any) -> errors.UsageError:
    """Click's ``message`` as one line, with where the help of ``ctx``'s command is.

    ``sluice submit --bogus`` gives ``no such option: --bogus (see 'sluice submit
    --help')``, which :func:`main` says for ``sluice submit``.
    """
    lines = [line.strip() for line in message.splitlines()]
    problem = "; ".join(line for line in lines if line).removesuffix(".")
    if problem[:1].isupper() and problem[1:2].islower():  # "No such option", not "URL"
        problem = problem[0].lower() + problem[1:]
    if ctx is None:
        return errors.UsageError(problem, "sluice")
    if ctx.command.get_help_option(ctx) is not None:
        problem += f" (see '{ctx.command_path} {ctx.help_option_names[0]}')"
    return errors.UsageError(problem, ctx.command_path)


app = typer.Typer(
    cls=_Commands,
    help="Sluice: rate-limited submission engine for third-party APIs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(
    help="API keys in SLUICE_DATABASE_URL: create (shown once), list, revoke.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def _utf8(param: typer.CallbackParam, value: str | None) -> str | None:
    """Text stored, searched for or named to the network (a host to listen on, a Celery node
    name): refused in one line when the shell passed bytes that are not UTF-8 (Python reads
    them as lone surrogates, which no database driver, socket or broker can encode)."""
    if value is not None and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            name = param.opts[0] if param.opts and param.opts[0].startswith("-") else None
            raise errors.InvalidValue(
                f"{name or (param.name or 'argument').upper()}: not UTF-8 text "
                "(the terminal passed bytes in another encoding)"
            ) from None
    return value


Host = Annotated[
    str | None, typer.Option(help="interface to listen on", envvar="SLUICE_HOST", callback=_utf8)
]
Port = Annotated[
    int | None,
    typer.Option(help="port to listen on", envvar="SLUICE_PORT", min=1, max=65535),
]


MAX_WORKER_PROCESSES = 64
"""The most worker processes one command starts (``worker --concurrency``, ``up --workers``).

A worker process sends from its own SLUICE_EXECUTOR_THREADS threads (16 by default) and holds
its own database pool, so 64 of them already send 1,024 requests at once from one host and
may open more PostgreSQL connections than its default ``max_connections`` (100). Unbounded,
``--concurrency 100000`` was a traceback ("Too many open files") while Celery built its pool.
More throughput: more threads (SLUICE_EXECUTOR_THREADS) or more hosts."""


def _process_count(low: int) -> Any:
    """A callback refusing a number of worker processes outside ``low``..64, in one line."""

    def check(param: typer.CallbackParam, value: int) -> int:
        if not low <= value <= MAX_WORKER_PROCESSES:
            name = param.opts[0] if param.opts else param.name
            if isinstance(param.envvar, str):
                name = f"{name} ({param.envvar})"
            raise errors.InvalidValue(
                f"{name} must be between {low} and {MAX_WORKER_PROCESSES}, got {value}"
            )
        return value

    return check


def _api_url(value: str | None) -> str | None:
    """``--api``: refused in one line when httpx cannot read it as a URL (its password
    masked), rather than a traceback at the first request."""
    if value is None:
        return None
    import httpx

    try:
        httpx.URL(value)
    except (httpx.InvalidURL, UnicodeError) as exc:
        problem = masking.mask(str(exc)).encode("ascii", "backslashreplace").decode()
        raise errors.InvalidValue(f"--api (SLUICE_API_URL): not a URL: {problem}") from None
    return value


def _api_key(value: str | None) -> str | None:
    """``--key``, checked when ``--api`` will send it: an HTTP header carries printable
    ASCII only. A key pasted with anything else (an ellipsis, a line end) is refused in one
    line that never shows it. (Without ``--api`` the key is not used, so not checked.)"""
    if value is not None and not (value.isascii() and value.isprintable()):
        raise errors.InvalidValue(
            "--key (SLUICE_API_KEY): an API key is printable ASCII text (sk_<id>_<secret>); "
            "this one holds other characters"
        )
    return value


Insecure = Annotated[
    bool,
    typer.Option(
        help="start even with SLUICE_AUTH=off, or on a non-loopback address with no API key",
        envvar="SLUICE_INSECURE",
    ),
]


@app.command()
def api(host: Host = None, port: Port = None, insecure: Insecure = False) -> None:
    """Serve the REST API only (no engine)."""
    process_memory.limit_malloc_arenas()  # before the request threads start
    settings = _prepare_metrics(load_settings())

    import uvicorn

    from sluice.api.app import GRACEFUL_SHUTDOWN_S, api_rate, build_api
    from sluice.api.auth import refuse_auth_off, startup_notice
    from sluice.runtime import build_runtime
    from sluice.store import db
    from sluice.store.keys import KeyStore
    from sluice.up import listen

    api_rate(settings)  # before the database is opened and anything is said
    refuse_auth_off(settings, insecure=insecure)
    settings = settings.model_copy(
        update={"host": host or settings.host, "port": port or settings.port}
    )
    logs.configure(settings.log_level)
    # The port first: taken, it is one line before the database is touched.
    listening = listen(settings.host, settings.port)
    runtime = build_runtime(settings)
    try:
        db.check_writable(runtime.repo.engine)
        console.print(startup_notice(settings, KeyStore(runtime.repo.engine), insecure=insecure))
    except (errors.ConfigError, errors.StoreUnavailable):
        runtime.close()
        listening.close()
        raise
    config = uvicorn.Config(
        build_api(runtime),
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go through Sluice's masking formatter
        # Open console pages keep event streams open: give them this long, then close them.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    uvicorn.Server(config).run(sockets=[listening])


@app.command()
def up(
    host: Host = None,
    port: Port = None,
    demo: Annotated[
        bool,
        typer.Option(
            help="start the sandbox in-process and run the example campaign", envvar="SLUICE_DEMO"
        ),
    ] = False,
    exit_when_done: Annotated[
        bool,
        typer.Option(help="stop once the demo's tasks are final", envvar="SLUICE_EXIT_WHEN_DONE"),
    ] = False,
    sandbox: Annotated[
        bool,
        typer.Option(
            help="also run the sandbox DSP in-process (\\[sandbox] section)",
            envvar="SLUICE_SANDBOX",
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            help="run the engine on N Celery worker processes instead of in-process, 0-64 "
            "(needs SLUICE_BROKER_URL and SLUICE_REDIS_URL; PostgreSQL recommended)",
            envvar="SLUICE_WORKERS",
            callback=_process_count(0),
        ),
    ] = 0,
    insecure: Insecure = False,
) -> None:
    """Run the API and the engine in one process (embedded mode, SQLite by default)."""
    process_memory.limit_malloc_arenas()  # before the engine's and the API's threads start
    settings = _prepare_metrics(load_settings())

    from sluice.up import UpOptions, run_up

    logs.configure("WARNING" if demo else settings.log_level)
    options = UpOptions(
        host=host or settings.host,
        port=port or settings.port,
        demo=demo,
        exit_when_done=exit_when_done,
        sandbox=sandbox,
        workers=workers,
        insecure=insecure,
    )
    raise typer.Exit(run_up(settings, options, Console()))


@app.command()
def submit(
    file: Annotated[
        # Checked by the importer, in one line (Click's check drew a usage box).
        Path, typer.Argument(help="a .json or .csv hierarchy")
    ],
    api_url: Annotated[
        str | None,
        typer.Option(
            "--api",
            help="a running Sluice API, e.g. http://127.0.0.1:8000",
            envvar="SLUICE_API_URL",
            callback=_api_url,
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait until every task is final")] = True,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="API key for --api (default: $SLUICE_API_KEY); not needed on loopback",
            envvar="SLUICE_API_KEY",
            show_default=False,
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            help="priority of every task in the file (-100..100, higher first within its "
            "fairness key; default 0)",
            show_default=False,
        ),
    ] = None,
    again: Annotated[
        bool,
        typer.Option(
            "--again",
            help="create the file's tasks even if this file was submitted before (without "
            "it, a second submit of the same file, after an interrupted one say, creates "
            "nothing twice)",
        ),
    ] = False,
) -> None:
    """Submit a file of tasks (a campaign with its ad groups and ads) and follow them."""
    from sluice.domain import PRIORITY_MAX, PRIORITY_MIN
    from sluice.submit import submit_embedded, submit_remote

    if priority is not None and not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise errors.InvalidValue(
            f"--priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {priority}"
        )
    settings = load_settings()
    logs.configure("WARNING")
    console = Console()
    if api_url:
        code = submit_remote(api_url, file, wait, console, _api_key(api_key), priority, again)
    else:
        code = submit_embedded(settings, file, wait, console, priority, again)
    raise typer.Exit(code)


@app.command()
def status(
    api_url: Annotated[
        str | None,
        typer.Option(
            "--api",
            help="a running Sluice API, e.g. http://127.0.0.1:8000 (default: the local database)",
            envvar="SLUICE_API_URL",
            callback=_api_url,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="API key for --api (default: $SLUICE_API_KEY); not needed on loopback",
            envvar="SLUICE_API_KEY",
            show_default=False,
        ),
    ] = None,
    once: Annotated[bool, typer.Option(help="print the overview once and exit")] = False,
) -> None:
    """The overview (limits, usage, pauses, queues) as a live table, until Ctrl-C."""
    from sluice.status import local_source, remote_source, run_status

    logs.configure("WARNING")
    api_key = _api_key(api_key) if api_url else None
    try:
        source = (
            remote_source(api_url, api_key) if api_url else local_source(_existing(load_settings()))
        )
        code = run_status(source, Console(), once=once)
    except errors.SluiceError as exc:
        _fail("status", str(exc))
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def worker(
    beat: Annotated[bool, typer.Option(help="also run the beat scheduler in this worker")] = False,
    concurrency: Annotated[
        int,
        typer.Option(
            help="worker processes, 1-64 (each sends from SLUICE_EXECUTOR_THREADS threads)",
            envvar="SLUICE_WORKER_CONCURRENCY",
            callback=_process_count(1),
        ),
    ] = 4,
    loglevel: LogLevel = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            help="Celery node name (default sluice-<pid>@<host>, unique per process)",
            envvar="SLUICE_WORKER_HOSTNAME",
            callback=_utf8,
        ),
    ] = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """Run a Celery worker (distributed mode; broker from SLUICE_BROKER_URL)."""
    import os

    settings = _prepare_metrics(load_settings())
    loglevel = _log_level(loglevel, settings)
    from sluice.celery_app import app as celery
    from sluice.drivers.celery_app import check_worker_settings

    check_worker_settings(settings)
    if metrics_port is not None:
        _serve_metrics_when_ready(settings, metrics_host, metrics_port)

    # Several workers on one host get distinct node names (RabbitMQ's pidbox queue is
    # exclusive per name; remote control is off now, celery_config, but logs still tell
    # the workers apart by name).
    node = hostname or f"sluice-{os.getpid()}@%h"
    # Celery leaves a root logger that already has a handler alone: Sluice's own lines
    # (pump.summary, provider.paused, grant.expired...) then reach the log, formatted.
    logs.configure(loglevel)
    argv = ["worker", "--concurrency", str(concurrency), "--loglevel", loglevel]
    argv += ["--hostname", node]
    argv += ["--queues", "sluice", "--pool", "prefork", "--without-gossip", "--without-mingle"]
    if beat:
        argv.append("--beat")
    celery.worker_main(argv)


LogLevel = Annotated[
    str | None,
    typer.Option(
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default: SLUICE_LOG_LEVEL, or the "
        "[sluice] log_level of the config file, or INFO)",
        show_default=False,
    ),
]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        help="serve this host's metrics (every Sluice process on it, summed) on this port "
        "at /metrics; for hosts that run no API",
        envvar="SLUICE_METRICS_PORT",
        min=1,
        max=65535,
    ),
]
MetricsHost = Annotated[
    str,
    typer.Option(
        help="interface the metrics port listens on", envvar="SLUICE_METRICS_HOST", callback=_utf8
    ),
]


def _prepare_metrics(settings: Any) -> Any:
    """Choose this host's metrics directory before anything imports prometheus_client."""
    from sluice import metrics_host

    metrics_host.prepare(settings.database_url, settings.limiter_namespace)
    return settings


def _metrics_token(settings: Any) -> str | None:
    token = settings.metrics_token
    return None if token is None else str(token.get_secret_value())


def _serve_metrics_when_ready(settings: Any, host: str, port: int) -> None:
    """Serve the host's metrics from the worker's main process once its pool has forked
    (so no pool process inherits the listening socket)."""
    from celery import signals

    from sluice import metrics_host

    # Checked now, before Celery starts: a failure at worker_ready was a traceback in the
    # log (Celery swallows a signal's exception) and a worker without metrics.
    metrics_host.check_listen(host, port)

    def serve(**_: Any) -> None:
        try:
            metrics_host.serve(host, port, _metrics_token(settings))
        except errors.ConfigError as exc:  # taken meanwhile
            logging.getLogger("sluice.metrics").error(
                "metrics.serve_failed", extra={"reason": str(exc)}
            )

    signals.worker_ready.connect(serve, weak=False)


@app.command("metrics-serve")
def metrics_serve(
    port: Annotated[
        int,
        typer.Option(help="port to listen on", envvar="SLUICE_METRICS_PORT", min=1, max=65535),
    ],
    host: MetricsHost = "127.0.0.1",
) -> None:
    """Serve this host's metrics (its Sluice processes, summed) at /metrics until Ctrl-C."""
    import threading

    from sluice import metrics_host

    settings = _prepare_metrics(load_settings())
    logs.configure(settings.log_level)
    server = metrics_host.serve(host, port, _metrics_token(settings))
    console.print(f"metrics of this host at http://{host}:{server.server_port}/metrics")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


@app.command()
def beat(loglevel: LogLevel = None) -> None:
    """Run the Celery beat scheduler that sends the pump tasks."""
    # Read here, so that a mistake is one line: the app reads them again as Celery
    # configures it, where Celery would log and swallow the error and beat then ran on
    # Celery's defaults (amqp://guest@localhost, no pumps).
    settings = load_settings()
    loglevel = _log_level(loglevel, settings)
    from sluice.celery_app import app as celery
    from sluice.drivers.celery_app import check_broker_access

    check_broker_access(settings)
    # As for `sluice worker`: Sluice's lines (beat.send_failed...) keep their fields.
    logs.configure(loglevel)
    celery.start(["beat", "--loglevel", loglevel])


def _log_level(given: str | None, settings: Any) -> str:
    """``--loglevel`` checked like ``SLUICE_LOG_LEVEL``, or the settings' level."""
    from sluice.settings import LOG_LEVELS

    if given is None:
        return str(settings.log_level)
    if given.upper() not in LOG_LEVELS:
        raise errors.InvalidValue(f"--loglevel must be one of {', '.join(LOG_LEVELS)}")
    return given.upper()


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Apply the schema migrations to SLUICE_DATABASE_URL."""
    from sluice.store import db

    settings = load_settings()
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine, revision)
    # Upgrading to a revision behind the database's changes nothing: say where it is.
    now_at = db.current_revision(engine) or "base"
    asked = "" if revision in ("head", now_at) else f" (asked for {revision})"
    console.print(
        f"database at {engine.url.render_as_string(hide_password=True)} is at {now_at}{asked}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


MAX_PRUNE_BATCH = 1_000_000
"""The most tasks ``db prune --batch`` deletes in one transaction (as SLUICE_RETENTION_BATCH).

Unbounded, ``--batch 10000000000000000000000`` was an OverflowError traceback from SQLite
(the number reached its ``LIMIT``), and ``--batch 0`` a box of several lines."""


def _prune_batch(param: typer.CallbackParam, value: int) -> int:
    """A callback refusing a batch outside 1..MAX_PRUNE_BATCH, in one line."""
    if not 1 <= value <= MAX_PRUNE_BATCH:
        raise errors.InvalidValue(f"--batch must be between 1 and {MAX_PRUNE_BATCH}, got {value}")
    return value


@db_app.command("prune")
def db_prune(
    older_than: Annotated[
        str, typer.Option(help="final tasks last changed longer ago than this, e.g. 30d")
    ],
    batch: Annotated[
        int,
        typer.Option(help="tasks per transaction, 1-1000000", callback=_prune_batch),
    ] = 5000,
) -> None:
    """Delete final task families (a root task, its descendants, their events) older than
    --older-than from SLUICE_DATABASE_URL, in batches; unfinished work is never touched."""
    from datetime import timedelta

    from sluice.domain import LOCAL_ACTOR
    from sluice.store.retention import prune
    from sluice.units import parse_duration

    try:
        seconds = parse_duration(older_than)
    except errors.InvalidValue as exc:
        raise errors.InvalidValue(f"--older-than: {exc}") from None
    if seconds <= 0:
        raise errors.InvalidValue(f"--older-than: must be a positive duration, got {older_than!r}")
    engine = _open_store()
    from sluice.clock import SystemClock

    now = SystemClock().now()
    cutoff = now - timedelta(seconds=seconds)
    done = prune(engine, cutoff, now, batch=batch, actor=LOCAL_ACTOR)
    console.print(
        f"pruned {done.tasks} task(s) and {done.events} event(s) in {done.batches} batch(es): "
        f"final and unchanged since {_when(cutoff)}",
        markup=False,
        highlight=False,
    )


def _fail(label: str, message: str) -> None:
    """One line on stderr: ``label: message``, shown as it is (no markup), secrets masked."""
    shown = escape(masking.mask(message))
    console.print(f"[red]{label}:[/red] {shown}", soft_wrap=True, highlight=False)


def _existing(settings: Any) -> Any:
    """``settings``, once its database is known to exist (a command reading or changing what
    a running Sluice holds must not create an empty one in the wrong folder)."""
    from sluice.store import db

    db.require_existing(settings.database_url)
    return settings


def _open_store(*, existing: bool = True) -> Any:
    """The database of SLUICE_DATABASE_URL, at this release's schema (which must exist
    already, unless ``existing`` is False: a first key may be created before the first
    start); an older one is refused (:func:`db.require_schema`)."""
    from sluice.store import db

    settings = load_settings()
    if existing:
        db.require_existing(settings.database_url)
    engine = db.make_engine(settings.database_url)
    db.require_schema(engine)
    return engine


def _when(moment: Any) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%MZ")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what uses it, e.g. ci-acme")],
    role: Annotated[str, typer.Option(help="viewer, submitter, operator or admin")],
    tenant: Annotated[
        str | None, typer.Option(help="the tenant of a viewer or submitter key")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="lifetime, e.g. 90d or 12h (default: never)")
    ] = None,
) -> None:
    """Create an API key and print it once (to stdout); only its hash is stored."""
    from sluice import apikeys
    from sluice.store.keys import KeyStore

    made = apikeys.create_key(
        KeyStore(_open_store(existing=False)), name=name, role=role, tenant=tenant, expires=expires
    )
    key = made.key
    scope = f"tenant {key.tenant}" if key.tenant else "every tenant"
    console.print(
        f"created key {key.id} '{key.name}': {key.role.value}, {scope}, "
        f"expires {_when(key.expires_at) if key.expires_at else 'never'}. "
        "It is shown only now; keep it secret:",
        markup=False,
        highlight=False,
    )
    typer.echo(made.token)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never their secrets): role, tenant, state, last use."""
    from rich.table import Column, Table

    from sluice.store.keys import KeyStore

    store = KeyStore(_open_store())
    now = store.clock.now()
    table = Table(Column("id", no_wrap=True, min_width=12), "name", "role", "tenant")
    for heading in ("created", "expires", "last used", "state"):
        table.add_column(heading)
    for key in store.list():
        state: str = key.state_at(now)
        if key.revoked_at is not None:
            state = f"revoked {_when(key.revoked_at)}"
        table.add_row(
            key.id,
            escape(key.name),
            key.role.value,
            key.tenant or "(all)",
            _when(key.created_at),
            _when(key.expires_at),
            _when(key.last_used_at),
            state,
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[
        str,
        typer.Argument(help="the key's id (sluice keys list), or the whole key", callback=_utf8),
    ],
) -> None:
    """Revoke an API key: every request with it is refused from now on."""
    from sluice.apikeys import id_of
    from sluice.store.keys import KeyStore

    key, revoked = KeyStore(_open_store()).revoke(id_of(key_id))
    if revoked:
        console.print(f"revoked key {key.id} '{key.name}'", markup=False, highlight=False)
    else:
        console.print(
            f"key {key.id} '{key.name}' was already revoked at {_when(key.revoked_at)}",
            markup=False,
            highlight=False,
        )


@app.command()
def audit(
    tenant: Annotated[
        str | None, typer.Option(help="only this tenant's records", callback=_utf8)
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(help="e.g. task.cancel, or task. for every task action", callback=_utf8),
    ] = None,
    key_id: Annotated[
        str | None,
        typer.Option(
            "--key-id",
            help="only what this API key did (its id, or the whole key)",
            callback=_utf8,
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="newest records shown")] = 50,
) -> None:
    """List the newest audit records of SLUICE_DATABASE_URL."""
    import json

    from rich.table import Table

    from sluice.apikeys import id_of
    from sluice.store.audit import AuditLog

    page = AuditLog(_open_store()).list(
        tenant=tenant,
        action=action,
        key_id=id_of(key_id) if key_id is not None else None,
        limit=limit,
    )
    table = Table("at", "actor", "key", "tenant", "action", "target", "detail")
    for record in page.items:
        key = f"{record.key_name} ({record.key_id})" if record.key_id else "-"
        detail = json.dumps(record.detail, sort_keys=True)
        cells = (record.actor, key, record.tenant or "-", record.action, record.target, detail)
        table.add_row(_when(record.at), *(escape(cell) for cell in cells))
    Console().print(table)


ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api",
        help="a running Sluice API (default: the local database)",
        envvar="SLUICE_API_URL",
        callback=_api_url,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="API key for --api (default: $SLUICE_API_KEY); not needed on loopback",
        envvar="SLUICE_API_KEY",
        show_default=False,
    ),
]
Reason = Annotated[
    str, typer.Option(help="why (shown beside the pause or pin, and audited)", callback=_utf8)
]


def _control(action: str, target: str, api_url: str | None, api_key: str | None, **kw: Any) -> None:
    from sluice.operate import control_local, control_remote, describe_control

    logs.configure("WARNING")  # a limiter that is down: one masked line, as in `sluice status`
    if api_url:
        result = control_remote(api_url, _api_key(api_key), action, target, **kw)
    else:
        result = control_local(_existing(load_settings()), action, target, **kw)
    Console().print(describe_control(result), markup=False, highlight=False, soft_wrap=True)


@app.command()
def pause(
    target: Annotated[str, typer.Argument(help="a provider (sandbox) or a key (sandbox:write)")],
    reason: Reason,
    for_: Annotated[
        str | None,
        typer.Option("--for", help="how long, e.g. 30min or 2h (default: until resumed)"),
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="when it ends (UTC if no zone)")] = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Pause a provider or one of its limit keys by hand, on every worker."""
    _control("pause", target, api_url, api_key, reason=reason, duration=for_, until=until)


@app.command()
def resume(
    target: Annotated[str, typer.Argument(help="the provider or key paused")],
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """End the pause on a provider or key (and every pause below it)."""
    _control("resume", target, api_url, api_key)


@app.command()
def pin(
    key: Annotated[str, typer.Argument(help="a limit key, e.g. sandbox:write")],
    rate: Annotated[str, typer.Argument(help="at most the configured rate, e.g. 5/s")],
    reason: Reason,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Pin a lower rate on a limit key; every worker runs at it within a second."""
    _control("pin", key, api_url, api_key, reason=reason, rate=rate)


@app.command()
def unpin(
    key: Annotated[str, typer.Argument(help="the pinned key")],
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Clear a key's pin: back to its configured rate."""
    _control("unpin", key, api_url, api_key)


@app.command()
def explain(
    task_id: Annotated[int, typer.Argument(help="the task's id", min=1, max=MAX_ID)],
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Say why a task is where it is (waiting for its parent, paused, backing off...)."""
    from sluice.operate import describe_explanation, explain_local, explain_remote

    logs.configure("WARNING")
    if api_url:
        shown = explain_remote(api_url, _api_key(api_key), task_id)
    else:
        shown = explain_local(_existing(load_settings()), task_id)
    out = Console()
    for line in describe_explanation(shown):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def rates(api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """Each limit key's configured rate beside the rate in force, and why (learned, pinned)."""
    from rich.table import Table

    from sluice.operate import RATES_COLUMNS, describe_rates, rates_local, rates_remote

    logs.configure("WARNING")
    if api_url:
        rows = rates_remote(api_url, _api_key(api_key))
    else:
        rows = rates_local(_existing(load_settings()))
    table = Table(*RATES_COLUMNS)
    for cells in describe_rates(rows):
        table.add_row(*(escape(cell) for cell in cells))
    Console().print(table)


TASK_STATUSES = (
    "Not Started, In Progress, Completed, Error or Cancelled (any case; - or _ for the space)"
)


@app.command()
def tasks(
    status: Annotated[
        str | None, typer.Option(help=f"only tasks in this status: {TASK_STATUSES}")
    ] = None,
    provider: Annotated[
        str | None, typer.Option(help="only this provider's tasks", callback=_utf8)
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="only tasks of this kind, e.g. campaign", callback=_utf8)
    ] = None,
    parent: Annotated[
        int | None, typer.Option(help="only the children of this task", min=1, max=MAX_ID)
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="created at or after this ISO date and time (UTC if no zone), e.g. "
            "2026-12-07T09:30 or 2026-12-07T09:30+01:00",
            callback=_utf8,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="created before this ISO date and time (exclusive; UTC if no zone)",
            callback=_utf8,
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="tasks on the page, 1-1000")] = 50,
    cursor: Annotated[
        str | None,
        typer.Option(
            help="continue after the page that printed it (give the same filters)",
            callback=_utf8,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="one JSON object per line (the fields of GET /api/tasks), for scripts; "
            "the line about the next page goes to stderr",
        ),
    ] = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List tasks, a page at a time, in id order (oldest first, as GET /api/tasks pages
    them): id, provider, kind, status, external id, attempts, last change (UTC) and the
    first line of the validation error. A full page ends with the --cursor of the next."""
    import json

    from rich.table import Column, Table

    from sluice.operate import (
        TASKS_COLUMNS,
        describe_tasks,
        more_tasks,
        task_query,
        tasks_local,
        tasks_remote,
    )

    logs.configure("WARNING")
    query = task_query(
        status=status,
        provider=provider,
        kind=kind,
        parent_id=parent,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    if api_url:
        page = tasks_remote(api_url, _api_key(api_key), query)
    else:
        page = tasks_local(_existing(load_settings()), query)
    items, next_cursor = page["items"], page["next_cursor"]
    if as_json:
        for item in items:
            typer.echo(json.dumps(item))
        if next_cursor:
            typer.echo(more_tasks(next_cursor), err=True)
        return
    out = Console()
    if not items:
        out.print("no tasks match", markup=False, highlight=False)
        return
    whole = {"id", "status", "updated"}  # on a narrow terminal the others wrap
    table = Table(*(Column(name, no_wrap=name in whole, overflow="fold") for name in TASKS_COLUMNS))
    for cells in describe_tasks(items):
        table.add_row(*(escape(cell) for cell in cells))
    out.print(table)
    if next_cursor:
        out.print(more_tasks(next_cursor), markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point of the ``sluice`` console script: operator errors are one line, exit 2."""
    from sluice.submissions import SubmissionInvalid

    try:
        app(standalone_mode=True)
    except errors.ConfigError as exc:
        _fail("configuration error", str(exc))
        raise SystemExit(2) from None
    except SubmissionInvalid as exc:
        _fail("nothing was submitted", f"{len(exc.problems)} problem(s)")
        for problem in exc.problems[:20]:
            console.print(
                f"  {exc.where(problem)}: {problem.field}: {problem.message}",
                markup=False,
                soft_wrap=True,
                highlight=False,
            )
        if len(exc.problems) > 20:
            console.print(f"  ... and {len(exc.problems) - 20} more")
        raise SystemExit(2) from None
    except errors.StoreUnavailable as exc:
        _fail("error", f"{exc} ({exc.where})")
        raise SystemExit(2) from None
    except errors.UsageError as exc:
        _fail(exc.command, str(exc))
        raise SystemExit(2) from None
    except errors.SluiceError as exc:
        _fail("error", str(exc))
        raise SystemExit(2) from None
    except Exception as exc:
        # A bug or an unexpected library error: its traceback is printed masked, since
        # messages of database and HTTP libraries may quote URLs or parameters.
        trace = "".join(traceback.format_exception(exc))
        sys.stderr.write(masking.mask(trace))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
