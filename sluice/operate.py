"""``sluice pause|resume|pin|unpin|explain|rates|tasks``: on the local database, or against a
running API.

Locally (no ``--api``) the command opens SLUICE_DATABASE_URL and the limiter of
SLUICE_REDIS_URL, acts as the actor ``cli`` and writes the same audit record the API
would; running workers pick the change up from the database within a second. With
``--api URL`` it calls the API with ``--key`` (an operator's key for the controls).
Either way the answer is printed from the same JSON, so both read alike.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import httpx

from sluice import errors, masking
from sluice.domain import LOCAL_ACTOR, TaskStatus
from sluice.settings import Settings

ACTIONS = ("pause", "resume", "pin", "unpin")


def control_local(
    settings: Settings,
    action: str,
    target: str,
    *,
    reason: str | None = None,
    duration: str | None = None,
    until: datetime | None = None,
    rate: str | None = None,
) -> dict[str, Any]:
    """Run one control action on the local database; its result as the API shows it."""
    from sluice.controls import pause_end, pin_rate
    from sluice.runtime import build_runtime

    runtime = build_runtime(settings, migrate=False)
    try:
        controls = runtime.controls
        if action == "pause":
            end = pause_end(controls.clock.now(), duration=duration, until=until)
            result = controls.pause(target, reason=reason or "", until=end, actor=LOCAL_ACTOR)
        elif action == "resume":
            result = controls.resume(target, actor=LOCAL_ACTOR)
        elif action == "pin":
            result = controls.pin(
                target, pin_rate(rate or ""), reason=reason or "", actor=LOCAL_ACTOR
            )
        else:
            result = controls.unpin(target, actor=LOCAL_ACTOR)
        shown: dict[str, Any] = _json(dataclasses.asdict(result))
        return shown
    finally:
        runtime.close()


def control_remote(
    api_url: str,
    api_key: str | None,
    action: str,
    target: str,
    *,
    reason: str | None = None,
    duration: str | None = None,
    until: datetime | None = None,
    rate: str | None = None,
) -> dict[str, Any]:
    """Run one control action through the API at ``api_url``."""
    kind = "providers" if ":" not in target else "limits"
    body: dict[str, Any] | None = None
    if action == "pause":
        body = {"reason": reason or "", "duration": duration}
        if until is not None:
            body["until"] = until.isoformat()
    elif action == "pin":
        body = {"rate": rate or "", "reason": reason or ""}
    if kind == "providers" and action in ("pin", "unpin"):
        kind = "limits"
    return _call(api_url, api_key, "POST", f"/api/{kind}/{target}/{action}", body)


def explain_local(settings: Settings, task_id: int) -> dict[str, Any]:
    """The explanation of task ``task_id`` from the local database, as the API shows it."""
    from sluice.api.schemas import ExplainOut
    from sluice.explain import Explainer
    from sluice.runtime import build_runtime

    runtime = build_runtime(settings, migrate=False)
    try:
        explained = Explainer(
            runtime.repo, runtime.controls, fair_share=runtime.settings.fair_share
        ).explain(task_id)
        return ExplainOut.model_validate(explained).model_dump(mode="json")
    finally:
        runtime.close()


def explain_remote(api_url: str, api_key: str | None, task_id: int) -> dict[str, Any]:
    return _call(api_url, api_key, "GET", f"/api/tasks/{task_id}/explain", None)


RATES_PATH = "/api/rates"
RATES_COLUMNS = ("provider", "key", "configured", "in force", "source", "since", "reason")
_RATE_FIELDS = {"provider", "key", "configured_per_s", "in_force_per_s", "source", "reason"}


def rates_local(settings: Settings) -> list[dict[str, Any]]:
    """Each limit key's configured rate beside the rate in force, from the local database,
    as ``GET /api/rates`` shows them."""
    from sluice.api.schemas import KeyRateOut
    from sluice.engine.adaptive import rates_in_force_now
    from sluice.runtime import build_runtime

    runtime = build_runtime(settings, migrate=False)
    try:
        rows = rates_in_force_now(runtime.providers, runtime.rates, runtime.learner)
        return [KeyRateOut.model_validate(row).model_dump(mode="json") for row in rows]
    finally:
        runtime.close()


def rates_remote(api_url: str, api_key: str | None) -> list[dict[str, Any]]:
    """The same rows from the API at ``api_url`` (``GET /api/rates``, an operator's key)."""
    missing = "run `sluice rates` on its host, or upgrade it"
    shown = _answer(api_url, api_key, "GET", RATES_PATH, None, shape=list, missing=missing)
    if not all(isinstance(row, dict) and row.keys() >= _RATE_FIELDS for row in shown):
        where = masking.mask_urls(api_url)
        raise errors.SluiceError(f"{where} answered without the rates: is it a Sluice API?")
    rows: list[dict[str, Any]] = shown
    return rows


def describe_rates(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The cells ``sluice rates`` prints for ``rows`` (columns :data:`RATES_COLUMNS`), the
    same whether the rows came from the local database or the API."""
    cells: list[tuple[str, ...]] = []
    for row in rows:
        since = row.get("since")
        cells.append(
            (
                str(row["provider"]),
                str(row["key"]),
                f"{row['configured_per_s']:.3g}/s",
                f"{row['in_force_per_s']:.3g}/s",
                str(row["source"]),
                "-" if since is None else _minute(since),
                str(row["reason"]),
            )
        )
    return cells


TASKS_PATH = "/api/tasks"
TASKS_COLUMNS = ("id", "provider", "kind", "status", "external id", "attempts", "updated", "error")
_TASK_FIELDS = {
    "id",
    "provider",
    "kind",
    "status",
    "external_id",
    "attempts",
    "updated_at",
    "validation_error",
}
MAX_TASKS_PAGE = 1000
"""The most tasks one page of ``sluice tasks`` (and of ``GET /api/tasks``) holds."""
MAX_FILTER_CHARS = 64
"""The longest ``--provider`` or ``--kind`` (``GET /api/tasks`` refuses longer ones)."""


@dataclasses.dataclass(frozen=True)
class TaskQuery:
    """One page of ``GET /api/tasks``: its filters, the cursor to continue after, its size."""

    status: TaskStatus | None = None
    provider: str | None = None
    kind: str | None = None
    parent_id: int | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    cursor: str | None = None
    limit: int = 50

    def params(self) -> dict[str, str | int]:
        """The query parameters of ``GET /api/tasks`` (unset ones left out)."""
        values: dict[str, str | int | None] = {
            "status": None if self.status is None else self.status.value,
            "provider": self.provider,
            "kind": self.kind,
            "parent_id": self.parent_id,
            "created_from": None if self.created_from is None else self.created_from.isoformat(),
            "created_to": None if self.created_to is None else self.created_to.isoformat(),
            "cursor": self.cursor,
            "limit": self.limit,
        }
        return {name: value for name, value in values.items() if value is not None}


def task_status(value: str) -> TaskStatus:
    """``--status``: one of the prototype's statuses (any case; ``-`` or ``_`` for the
    space), or InvalidValue in one line naming the value and the allowed ones."""
    wanted = " ".join(value.replace("-", " ").replace("_", " ").split()).casefold()
    for status in TaskStatus:
        if status.value.casefold() == wanted:
            return status
    allowed = ", ".join(status.value for status in TaskStatus)
    raise errors.InvalidValue(f"--status: {value!r} is not a task status; one of: {allowed}")


def iso_moment(option: str, value: str) -> datetime:
    """``--since``/``--until``: an ISO date or date and time, UTC if it names no zone, as
    aware UTC; InvalidValue in one line otherwise (as ``GET /api/tasks`` reads its
    ``created_from``/``created_to``)."""
    from sluice.clock import as_utc

    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise errors.InvalidValue(
            f"{option}: {value!r} is not an ISO date and time "
            "(e.g. 2026-12-07, 2026-12-07T09:30 in UTC, or 2026-12-07T09:30+01:00)"
        ) from None
    try:
        return as_utc(parsed)
    except errors.InvalidValue as exc:
        raise errors.InvalidValue(f"{option}: {exc}") from None


def task_query(
    *,
    status: str | None = None,
    provider: str | None = None,
    kind: str | None = None,
    parent_id: int | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> TaskQuery:
    """The page ``sluice tasks`` asks for, each option checked in one line before either
    the local database or the API is asked (so both refuse alike)."""
    from sluice.store.rows import decode_cursor

    for option, text in (("--provider", provider), ("--kind", kind)):
        if text is not None and not 1 <= len(text) <= MAX_FILTER_CHARS:
            raise errors.InvalidValue(f"{option}: 1 to {MAX_FILTER_CHARS} characters")
    if not 1 <= limit <= MAX_TASKS_PAGE:
        raise errors.InvalidValue(f"--limit must be between 1 and {MAX_TASKS_PAGE}, got {limit}")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except errors.InvalidTask:
            raise errors.InvalidValue(
                f"--cursor: {cursor!r} is not a cursor a listing printed"
            ) from None
    return TaskQuery(
        status=None if status is None else task_status(status),
        provider=provider,
        kind=kind,
        parent_id=parent_id,
        created_from=None if since is None else iso_moment("--since", since),
        created_to=None if until is None else iso_moment("--until", until),
        cursor=cursor,
        limit=limit,
    )


def tasks_local(settings: Settings, query: TaskQuery) -> dict[str, Any]:
    """One page of tasks from the local database (every tenant's), as ``GET /api/tasks``
    answers it: the repository's listing the route calls, each task as its ``TaskOut``."""
    from sluice.api.schemas import TaskOut, TaskPage
    from sluice.runtime import build_runtime

    runtime = build_runtime(settings, migrate=False)
    try:
        page = runtime.repo.list_tasks(
            status=query.status,
            provider=query.provider,
            kind=query.kind,
            parent_id=query.parent_id,
            created_from=query.created_from,
            created_to=query.created_to,
            cursor=query.cursor,
            limit=query.limit,
        )
        shown = TaskPage(
            items=[TaskOut.of(task, runtime.catalog) for task in page.items],
            next_cursor=page.next_cursor,
        )
        return shown.model_dump(mode="json")
    finally:
        runtime.close()


def tasks_remote(api_url: str, api_key: str | None, query: TaskQuery) -> dict[str, Any]:
    """The same page from the API at ``api_url`` (``GET /api/tasks``: a tenant's key sees
    its own tenant's tasks, an operator's or admin's every tenant's)."""
    shown = _answer(api_url, api_key, "GET", TASKS_PATH, None, params=query.params())
    items = shown.get("items")
    cursor = shown.get("next_cursor")
    if not (
        isinstance(items, list)
        and all(isinstance(item, dict) and item.keys() >= _TASK_FIELDS for item in items)
        and (cursor is None or isinstance(cursor, str))
    ):
        where = masking.mask_urls(api_url)
        raise errors.SluiceError(f"{where} answered without a page of tasks: is it a Sluice API?")
    page: dict[str, Any] = shown
    return page


def describe_tasks(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The cells ``sluice tasks`` prints for a page's ``items`` (columns
    :data:`TASKS_COLUMNS`), the same whether read on the local database or the API; the
    error is the validation error's first line that is not blank."""
    cells: list[tuple[str, ...]] = []
    for item in items:
        error = item.get("validation_error") or ""
        first = next((line.strip() for line in error.splitlines() if line.strip()), None)
        cells.append(
            (
                str(item["id"]),
                str(item["provider"]),
                _or_dash(item.get("kind")),
                str(item["status"]),
                _or_dash(item.get("external_id")),
                str(item["attempts"]),
                _second(str(item["updated_at"])),
                _or_dash(first),
            )
        )
    return cells


def more_tasks(next_cursor: str) -> str:
    """The last line of a full page: how to see the next one."""
    return f"more tasks: add --cursor {next_cursor} (with the same filters) for the next page"


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _second(moment: str) -> str:
    """An ISO time of the API's JSON in UTC, to the second."""
    parsed = datetime.fromisoformat(moment)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC)
    return parsed.strftime("%Y-%m-%d %H:%M:%SZ")


def _minute(moment: str) -> str:
    """An ISO time of the API's JSON as the CLI's tables write times (UTC, to the minute)."""
    return datetime.fromisoformat(moment).strftime("%Y-%m-%d %H:%MZ")


def describe_control(result: dict[str, Any]) -> str:
    """One line saying what a control action did."""
    action, target, detail = result["action"], result["target"], result["detail"]
    if action == "limit.pause":
        until = detail.get("until")
        return (
            f"paused {target} {'until ' + until if until else 'until resumed'}: {detail['reason']}"
        )
    if action == "limit.resume":
        lifted = detail.get("lifted") or []
        return f"resumed {', '.join(lifted)}" if lifted else f"{target} was not paused"
    if action == "limit.pin":
        return (
            f"pinned {target} at {detail['rate']} (configured {detail['configured']}): "
            f"{detail['reason']}"
        )
    cleared = detail.get("cleared")
    if cleared:
        return f"unpinned {target}: {cleared} -> configured {detail['configured']}"
    return f"{target} had no pin; it runs at its configured {detail['configured']}"


def describe_explanation(shown: dict[str, Any]) -> list[str]:
    """The lines ``sluice explain`` prints: the summary, then the rate on each key."""
    lines = [f"task {shown['task_id']}: {shown['status']} ({shown['phase']}): {shown['summary']}"]
    for rate in shown.get("rates") or []:
        line = f"  {rate['key']}: {rate['in_force']}"
        if rate["source"] != "configured":
            why = f": {rate['reason']}" if rate["reason"] else ""
            line += f" ({rate['source']}{why}; configured {rate['configured']})"
        lines.append(line)
    return lines


def _call(
    api_url: str, api_key: str | None, method: str, path: str, body: dict[str, Any] | None
) -> dict[str, Any]:
    shown: dict[str, Any] = _answer(api_url, api_key, method, path, body)
    return shown


def _answer(
    api_url: str,
    api_key: str | None,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    shape: type = dict,
    missing: str | None = None,
    params: dict[str, str | int] | None = None,
) -> Any:
    """The JSON the API at ``api_url`` answers (a ``shape``: an object unless told), or
    SluiceError in one line that never shows the key: the API unreachable, a refusal (its
    ``detail``), an answer without such JSON. With ``missing`` (what to do instead), a 404
    for the route itself (FastAPI's ``Not Found``) says the API is older than the command.
    ``params`` go in the query string."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=api_url, timeout=30, headers=headers) as client:
            answer = client.request(method, path, json=body, params=params)
    except httpx.HTTPError as exc:
        where = masking.mask_urls(api_url)
        raise errors.SluiceError(
            f"cannot reach the Sluice API at {where}: {masking.mask(str(exc))}"
        ) from exc
    if answer.status_code >= 400:
        detail = answer_detail(answer)
        if missing is not None and answer.status_code == 404 and detail == "Not Found":
            where = masking.mask_urls(api_url)
            raise errors.SluiceError(
                f"{where} has no {method} {path}: a Sluice API older than this command? ({missing})"
            )
        raise errors.SluiceError(f"refused ({answer.status_code}): {detail}")
    shown = answer_json(answer, api_url)
    if not isinstance(shown, shape):
        raise errors.SluiceError(_not_the_api(answer, api_url))
    return shown


def answer_json(answer: httpx.Response, api_url: str) -> Any:
    """The JSON of an answer from ``api_url``, or SluiceError in one line when it holds
    none (a proxy's error page, a URL that is not a Sluice API)."""
    try:
        return answer.json()
    except ValueError:
        raise errors.SluiceError(_not_the_api(answer, api_url)) from None


def answer_detail(answer: httpx.Response) -> str:
    """What a refusal says, on one line: the API's ``detail``, else the start of the text."""
    try:
        body = answer.json()
    except ValueError:
        return " ".join(answer.text.split())[:200]
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        return "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail
        )
    return str(detail)


def _not_the_api(answer: httpx.Response, api_url: str) -> str:
    where = masking.mask_urls(api_url)
    return f"{where} answered {answer.status_code} without JSON: is it a Sluice API?"


def _json(value: Any) -> Any:
    """Dataclass fields as JSON values (datetimes as ISO text)."""
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
