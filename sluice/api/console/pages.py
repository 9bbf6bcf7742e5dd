"""The console's pages: overview (live), a provider's budgets (quotas and fair shares,
live), tasks (filters, keyset pages, bulk actions), task detail, bulk jobs, audit, and the
live event streams.

Every route here is a :class:`~sluice.api.console.routes.ConsoleRoute` (session, CSRF on
POST, security headers). Who may see what follows the API's rules:

- provider-wide views (limits, pauses, usage, the live stream, audit) need an operator or
  admin key (or the open loopback mode); a viewer's or submitter's key sees its own
  tenant's tasks and counts only;
- a provider's page shows operators and admins its live card, every quota and every
  fairness key's share; a tenant's key sees only its own fairness key's line, and only
  when the provider's fairness key is the tenant (see
  :meth:`sluice.overview.OverviewService.budgets`);
- bulk actions need a submitter key or above, and act within the key's tenant.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from sluice import errors, masking, submissions
from sluice.api.console import session as web
from sluice.api.console.charts import sparkline
from sluice.api.console.feed import LiveFeed, sse_message
from sluice.api.console.routes import (
    Viewer,
    _form_page,
    _page,
    _when,
    current_viewer,
    render_html,
    router,
    unmetered,
)
from sluice.api.deps import ApiContext
from sluice.clock import as_utc
from sluice.controls import pause_end, pin_rate
from sluice.domain import MAX_ID, Actor, Phase, Role, Task, TaskStatus
from sluice.engine.quotas import local_time
from sluice.overview import busiest_accounts
from sluice.store.bulkjobs import ACTIONS
from sluice.store.filters import TaskFilter

PAGE_SIZE = 50
KEEPALIVE_S = 15.0
RECHECK_S = 5.0
"""A live stream reads its viewer again before each message and at least this often: a
key revoked or a session ended stops the stream (it once streamed on until closed)."""
STAFF = (Role.OPERATOR, Role.ADMIN)
WRITERS = (Role.SUBMITTER, Role.OPERATOR, Role.ADMIN)
FILTER_FIELDS = (
    "status",
    "phase",
    "provider",
    "kind",
    "parent_id",
    "error_text",
    "created_from",
    "created_to",
)


# -- who may see what ------------------------------------------------------------------


def _viewer(request: Request) -> Viewer:
    viewer: Viewer = request.state.viewer
    return viewer


def provider_wide(viewer: Viewer) -> bool:
    """Operators, admins and the open loopback mode see every provider and tenant."""
    return viewer.open_mode or (viewer.key is not None and viewer.key.role in STAFF)


def may_act(viewer: Viewer) -> bool:
    return viewer.open_mode or (viewer.key is not None and viewer.key.role in WRITERS)


def tenant_of(viewer: Viewer) -> str | None:
    """The tenant a viewer's queries are limited to (None: every tenant)."""
    return None if viewer.key is None else viewer.key.tenant


def _context(request: Request) -> ApiContext | None:
    return getattr(request.app.state, "context", None)


def _render(request: Request, template: str, status_code: int = 200, **values: Any) -> Response:
    viewer = _viewer(request)
    return _form_page(
        request,
        viewer,
        template,
        status_code,
        who=viewer,
        key=viewer.key,
        staff=provider_wide(viewer),
        may_act=may_act(viewer),
        logout=request.url_for("console_logout").path,
        when=_when,
        **values,
    )


def _refuse(request: Request, message: str, status_code: int = 403) -> Response:
    return web.secured(_page("refused.html", status_code, message=message))


# -- overview ------------------------------------------------------------------------------


def overview_values(data: dict[str, Any]) -> dict[str, Any]:
    """The overview's data with what the templates draw: bars and hour charts (of the
    busiest account keys only)."""
    busiest_accounts(data["providers"])
    for provider in data["providers"]:
        for key in provider.get("keys", []):
            key["chart"] = sparkline(key.get("history") or [])
        provider["queue_total"] = sum(row["count"] for row in provider.get("queue", []))
    return data


