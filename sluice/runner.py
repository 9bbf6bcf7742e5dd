"""``sluice up``: API + engine (+ the sandbox in-process) in one process, and the demo."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn
from rich.console import Console

from sluice import errors, importer, tasks, wiring
from sluice.domain import FINAL_STATUSES
from sluice.engine.embedded import EmbeddedEngine
from sluice.progress import RateReport, summary_table, watch
from sluice.settings import Settings
from sluice.store.repository import summarize

log = logging.getLogger("sluice.up")

DEMO_FILE = Path(__file__).resolve().parent.parent / "examples" / "demo.json"
DEMO_FIRST_ID = 1001  # the prototype's walk-through uses ids 1, 2 and 3
DEMO_DATABASE = "sqlite:///./sluice-demo.db"


@dataclass(frozen=True)
class UpOptions:
    host: str
    port: int
    demo: bool = False
    exit_when_done: bool = False
    sandbox: bool = False
    demo_file: Path | None = None
    workers: int = 0


def prepare_demo_settings(settings: Settings) -> Settings:
    """The demo runs on a fresh SQLite file unless a database was chosen explicitly."""
    if settings.database_url == Settings.model_fields["database_url"].default:
        path = Path("sluice-demo.db")
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return settings.model_copy(update={"database_url": DEMO_DATABASE})
    return settings


def run_up(settings: Settings, options: UpOptions, console: Console) -> int:
    """Run until Ctrl-C (or, with ``exit_when_done``, until the demo's tasks are final)."""
    if options.demo:
        settings = prepare_demo_settings(settings)
    with ExitStack() as stack:
        if options.sandbox or options.demo:
            base_url = start_sandbox(settings, stack)
            console.print(f"sandbox DSP (profile {sandbox_profile(settings)}) at {base_url}")
        runtime = wiring.build_runtime(settings)
        stack.callback(runtime.close)
        engine: EmbeddedEngine | None = None
        if options.workers:
            start_workers(settings, options.workers, stack, console)
        else:
            engine = wiring.build_engine(runtime)
            engine.start()
            stack.callback(engine.stop)
        server = uvicorn.Server(
            uvicorn.Config(
                wiring.build_api(runtime),
                host=options.host,
                port=options.port,
                log_level="warning",
            )
        )
        console.print(f"Sluice API at http://{options.host}:{options.port} (docs at /docs)")
        if options.demo:
            demo = threading.Thread(
                target=run_demo,
                args=(runtime, engine, options, console, server),
                name="sluice-demo",
                daemon=True,
            )
            demo.start()
        server.run()
    return 0


def sandbox_profile(settings: Settings) -> str:
    return str(settings.sandbox.get("profile", "demo"))


def start_sandbox(settings: Settings, stack: ExitStack) -> str:
    """Start the bundled sandbox DSP in this process on its configured port."""
    from sluice.sandbox.config import SandboxConfig
    from sluice.sandbox.server import SandboxServer

    section = dict(settings.sandbox)
    section.setdefault("profile", "demo")
    port = int(section.pop("port", wiring.DEMO_SANDBOX_PORT))
    host = str(section.pop("host", "127.0.0.1"))
    server = SandboxServer(SandboxConfig.from_settings(section), host=host, port=port)
    base_url = server.start()
    stack.callback(server.stop)
    return base_url


def start_workers(settings: Settings, count: int, stack: ExitStack, console: Console) -> None:
    """Start ``count`` Celery worker processes (the first also runs beat)."""
    if not settings.broker_url or not settings.redis_url:
        raise errors.ConfigError(
            "--workers needs SLUICE_BROKER_URL and SLUICE_REDIS_URL "
            "(the limiter is shared in Redis)"
        )
    env = dict(os.environ)
    env["SLUICE_DATABASE_URL"] = settings.database_url
    env.setdefault("SLUICE_PUMPS", str(count))
    processes = []
    for n in range(count):
        argv = [sys.executable, "-m", "sluice.cli", "worker", "--concurrency", "1"]
        argv += ["--loglevel", "WARNING"]
        if n == 0:
            argv.append("--beat")
        processes.append(subprocess.Popen(argv, env=env, start_new_session=True))
    console.print(
        f"{count} Celery worker process(es) started (broker {_redact(settings.broker_url)})"
    )

    def stop() -> None:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    stack.callback(stop)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def run_demo(
    runtime: wiring.Runtime,
    engine: EmbeddedEngine | None,
    options: UpOptions,
    console: Console,
    server: uvicorn.Server,
) -> None:
    """Load the example hierarchy, show progress, print the summary."""
    items = importer.load_file(options.demo_file or DEMO_FILE)
    first = max(DEMO_FIRST_ID, runtime.repo.max_id() + 1)
    items = [replace(item, id=first + i) for i, item in enumerate(items)]
    started = time.monotonic()
    ids = tasks.create_tasks(runtime.repo, runtime.catalog, items)
    if engine is not None:
        engine.wake()
    last = max(ids)
    console.print(f"demo: {len(ids)} tasks created (ids {first}-{last}) from {DEMO_FILE.name}")
    stop = threading.Event()
    watch(lambda: summarize(runtime.repo.engine, first, last).by_status, len(ids), console, stop)
    elapsed = time.monotonic() - started
    summary = summarize(runtime.repo.engine, first, last)
    console.print(summary_table(summary, elapsed, rate_reports(runtime, engine, elapsed)))
    final = sum(summary.by_status.get(s.value, 0) for s in FINAL_STATUSES)
    console.print(
        f"{final}/{summary.total} demo tasks final. Try the prototype's walk-through: "
        "README.md, section 'The prototype's walk-through'."
    )
    if options.exit_when_done:
        server.should_exit = True


def rate_reports(
    runtime: wiring.Runtime, engine: EmbeddedEngine | None, elapsed: float
) -> list[RateReport]:
    """Requests this process sent per provider (worker processes keep their own counts)."""
    if engine is None:
        return []
    reports = []
    for name, provider in runtime.providers.items():
        sent = sum(
            count
            for key, count in engine.executor.stats.requests.items()
            if key.split(" ", 1)[0] == name
        )
        if not sent:
            continue
        rates = [s.rate.limit / s.rate.window_s for s in provider.limits_for("read", None)]
        reports.append(RateReport(name, sent, elapsed, min(rates) if rates else None))
    return reports
