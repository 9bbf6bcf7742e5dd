"""``sluice pause|resume|pin|unpin|explain|rates``: on the local database, or against a running
API.

Locally (no ``--api``) the command opens SLUICE_DATABASE_URL and the limiter of
SLUICE_REDIS_URL, acts as the actor ``cli`` and writes the same audit record the API
would; running workers pick the change up from the database within a second. With
``--api URL`` it calls the API with ``--key`` (an operator's key for the controls).
Either way the answer is printed from the same JSON, so both read alike.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import httpx

from sluice import errors, masking
from sluice.domain import LOCAL_ACTOR
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
) -> Any:
    """The JSON the API at ``api_url`` answers (a ``shape``: an object unless told), or
    SluiceError in one line that never shows the key: the API unreachable, a refusal (its
    ``detail``), an answer without such JSON. With ``missing`` (what to do instead), a 404
    for the route itself (FastAPI's ``Not Found``) says the API is older than the command."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=api_url, timeout=30, headers=headers) as client:
            answer = client.request(method, path, json=body)
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