def _feed(request: Request) -> LiveFeed:
    feed: LiveFeed | None = getattr(request.app.state, "feed", None)
    if feed is None:
        app = request.app

        def render() -> str:
            context: ApiContext = app.state.context
            assert context.overview is not None
            return render_html("_live.html", providers=busiest_accounts(context.overview.live()))

        feed = LiveFeed(render)
        request.app.state.feed = feed
    return feed


@router.get("", name="console_home")
def home(request: Request) -> Response:
    """The overview: every provider and limit key, live (operators), or the tenant's queue."""
    viewer = _viewer(request)
    context = _context(request)
    data: dict[str, Any] | None = None
    live = ""
    if context is not None and context.overview is not None:
        staff = provider_wide(viewer)
        data = overview_values(context.overview.overview(tenant_of(viewer), provider_wide=staff))
        if staff:  # the live part from the same figures (one read of pauses and usage)
            configured = [p for p in data["providers"] if p.get("configured")]
            live = render_html("_live.html", providers=configured)
    targets = _control_targets(context) if context is not None else {}
    return _render(request, "overview.html", data=data, live=live, nav="overview", targets=targets)


@router.get("/overview/history", name="console_overview_history")
def overview_history(request: Request) -> Response:
    """The slow part of the overview (hour charts, queue), refreshed by the page every 10 s."""
    viewer = _viewer(request)
    context = _context(request)
    if context is None or context.overview is None:
        return _refuse(request, "the overview is not available here", 404)
    data = overview_values(
        context.overview.overview(tenant_of(viewer), provider_wide=provider_wide(viewer))
    )
    return _render(request, "_history.html", data=data)


@router.get("/events", name="console_events")
@unmetered
async def events(request: Request) -> Response:
    """Server-Sent Events: the overview's live part whenever it changes (operators)."""
    viewer = _viewer(request)
    if not provider_wide(viewer):
        return _refuse(request, "the live overview needs an operator or admin key")
    return _stream(request, _feed(request))


def _stream(request: Request, feed: LiveFeed) -> Response:
    """A live part as Server-Sent Events: each change of ``feed``'s HTML, and keepalives,
    for as long as the viewer may still see it (operators and admins, or the open mode).

    The viewer is read again (:func:`current_viewer`: the session and its key, from the
    database) before each message and at least every :data:`RECHECK_S`; once it may not,
    the stream ends, and the browser's reconnection is refused like any request.
    """
    subscriber = feed.subscribe()

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 1000\n\n"
            quiet_since = time.monotonic()
            while True:
                try:
                    html: str | None = await asyncio.wait_for(subscriber.queue.get(), RECHECK_S)
                except TimeoutError:
                    html = None
                if not provider_wide(await current_viewer(request)):
                    return
                if html is not None:
                    yield sse_message("live", html)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    quiet_since = time.monotonic()
        finally:
            feed.unsubscribe(subscriber)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )


# -- a provider: its card, quotas and fair shares ------------------------------------------


def _span(seconds: float) -> str:
    """A duration as a person reads it: ``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _clock_time(iso: str | None, zone: str | None) -> str | None:
    """An ISO moment as ``2026-12-03 00:00 PST (08:00 UTC)``, or in UTC alone."""
    if iso is None:
        return None
    moment = datetime.fromisoformat(iso)
    utc = moment.strftime("%Y-%m-%d %H:%M UTC")
    if zone is None:
        return utc
    return f"{local_time(moment, zone)} ({moment:%H:%M} UTC)"


def budget_values(budgets: dict[str, Any]) -> dict[str, Any]:
    """A provider's budgets with what the templates draw: times on each quota's own clock,
    time left, and each fairness key's share in percent; the card's busiest account keys."""
    if budgets.get("card"):
        busiest_accounts([budgets["card"]])
    at = datetime.fromisoformat(budgets["at"])
    for quota in budgets["quotas"]:
        quota["resets_shown"] = _clock_time(quota["resets_at"], quota["zone"])
        quota["resets_in"] = _span(quota["resets_in_s"])
        runs_out = quota["runs_out_at"]
        quota["runs_out_shown"] = _clock_time(runs_out, quota["zone"])
        quota["runs_out_in"] = (
            None
            if runs_out is None
            else _span((datetime.fromisoformat(runs_out) - at).total_seconds())
        )
    active = sum(s["weight"] for s in budgets["shares"] if s["waiting"] > 0)
    for share in budgets["shares"]:
        share["percent"] = round(share["share"] * 100, 1)
        entitled = share["weight"] / active if active and share["waiting"] > 0 else None
        share["entitled_percent"] = (
            None if entitled is None or not budgets["provider_wide"] else round(entitled * 100, 1)
        )
    return budgets


def _provider_feed(request: Request, name: str) -> LiveFeed:
    """The shared feed of provider ``name``'s live part (one per configured provider)."""
    feeds: dict[str, LiveFeed] | None = getattr(request.app.state, "provider_feeds", None)
    if feeds is None:
        feeds = {}
        request.app.state.provider_feeds = feeds
    feed = feeds.get(name)
    if feed is None:
        app = request.app

        def render() -> str:
            context: ApiContext = app.state.context
            assert context.overview is not None
            budgets = context.overview.budgets(name)
            assert budgets is not None
            return render_html("_provider_live.html", b=budget_values(budgets))

        feed = feeds[name] = LiveFeed(render)
    return feed


