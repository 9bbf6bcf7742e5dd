"""The demo of ``sluice up --demo``: the example campaign hierarchy, its progress and summary."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from sluice import importer, submissions
from sluice.domain import FINAL_STATUSES, Submission
from sluice.drivers.embedded import EmbeddedDriver
from sluice.progress import rate_reports, say_pruned, summary_table, watch
from sluice.runtime import Runtime
from sluice.settings import Settings
from sluice.store.repository import summarize

# Package data, so that `sluice up --demo` works from a plain `pip install` too.
DEMO_FILE = Path(__file__).resolve().parent / "examples" / "demo.json"
DEMO_FIRST_ID = 1001  # the prototype's walk-through uses ids 1, 2 and 3
DEMO_DATABASE = "sqlite:///./sluice-demo.db"
DEMO_COPIES = 8
"""The example hierarchy is loaded this many times (480 tasks): enough creates and polls
that the sandbox's 20/s limit binds, so the console's usage bars fill up."""
DEMO_MAINTENANCE = [[8.0, 4.0]]
"""The demo sandbox's planned outage: 8 s in, for 4 s, every call gets 429 with
Retry-After, so the demo shows one pause (and the console shows it live)."""

log = logging.getLogger("sluice.demo")


def demo_database_file(settings: Settings) -> Path | None:
    """The SQLite file the demo starts afresh (deleting it first), or None when a database
    was chosen explicitly (the demo then runs on it as it is)."""
    if settings.database_url == Settings.model_fields["database_url"].default:
        return Path("sluice-demo.db")
    return None


def prepare_demo_settings(settings: Settings) -> Settings:
    """The demo runs on a fresh SQLite file unless a database was chosen explicitly, and
    its sandbox has one maintenance window (unless ``[sandbox] maintenance`` says otherwise)."""
    sandbox = {"maintenance": DEMO_MAINTENANCE, **settings.sandbox}
    settings = settings.model_copy(update={"sandbox": sandbox})
    path = demo_database_file(settings)
    if path is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return settings.model_copy(update={"database_url": DEMO_DATABASE})
    return settings


def run_demo(
    runtime: Runtime,
    driver: EmbeddedDriver | None,
    demo_file: Path | None,
    console: Console,
    when_done: Callable[[bool], None],
    broken: Callable[[], str | None] = lambda: None,
) -> None:
    """Run the demo, then call ``when_done(finished)``; a failure is one line, not a traceback.

    ``broken`` says why the demo can no longer finish (worker processes died), or None.
    """
    try:
        finished = _demo(runtime, driver, demo_file or DEMO_FILE, console, broken)
    except Exception as exc:  # the demo thread must report, not die with a traceback
        log.debug("demo failed", exc_info=True)
        console.print(f"demo failed: {type(exc).__name__}: {exc}", markup=False)
        finished = False
    when_done(finished)


def copies(items: list[Submission], times: int) -> list[Submission]:
    """``items`` ``times`` over, each copy's parents pointing inside that copy."""
    out: list[Submission] = []
    for copy in range(times):
        shift = copy * len(items)
        for item in items:
            payload = dict(item.payload or {})
            if copy and "name" in payload:
                payload["name"] = f"{payload['name']} #{copy + 1}"
            parent = item.parent_index + shift if item.parent_index is not None else None
            out.append(replace(item, payload=payload, parent_index=parent))
    return out


def _demo(
    runtime: Runtime,
    driver: EmbeddedDriver | None,
    demo_file: Path,
    console: Console,
    broken: Callable[[], str | None],
) -> bool:
    """Load the example hierarchy, show progress, print the summary; True if all ended."""
    items = copies(importer.load_file(demo_file), DEMO_COPIES if demo_file == DEMO_FILE else 1)
    first = max(DEMO_FIRST_ID, runtime.repo.max_id() + 1)
    items = [replace(item, id=first + i) for i, item in enumerate(items)]
    started = time.monotonic()
    ids = submissions.create_tasks(runtime.repo, runtime.catalog, items)
    if driver is not None:
        driver.wake()
    last = max(ids)
    console.print(f"demo: {len(ids)} tasks created (ids {first}-{last}) from {demo_file.name}")
    stop = threading.Event()

    def counts() -> dict[str, int]:
        if broken() is not None:
            stop.set()
        return summarize(runtime.repo.engine, ids).by_status

    watch(counts, len(ids), console, stop)
    reason = broken()
    if reason is not None:
        console.print(f"demo stopped: {reason}", markup=False)
        return False
    elapsed = time.monotonic() - started
    summary = summarize(runtime.repo.engine, ids)
    console.print(summary_table(summary, elapsed, rate_reports(runtime, driver, elapsed)))
    say_pruned(console, len(ids), summary)
    final = sum(summary.by_status.get(s.value, 0) for s in FINAL_STATUSES)
    console.print(
        f"{final}/{summary.total} demo tasks final. Try the prototype's walk-through: "
        "README.md, section 'The prototype's walk-through'."
    )
    return final == summary.total
