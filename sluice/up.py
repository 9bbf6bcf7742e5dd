"""``sluice up``: the API and a driver (embedded thread or Celery workers) in one command.

With ``--demo`` or ``--sandbox`` the bundled sandbox DSP runs in this process too.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from pydantic import ValidationError
from rich.console import Console

from sluice import errors
from sluice.api.app import GRACEFUL_SHUTDOWN_S, api_rate, build_api
from sluice.api.auth import refuse_auth_off, startup_notice
from sluice.demo import demo_database_file, prepare_demo_settings, run_demo
from sluice.drivers import engine_lock
from sluice.drivers.embedded import EmbeddedDriver, build_embedded_driver
from sluice.drivers.engine_lock import FileLock, holding
from sluice.runtime import DEMO_SANDBOX_PORT, build_runtime
from sluice.settings import Settings, describe_validation_error
from sluice.store import db
from sluice.store.keys import KeyStore
from sluice.worker_processes import WorkerProcesses, start_workers

log = logging.getLogger("sluice.up")


@dataclass(frozen=True)
class UpOptions:
    host: str
    port: int
    demo: bool = False
    exit_when_done: bool = False
    sandbox: bool = False
    demo_file: Path | None = None
    workers: int = 0
    insecure: bool = False


def run_up(settings: Settings, options: UpOptions, console: Console) -> int:
    """Run until Ctrl-C or SIGTERM (or, with ``exit_when_done``, until the demo ends).

    Returns the exit code: 0, or 1 when ``exit_when_done`` is set and the demo could not
    run to the end (it failed, or a worker process died).
    """
    api_rate(settings)  # before the demo's database is replaced and anything is said
    refuse_auth_off(settings, insecure=options.insecure)
    # The API judges "listens on loopback" by the address it is given here.
    settings = settings.model_copy(update={"host": options.host, "port": options.port})
    exit_code = 0
    with ExitStack() as stack:
        # The API's port first: taken, nothing else is started (uvicorn found it after the
        # engine and the demo had begun their work).
        listening = stack.enter_context(listen(options.host, options.port))
        engine_held = False
        if options.demo:
            # After the port, and after the engine's lock on the demo's file when this
            # process runs the engine: a second demo beside a running one (on its port or
            # another) deleted the running demo's database.
            demo_file = demo_database_file(settings)
            if demo_file is not None and not options.workers and settings.redis_url is None:
                stack.enter_context(holding(FileLock(str(demo_file.resolve()), engine_lock.UP)))
                engine_held = True
            settings = prepare_demo_settings(settings)
        _stop_cleanly_on_sigterm(stack)
        sandbox_url = start_sandbox(settings, stack) if options.sandbox or options.demo else None
        runtime = build_runtime(settings)
        stack.callback(runtime.close)
        db.check_writable(runtime.repo.engine)
        notice = startup_notice(settings, KeyStore(runtime.repo.engine), insecure=options.insecure)
        if sandbox_url is not None:
            console.print(f"sandbox DSP (profile {sandbox_profile(settings)}) at {sandbox_url}")
        driver: EmbeddedDriver | None = None
        workers = WorkerProcesses()
        if options.workers:
            workers = start_workers(settings, options.workers, stack, console)
        else:
            driver = build_embedded_driver(runtime)
            sole = engine_held
            if not engine_held:
                # One engine per database unless the limiter is shared (engine_lock).
                lock = engine_lock.engine_lock(
                    settings.database_url, settings.redis_url, engine_lock.UP, driver.lost
                )
                stack.enter_context(holding(lock))
                sole = engine_lock.holder_is_gone(lock)
            # Held: what a killed engine left claimed comes back now, not after its lease.
            driver.start(sole=sole)
            stack.callback(driver.stop)
        server = uvicorn.Server(
            uvicorn.Config(
                build_api(runtime),
                host=options.host,
                port=options.port,
                log_level="warning",
                log_config=None,  # through Sluice's masking formatter
                # Open console pages keep event streams open: at most this long on stop.
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            )
        )
        address = f"http://{options.host}:{options.port}"
        console.print(f"Sluice API at {address} (docs at /docs, console at {address}/ui)")
        console.print(f"Console: {address}/ui")
        console.print(notice)
        if options.demo:

            def when_done(finished: bool) -> None:
                nonlocal exit_code
                if options.exit_when_done:
                    exit_code = 0 if finished else 1
                    server.should_exit = True

            demo = threading.Thread(
                target=run_demo,
                args=(runtime, driver, options.demo_file, console, when_done, workers.exited),
                name="sluice-demo",
                daemon=True,
            )
            demo.start()
        server.run(sockets=[listening])
        workers.stopping = True
    return exit_code


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for a server to listen on, or SluiceError in one
    line ("cannot listen on 127.0.0.1:8000: Address already in use")."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise errors.SluiceError(
            f"cannot listen on {_where(host, port)}: {exc.strerror or exc}"
        ) from None
    return sock


def _where(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _stop_cleanly_on_sigterm(stack: ExitStack) -> None:
    """Turn SIGTERM into SystemExit(0), so the stack stops the workers and the sandbox.

    uvicorn captures SIGTERM while it serves, then re-raises it once it has shut down; with
    the default handler that kills the process before ``run_up``'s cleanup runs, leaving
    the worker processes (each in its own session) running.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def exit_now(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, exit_now)
    stack.callback(signal.signal, signal.SIGTERM, previous)


def sandbox_profile(settings: Settings) -> str:
    return str(settings.sandbox.get("profile", "demo"))


def start_sandbox(settings: Settings, stack: ExitStack) -> str:
    """Start the bundled sandbox DSP in this process on its configured port."""
    from sluice.sandbox.config import SandboxConfig
    from sluice.sandbox.server import SandboxServer

    section = dict(settings.sandbox)
    section.setdefault("profile", "demo")
    port = int(section.pop("port", DEMO_SANDBOX_PORT))
    host = str(section.pop("host", "127.0.0.1"))
    try:
        config = SandboxConfig.from_settings(section)
    except ValidationError as exc:
        raise errors.ConfigError(
            describe_validation_error(exc, lambda loc: "sandbox." + ".".join(loc))
        ) from None
    server = SandboxServer(config, host=host, port=port)
    try:
        base_url = server.start()
    except OSError as exc:
        raise errors.SluiceError(
            f"cannot start the sandbox DSP on {_where(host, port)}: {exc.strerror or exc}"
        ) from None
    stack.callback(server.stop)
    return base_url