def _budgets(request: Request, name: str) -> dict[str, Any] | None:
    viewer = _viewer(request)
    context = _context(request)
    if context is None or context.overview is None:
        return None
    found = context.overview.budgets(name, tenant_of(viewer), provider_wide=provider_wide(viewer))
    return None if found is None else budget_values(found)


@router.get("/providers/{name}", name="console_provider")
def provider_page(request: Request, name: str) -> Response:
    """A provider: its live card, each quota (use, reset, forecast, spent) and how its
    fairness keys share its budget; live for operators, a tenant's own line otherwise."""
    budgets = _budgets(request, name[:64])
    if budgets is None:
        return _refuse(request, _unknown(request, name), 404)
    live = render_html("_provider_live.html", b=budgets) if budgets["provider_wide"] else ""
    return _render(request, "provider.html", nav="overview", b=budgets, live=live)


@router.get("/providers/{name}/events", name="console_provider_events")
@unmetered
async def provider_events(request: Request, name: str) -> Response:
    """Server-Sent Events: the provider page's live part whenever it changes (operators)."""
    if not provider_wide(_viewer(request)):
        return _refuse(request, "the live provider view needs an operator or admin key")
    context = _context(request)
    if context is None or context.overview is None or name not in context.overview.providers:
        return _refuse(request, _unknown(request, name), 404)
    return _stream(request, _provider_feed(request, name))


def _unknown(request: Request, name: str) -> str:
    context = _context(request)
    known = sorted(context.overview.providers) if context and context.overview else []
    return f"unknown provider {name[:64]!r}; known: {', '.join(known) or 'none'}"


# -- tasks -----------------------------------------------------------------------------------


