"""``sluice status``: the console's overview as a live terminal table, until Ctrl-C.

The figures come from :class:`sluice.overview.OverviewService`, on the local database
(``SLUICE_DATABASE_URL``) or from a running API's ``GET /api/overview`` (``--api URL``):
the same data the web console's first page shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sluice import errors, masking
from sluice.operate import answer_detail, answer_json
from sluice.overview import busiest_accounts

REFRESH_S = 1.0
BAR_WIDTH = 20


def local_source(settings: Any) -> Callable[[], dict[str, Any]]:
    """The overview of the local database and the configured providers."""
    from sluice.overview import OverviewService
    from sluice.providers.registry import load_providers
    from sluice.runtime import with_default_providers
    from sluice.store import db

    settings = with_default_providers(settings)
    engine = db.make_engine(settings.database_url)
    db.require_schema(engine)
    service = OverviewService(engine, load_providers(settings), counts_ttl_s=2.0)
    return service.overview


def remote_source(api_url: str, api_key: str | None) -> Callable[[], dict[str, Any]]:
    """The overview a running API answers (``GET /api/overview``)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(base_url=api_url, timeout=10, headers=headers)
    where = masking.mask_urls(api_url)  # a password in the URL is never repeated

    def fetch() -> dict[str, Any]:
        try:
            answer = client.get("/api/overview")
        except httpx.HTTPError as exc:
            reason = " ".join(masking.mask(str(exc)).split()) or type(exc).__name__
            raise errors.SluiceError(f"cannot reach the Sluice API at {where}: {reason}") from None
        if answer.status_code != 200:
            detail = answer_detail(answer) if answer.content else ""
            raise errors.SluiceError(f"{where} answered {answer.status_code}: {detail}")
        data = answer_json(answer, api_url)
        if not isinstance(data, dict) or "providers" not in data:
            raise errors.SluiceError(
                f"{where} answered 200 without an overview: is it a Sluice API?"
            )
        return data

    return fetch


def bar(used: int, limit: int | None, width: int = BAR_WIDTH) -> Text:
    """``used`` of ``limit`` as a bar of block characters, red from 90 %."""
    if not limit:
        return Text(str(used))
    filled = min(width, round(width * used / limit))
    colour = "red" if used >= 0.9 * limit else "green"
    return Text("█" * filled, style=colour) + Text("░" * (width - filled), style="dim")


def render(data: dict[str, Any]) -> Group:
    """The overview as Rich tables: limit keys and quotas, then queues."""
    keys = Table(title=f"Sluice limits at {str(data.get('at', ''))[11:19]} UTC", expand=False)
    for column in ("provider", "limit key", "rate", "current window", "used", "state"):
        keys.add_column(column)
    for p in busiest_accounts([dict(p) for p in data["providers"]]):
        left = p.get("pause_left_s")
        state = (
            Text(
                f"paused {'until resumed' if left is None else f'{left} s'} "
                f"({p.get('pause_signal')})",
                style="bold red",
            )
            if p.get("paused")
            else Text("running", style="green")
        )
        flow = (
            f"{p.get('creates_per_s', 0)} creates/s, {p.get('polls_per_s', 0)} polls/s, "
            f"{p.get('errors_hour', 0)} errors/h"
        )
        if p.get("max_in_flight"):
            in_flight = p.get("in_flight")
            flow += f", in flight {'?' if in_flight is None else in_flight}/{p['max_in_flight']}"
        for index, k in enumerate(p.get("keys", [])):
            # Text, not str: Rich reads a str as markup, and an account's key holds a
            # tenant's payload value (``[/]`` raised MarkupError).
            keys.add_row(
                Text(p["name"] if index == 0 else ""),
                Text(k["key"]),
                Text(k.get("rate") or "per account"),
                bar(int(k.get("used", 0)), k.get("limit")),
                f"{k.get('used', 0)}/{k.get('limit') or '-'}",
                state if index == 0 else (Text("paused", style="red") if k.get("paused") else ""),
            )
        if p.get("more_accounts"):
            more = f"{p['more_accounts']} more account keys (GET /api/overview lists every one)"
            keys.add_row("", Text(more, style="dim"), "", "", "", "")
        for q in p.get("quotas", []):
            reset = q.get("resets_at_local") or f"{str(q.get('resets_at', ''))[:16]} UTC"
            keys.add_row(
                "",
                Text(f"quota {q['key']}"),
                Text(q.get("quota_shown") or q.get("quota", "")),
                bar(int(q["used"]), q["limit"]),
                f"{q['used']}/{q['limit']}",
                Text(f"spent: waits for the reset at {reset}", style="bold red")
                if q.get("waiting")
                else Text(f"resets {reset}", style="dim"),
            )
        if p.get("keys"):
            keys.add_row("", Text(flow, style="dim"), "", "", "", "")
    queue = Table(title="Queue (tasks by status and phase)")
    for column in ("provider", "status", "phase", "tasks"):
        queue.add_column(column, justify="right" if column == "tasks" else "left")
    for p in data["providers"]:
        for index, row in enumerate(p.get("queue", [])):
            queue.add_row(
                Text(p["name"] if index == 0 else ""),
                Text(row["status"]),
                Text(row["phase"]),
                str(row["count"]),
            )
    return Group(keys, queue)


def run_status(
    source: Callable[[], dict[str, Any]],
    console: Console,
    *,
    refresh_s: float = REFRESH_S,
    once: bool = False,
) -> int:
    """Show the overview, refreshed every ``refresh_s``, until Ctrl-C (or once)."""
    if once:
        console.print(render(source()))
        return 0
    try:
        with Live(render(source()), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(refresh_s)
                live.update(render(source()))
    except KeyboardInterrupt:
        return 0
