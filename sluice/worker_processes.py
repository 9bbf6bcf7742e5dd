"""``sluice up --workers N``: start N ``sluice worker`` processes and stop them on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field

from rich.console import Console

from sluice import errors
from sluice.settings import Settings


@dataclass
class WorkerProcesses:
    """The worker processes of one ``sluice up``."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: bool = False

    def exited(self) -> str | None:
        """Why the workers can no longer be relied on (some exited on their own), or None."""
        if self.stopping:
            return None
        dead = [process for process in self.processes if process.poll() is not None]
        if not dead:
            return None
        codes = ", ".join(str(process.returncode) for process in dead)
        return f"{len(dead)} worker process(es) exited (exit codes {codes}); see their output"

    def stop(self) -> None:
        """SIGTERM every worker (a warm Celery shutdown), then SIGKILL any left after 30 s."""
        self.stopping = True
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def start_workers(
    settings: Settings, count: int, stack: ExitStack, console: Console
) -> WorkerProcesses:
    """Start ``count`` Celery worker processes (the first also runs beat)."""
    if not settings.broker_url or not settings.redis_url:
        raise errors.ConfigError(
            "--workers needs SLUICE_BROKER_URL and SLUICE_REDIS_URL "
            "(the limiter is shared in Redis)"
        )
    env = dict(os.environ)
    env["SLUICE_DATABASE_URL"] = settings.database_url
    env.setdefault("SLUICE_PUMPS", str(count))
    workers = WorkerProcesses()
    stack.callback(workers.stop)
    for n in range(count):
        argv = [sys.executable, "-m", "sluice.cli", "worker", "--concurrency", "1"]
        argv += ["--loglevel", "WARNING"]
        if n == 0:
            argv.append("--beat")
        workers.processes.append(subprocess.Popen(argv, env=env, start_new_session=True))
    console.print(
        f"{count} Celery worker process(es) started (broker {redact_url(settings.broker_url)})"
    )
    return workers


def redact_url(url: str) -> str:
    """``url`` with its password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