def _task_id(text: str) -> int | None:
    """``text`` as a task id (ASCII digits, 1..MAX_ID), else None. ``str.isdigit`` alone
    takes '²' (int() then raised: a 500) and any length (SQLite's integer overflowed)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 16:
        return None
    number = int(text)
    return number if 1 <= number <= MAX_ID else None


def parse_filter(params: Any) -> tuple[TaskFilter, dict[str, str], list[str]]:
    """The filter from a query string or form; what was typed (to show back); problems."""
    given = {name: str(params.get(name) or "").strip() for name in FILTER_FIELDS}
    problems: list[str] = []
    for name, text in given.items():
        unstorable = submissions.unstorable(text)
        if unstorable is not None:  # PostgreSQL refuses NUL in a query: it was a 500
            problems.append(f"{name}: {unstorable}")
            given[name] = ""

    def choice(name: str, kind: Any) -> Any:
        if not given[name]:
            return None
        try:
            return kind(given[name])
        except ValueError:
            problems.append(f"{name}: unknown value {given[name]!r}")
            return None

    def when(name: str) -> datetime | None:
        if not given[name]:
            return None
        try:
            moment = datetime.fromisoformat(given[name])
        except ValueError:
            problems.append(f"{name}: not a date and time: {given[name]!r}")
            return None
        try:
            return as_utc(moment)
        except errors.InvalidValue as exc:  # e.g. year 1 east of UTC: it was a 500
            problems.append(f"{name}: {exc}")
            return None

    parent: int | None = None
    if given["parent_id"]:
        parent = _task_id(given["parent_id"])
        if parent is None:
            problems.append(f"parent: not a task id: {given['parent_id']!r}")
    task_filter = TaskFilter(
        status=choice("status", TaskStatus),
        phase=choice("phase", Phase),
        provider=given["provider"][:64] or None,
        kind=given["kind"][:64] or None,
        parent_id=parent,
        error_text=given["error_text"][:200] or None,
        created_from=when("created_from"),
        created_to=when("created_to"),
    )
    return task_filter, given, problems


def _query(given: dict[str, str], **more: Any) -> str:
    pairs = {k: v for k, v in given.items() if v}
    pairs.update({k: v for k, v in more.items() if v is not None})
    return urlencode(pairs)


def _tasks_page(request: Request, params: Any, **extra: Any) -> Response:
    viewer = _viewer(request)
    context = _context(request)
    if context is None:
        return _refuse(request, "the task list is not available here", 404)
    task_filter, given, problems = parse_filter(params)
    after = str(params.get("after") or "")
    after_id = _task_id(after) or 0
    items: list[Task] = []
    more = False
    if not problems:
        items, more = context.repo.find(
            task_filter, tenant=tenant_of(viewer), after_id=after_id, limit=PAGE_SIZE
        )
    jobs = context.bulk.recent(5, tenant_of(viewer)) if context.bulk is not None else []
    return _render(
        request,
        "tasks.html",
        status_code=422 if problems else 200,
        nav="tasks",
        items=items,
        given=given,
        problems=problems,
        statuses=[s.value for s in TaskStatus],
        phases=[p.value for p in Phase],
        providers=sorted(context.catalog.providers),
        next_query=_query(given, after=items[-1].id) if more and items else None,
        first_query=_query(given) if after_id else None,
        filter_query=_query(given),
        jobs=jobs,
        actions=ACTIONS,
        **extra,
    )


@router.get("/tasks", name="console_tasks")
def task_list(request: Request) -> Response:
    """Tasks matching the filters, 50 a page in id order (``after`` = the last id shown)."""
    return _tasks_page(request, request.query_params)


async def _bulk_form(request: Request) -> tuple[Viewer, FormData] | Response:
    """The viewer and the form of a bulk action, or the refusal if the viewer may not act."""
    viewer = _viewer(request)
    form = await request.form()
    if not may_act(viewer):
        return _refuse(request, "bulk actions need a submitter, operator or admin key")
    return viewer, form


@router.post("/tasks/preview", name="console_bulk_preview")
async def bulk_preview(request: Request) -> Response:
    """Count what a bulk retry or cancel of the filter would change, and ask to confirm."""
    posted = await _bulk_form(request)
    if isinstance(posted, Response):
        return posted
    viewer, form = posted
    # The count may take seconds with a million tasks: never on the event loop, where it
    # held up every request and live stream of the process (as did the two routes below).
    return await run_in_threadpool(_preview, request, viewer, form)


def _preview(request: Request, viewer: Viewer, form: FormData) -> Response:
    context = _context(request)
    action = str(form.get("action") or "")
    if context is None or context.bulk is None or action not in ACTIONS:
        return _refuse(request, f"unknown bulk action {action!r}; use retry or cancel", 422)
    task_filter, _given, problems = parse_filter(form)
    if problems:
        return _tasks_page(request, form)
    preview = context.bulk.preview(action, task_filter, tenant_of(viewer))
    return _tasks_page(request, form, preview=preview)


@router.post("/tasks/bulk", name="console_bulk_start")
async def bulk_start(request: Request) -> Response:
    """Start the confirmed bulk action on the previewed tasks (ids up to the preview's)."""
    posted = await _bulk_form(request)
    if isinstance(posted, Response):
        return posted
    viewer, form = posted
    return await run_in_threadpool(_start, request, viewer, form)


def _start(request: Request, viewer: Viewer, form: FormData) -> Response:
    context = _context(request)
    action = str(form.get("action") or "")
    max_id_text = str(form.get("max_id") or "")
    if (
        context is None
        or context.bulk is None
        or action not in ACTIONS
        or _task_id(max_id_text) is None
    ):
        return _refuse(request, "the confirmation was incomplete; nothing was changed", 422)
    task_filter, _given, problems = parse_filter(form)
    if problems:
        return _tasks_page(request, form)
    tenant = tenant_of(viewer)
    preview = context.bulk.preview(action, task_filter, tenant, upto=_task_id(max_id_text))
    job = context.bulk.start(action, task_filter, tenant, preview, _actor(viewer))
    if context.bulk_runner is not None:
        context.bulk_runner.wake()
    target = request.url_for("console_job", job_id=str(job.id)).path
    return RedirectResponse(target, status_code=303)


def _actor(viewer: Viewer) -> Actor:
    if viewer.key is not None:
        return Actor.of_key(viewer.key)
    return Actor("loopback")


@router.get("/jobs/{job_id}", name="console_job")
def job_page(request: Request, job_id: int) -> Response:
    """A bulk job's progress (the page refreshes itself until the job is done)."""
    viewer = _viewer(request)
    context = _context(request)
    if context is None or context.bulk is None:
        return _refuse(request, "bulk jobs are not available here", 404)
    try:
        job = context.bulk.get(job_id, tenant_of(viewer))
    except errors.BulkJobNotFound as exc:
        return _refuse(request, str(exc), 404)
    return _render(
        request,
        "job.html",
        nav="tasks",
        job=job,
        filter_json=json.dumps(job.filter.to_json()),
        filter_query=_query({k: str(v) for k, v in job.filter.to_json().items()}),
    )


@router.get("/tasks/{task_id}", name="console_task")
def task_page(request: Request, task_id: int) -> Response:
    """One task: masked payload, external id, parents and children, events, explanation."""
    viewer = _viewer(request)
    context = _context(request)
    if context is None:
        return _refuse(request, "tasks are not available here", 404)
    tenant = tenant_of(viewer)
    try:
        task = context.repo.get(task_id, tenant=tenant)
        history = context.repo.events(task_id, tenant=tenant)
    except errors.TaskNotFound as exc:
        return _refuse(request, str(exc), 404)
    # A family never spans tenants (the store refuses such a parent); filtered anyway, so
    # a row made some other way shows no trace of another tenant's task.
    ancestors: list[Task] = []
    parent_id = task.parent_id
    while parent_id is not None and len(ancestors) < 20:
        try:
            parent = context.repo.get(parent_id, tenant=tenant)
        except errors.TaskNotFound:
            break
        ancestors.insert(0, parent)
        parent_id = parent.parent_id
    tree = _children_tree(context, task.id, depth=3, tenant=tenant)
    payload = masking.scrub(context.catalog.shown_payload(task.provider, task.payload))
    explanation = _explain(request, context, task)
    return _render(
        request,
        "task.html",
        nav="tasks",
        task=task,
        payload=json.dumps(payload, indent=2, sort_keys=True, default=str),
        ancestors=ancestors,
        tree=tree,
        events=history,
        explanation=explanation,
    )


def _children_tree(
    context: ApiContext, task_id: int, depth: int, tenant: str | None
) -> list[dict[str, Any]]:
    if depth == 0:
        return []
    return [
        {"task": child, "children": _children_tree(context, child.id, depth - 1, tenant)}
        for child in context.repo.children(task_id, tenant=tenant, limit=100)
    ]


def _explain(request: Request, context: ApiContext, task: Task) -> dict[str, Any] | None:
    """Why the task is where it is (:mod:`sluice.explain`), as label -> text for the page."""
    try:
        explained = context.explainer.explain(task.id, tenant=tenant_of(_viewer(request)))
    except errors.TaskNotFound:
        return None
    details: dict[str, str] = {"state": explained.state}
    parts = ("parent", "pause", "quota", "slot", "in_flight", "backoff", "lookup", "poll", "final")
    for name in parts:
        part = getattr(explained, name)
        if part is not None:
            details[name.replace("_", " ")] = ", ".join(
                f"{field.replace('_', ' ')} {_shown(value)}"
                for field, value in vars(part).items()
                if value is not None and value != ""
            )
    return {
        "summary": explained.summary,
        "details": details,
        "rates": [
            {
                "key": r.key,
                "configured": r.configured,
                "in_force": r.in_force,
                "source": r.source,
                "reason": r.reason,
            }
            for r in explained.rates
        ],
    }


def _shown(value: Any) -> str:
    if isinstance(value, datetime):
        return _when(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(getattr(value, "value", value))


# -- controls ------------------------------------------------------------------------------


def _control_targets(context: ApiContext) -> dict[str, list[str]]:
    """What can be paused (providers and their configured keys) and pinned (keys)."""
    pausable: list[str] = []
    pinnable: list[str] = []
    for name, provider in sorted(context.controls.providers.items()):
        pausable.append(name)
        keys = sorted(
            {spec.key for access in ("write", "read") for spec in provider.limits_for(access, None)}
        )
        pausable += [k for k in keys if k != name]
        pinnable += keys
    return {"pausable": pausable, "pinnable": pinnable}


@router.post("/controls", name="console_control")
async def control(request: Request) -> Response:
    """Pause, resume, pin or unpin from the overview (operators and admins); audited."""
    viewer = _viewer(request)
    form = await request.form()
    if not provider_wide(viewer):
        return _refuse(request, "controls need an operator or admin key")
    return await run_in_threadpool(_control, request, viewer, form)


MAX_TARGET = 255
"""The longest provider or limit key a control names (as the API's ``LimitKey``)."""


def _control(request: Request, viewer: Viewer, form: FormData) -> Response:
    context = _context(request)
    if context is None:
        return _refuse(request, "controls are not available here", 404)
    action = str(form.get("action") or "")
    target = str(form.get("target") or "").strip()
    reason = str(form.get("reason") or "")
    for name, text in (("target", target), ("reason", reason)):
        unstorable = submissions.unstorable(text)
        if unstorable is not None:  # PostgreSQL refuses NUL in text: it was a 500
            return _refuse(request, f"{name}: {unstorable}", 422)
    if len(target) > MAX_TARGET:
        # As the API's routes refuse it; the refusal quoted all of it back (5,000 characters).
        return _refuse(request, f"target: at most {MAX_TARGET} characters, got {len(target)}", 422)
    controls = context.controls
    actor = _actor(viewer)
    try:
        if action == "pause":
            duration = str(form.get("duration") or "").strip() or None
            end = pause_end(controls.clock.now(), duration=duration)
            controls.pause(target, reason=reason, until=end, actor=actor)
        elif action == "resume":
            controls.resume(target, actor=actor)
        elif action == "pin":
            rate = pin_rate(str(form.get("rate") or "").strip())
            controls.pin(target, rate, reason=reason, actor=actor)
        elif action == "unpin":
            controls.unpin(target, actor=actor)
        else:
            return _refuse(request, f"unknown control {action!r}", 422)
    except errors.UnknownLimit as exc:
        return _refuse(request, str(exc), 404)
    except errors.InvalidControl as exc:
        return _refuse(request, str(exc), 422)
    return RedirectResponse(request.url_for("console_home").path, status_code=303)


# -- audit -------------------------------------------------------------------------------------


@router.get("/audit", name="console_audit")
def audit_page(request: Request) -> Response:
    """Audited actions, newest first (operators and admins)."""
    viewer = _viewer(request)
    if not provider_wide(viewer):
        return _refuse(request, "the audit trail needs an operator or admin key")
    context = _context(request)
    if context is None:
        return _refuse(request, "the audit trail is not available here", 404)
    action = str(request.query_params.get("action") or "").strip()[:64] or None
    unstorable = submissions.unstorable(action)
    if unstorable is not None:  # PostgreSQL refuses NUL in a query: it was a 500
        return _refuse(request, f"action: {unstorable}", 422)
    cursor = request.query_params.get("cursor") or None
    try:
        page = context.audit.list(action=action, cursor=cursor, limit=PAGE_SIZE)
    except errors.InvalidTask as exc:
        return _refuse(request, str(exc), 422)
    return _render(
        request,
        "audit.html",
        nav="audit",
        records=page.items,
        action=action or "",
        next_cursor=page.next_cursor,
    )


@router.get("/account", name="console_account")
def account(request: Request) -> Response:
    """Who is signed in: key, role, tenant, until when; and the sign-out button."""
    viewer = _viewer(request)
    return _render(request, "home.html", nav="account", session=viewer.session)
