"""Live progress bars per status and the end-of-run summary table (Rich)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sluice.domain import FINAL_STATUSES, TaskStatus
from sluice.drivers.embedded import EmbeddedDriver
from sluice.runtime import Runtime
from sluice.store.repository import RunSummary

STATUS_STYLE = {
    TaskStatus.NOT_STARTED: "white",
    TaskStatus.IN_PROGRESS: "cyan",
    TaskStatus.COMPLETED: "green",
    TaskStatus.ERROR: "red",
    TaskStatus.CANCELLED: "yellow",
}


@dataclass(frozen=True)
class RateReport:
    """Requests sent to a provider against its configured limit."""

    provider: str
    requests: int
    seconds: float
    limit_per_s: float | None

    @property
    def achieved_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def watch(
    counts: Callable[[], dict[str, int]],
    total: int,
    console: Console,
    stop: threading.Event,
    refresh_s: float = 0.25,
) -> None:
    """Show one bar per status until every task is final or ``stop`` is set."""
    with Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bars = {
            status: progress.add_task(f"[{STATUS_STYLE[status]}]{status.value}", total=total)
            for status in TaskStatus
        }
        while True:
            current = counts()
            for status, bar in bars.items():
                progress.update(bar, completed=current.get(status.value, 0))
            # A task no longer listed was pruned (SLUICE_RETENTION_PERIOD), and pruning
            # deletes only final tasks: without this a long run outlived by its first
            # tasks' retention waited for ever.
            gone = max(0, total - sum(current.values()))
            final = sum(current.get(s.value, 0) for s in FINAL_STATUSES) + gone
            if final >= total or stop.is_set():
                return
            time.sleep(refresh_s)


def say_pruned(console: Console, created: int, summary: RunSummary) -> None:
    """Say how many of the tasks were pruned before the summary counted them (final
    tasks past the retention period leave the database; their statuses are not known)."""
    if summary.total < created:
        console.print(
            f"{created - summary.total} of the {created} tasks were final and pruned "
            "(SLUICE_RETENTION_PERIOD) before they were counted"
        )


def summary_table(summary: RunSummary, elapsed_s: float, rates: list[RateReport]) -> Table:
    """Counts per status, retries, pauses, achieved rate against the limit, every error."""
    table = Table(title=f"Sluice run: {summary.total} tasks in {elapsed_s:.1f}s", show_lines=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for status in TaskStatus:
        count = summary.by_status.get(status.value, 0)
        table.add_row(f"[{STATUS_STYLE[status]}]{status.value}", str(count))
    table.add_row("retries (transient failures)", str(summary.by_event.get("attempt_failed", 0)))
    table.add_row("rate-limit pauses", str(summary.by_event.get("rate_limited", 0)))
    if summary.by_event.get("unreachable"):
        table.add_row("provider unreachable (paused)", str(summary.by_event["unreachable"]))
    table.add_row(
        "lost answers looked up",
        str(summary.by_event.get("found", 0) + summary.by_event.get("lookup", 0)),
    )
    for rate in rates:
        limit = f" of {rate.limit_per_s:g}/s limit" if rate.limit_per_s else ""
        table.add_row(
            f"requests to {rate.provider}",
            f"{rate.requests} at {rate.achieved_per_s:.1f}/s{limit}",
        )
    for task_id, kind, message in summary.errors:
        # The provider's message is data, not Rich markup: keep its brackets as they are.
        table.add_row(f"[red]error[/red] task {task_id} ({kind or 'tracked'})", escape(message))
    return table


def rate_reports(
    runtime: Runtime, driver: EmbeddedDriver | None, elapsed: float
) -> list[RateReport]:
    """Requests this process sent per provider (worker processes keep their own counts)."""
    if driver is None:
        return []
    reports = []
    for name, provider in runtime.providers.items():
        sent = sum(
            count
            for key, count in driver.executor.stats.requests.items()
            if key.split(" ", 1)[0] == name
        )
        if not sent:
            continue
        rates = [s.rate.limit / s.rate.window_s for s in provider.limits_for("read", None)]
        reports.append(RateReport(name, sent, elapsed, min(rates) if rates else None))
    return reports
