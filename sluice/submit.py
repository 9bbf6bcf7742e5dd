"""``sluice submit FILE``: against a running API, or embedded in this process."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from sluice import errors, importer, masking, submissions
from sluice.api.schemas import BulkItem
from sluice.domain import LOCAL_ACTOR, Submission, TaskStatus
from sluice.drivers import engine_lock
from sluice.drivers.embedded import build_embedded_driver
from sluice.operate import answer_detail, answer_json
from sluice.progress import rate_reports, say_pruned, summary_table, watch
from sluice.runtime import build_runtime
from sluice.settings import Settings
from sluice.store.repository import RunSummary, summarize
from sluice.store.rows import encode_cursor


def load_items(
    file: Path, priority: int | None = None, again: bool = False
) -> tuple[list[Submission], list[str]]:
    """The file's submissions, each with ``priority`` when one is given and an idempotency
    key drawn from the file (unless ``again``), and where each is in the file.

    The keys make a second submit of the same file follow the tasks the first created
    (nothing created twice): one interrupted (Ctrl-C, SIGKILL, a lost connection) may have
    been created or not, and running it again created its tasks a second time.
    """
    items, places = importer.load_file_placed(file)
    if len(items) > submissions.MAX_BULK:
        # Said before the database is opened, naming the file; it was "request: tasks: at
        # most 10000 tasks per call", after a minute of checks on a 200,000-row file.
        raise errors.InvalidTask(
            f"{file}: {len(items):,} tasks; sluice submit creates at most "
            f"{submissions.MAX_BULK:,} at once, all or nothing: split the file, each parent "
            "in the same file as its children"
        )
    prefix = None if again else file_key(file, priority)
    return [
        replace(
            item,
            priority=item.priority if priority is None else priority,
            idempotency_key=None if prefix is None else f"{prefix}-{index}",
        )
        for index, item in enumerate(items)
    ], places


def file_key(file: Path, priority: int | None) -> str:
    """The idempotency key prefix of a file's tasks: a digest of its bytes and the priority
    given (a file submitted at another priority is another submission)."""
    digest = hashlib.sha256(file.read_bytes())
    digest.update(f"\npriority={priority}".encode())
    return f"sluice-submit-{digest.hexdigest()[:32]}"


def _already(file: Path, priority: int | None) -> errors.SluiceError:
    """A file submitted before whose tasks no longer all hold its keys (some were pruned)."""
    return errors.SluiceError(
        f"{file} was submitted before and only some of its tasks remain (they hold the "
        f"idempotency keys {file_key(file, priority)}-N): nothing was created; to create its "
        "tasks once more, add --again"
    )


def _created(file: Path, ids: Sequence[int], replayed: bool, where: str = "") -> str:
    """What a submit says of its tasks: created, or found from an earlier submit of the file
    (run again after an interrupted one, it follows the tasks that one created)."""
    span = f"ids {min(ids)}-{max(ids)}"
    if replayed:
        return (
            f"{file} was already submitted: following its {len(ids)} tasks ({span}){where}; "
            "--again creates them once more"
        )
    return f"{len(ids)} tasks created ({span}){where}"


def _placed(
    exc: submissions.SubmissionInvalid, places: Sequence[str]
) -> submissions.SubmissionInvalid:
    """``exc`` naming each problem's line or task of the file rather than its index."""
    return submissions.SubmissionInvalid(exc.problems, places)


def _refusal(answer: httpx.Response, api_url: str, places: Sequence[str]) -> errors.SluiceError:
    """The API's refusal of the tasks, as the embedded submit says it: a 422 lists each
    problem at its place in the file; any other status is one line with the API's detail.

    The answer's JSON was printed whole, on stdout, and wrapped over several lines.
    """
    body: Any = None
    with contextlib.suppress(ValueError):
        body = answer.json()
    detail = body.get("detail") if isinstance(body, dict) else None
    if answer.status_code == 422 and isinstance(detail, list) and detail:
        problems = [_item_error(entry) for entry in detail]
        return submissions.SubmissionInvalid(problems, places)
    return errors.SluiceError(
        f"{masking.mask_urls(api_url)} refused the tasks ({answer.status_code}): "
        f"{masking.mask(answer_detail(answer))}"
    )


def _item_error(entry: Any) -> submissions.ItemError:
    """One entry of a 422's ``detail`` (``loc`` ``["body", "tasks", 3, "kind"]``)."""
    if not isinstance(entry, dict):
        return submissions.ItemError(None, "tasks", str(entry))
    loc = [part for part in entry.get("loc") or [] if part != "body"]
    index = loc[1] if len(loc) > 1 and loc[0] == "tasks" and isinstance(loc[1], int) else None
    field = ".".join(str(part) for part in (loc[2:] if index is not None else loc)) or "tasks"
    return submissions.ItemError(index, field, str(entry.get("msg", entry)))


def submit_embedded(
    settings: Settings,
    file: Path,
    wait: bool,
    console: Console,
    priority: int | None = None,
    again: bool = False,
) -> int:
    """Create the file's tasks in the local store and drive them here until they are final."""
    items, places = load_items(file, priority, again)
    runtime = build_runtime(settings)
    driver = build_embedded_driver(runtime)
    # One engine per database unless the limiter is shared: another one running here
    # (`sluice up`, another submit) sends these tasks too, and this one waits its turn.
    lock = (
        engine_lock.engine_lock(
            settings.database_url, settings.redis_url, engine_lock.SUBMIT, driver.lost
        )
        if wait
        else None
    )
    driving = threading.Event()

    def drive_if_alone() -> None:
        if not driving.is_set() and (lock is None or lock.acquire()):
            driving.set()
            # Taken after the engine it waited on stopped: nothing of it is left running.
            driver.start(sole=engine_lock.holder_is_gone(lock))

    def counts() -> dict[str, int]:
        drive_if_alone()
        return summarize(runtime.repo.engine, ids).by_status

    try:
        started = time.monotonic()
        try:
            batch = submissions.create_batch(runtime.repo, runtime.catalog, items, LOCAL_ACTOR)
        except submissions.SubmissionInvalid as exc:
            raise _placed(exc, places) from None
        except errors.TaskConflict:
            if again:
                raise
            raise _already(file, priority) from None
        ids = batch.ids
        console.print(_created(file, ids, batch.replayed))
        if not wait:
            return 0
        drive_if_alone()
        if not driving.is_set() and lock is not None:
            console.print(
                f"{lock.refusal().who} runs the engine on this database: it sends these "
                "tasks; following them here (sent from here if it stops first)"
            )
        watch(counts, len(ids), console, threading.Event())
        elapsed = time.monotonic() - started
        summary = summarize(runtime.repo.engine, ids)
        console.print(summary_table(summary, elapsed, rate_reports(runtime, driver, elapsed)))
        say_pruned(console, len(ids), summary)
        return 0 if not summary.errors else 1
    finally:
        if wait:
            driver.stop()
        if lock is not None:
            lock.release()
        runtime.close()


BULK_TIMEOUT = httpx.Timeout(60.0, read=300.0)
"""The bulk call's answer may take minutes on a loaded host (10,000 tasks); it waited 60 s
and then said "cannot reach the Sluice API ... timed out", though the API had the tasks."""


def submit_remote(
    api_url: str,
    file: Path,
    wait: bool,
    console: Console,
    api_key: str | None = None,
    priority: int | None = None,
    again: bool = False,
) -> int:
    """POST the file's tasks to ``api_url`` in one bulk call and follow them there.

    ``api_key`` is sent as ``Authorization: Bearer``; the tasks go to its tenant.
    """
    items, places = load_items(file, priority, again)
    # The API checks the same rules; checked here first because a payload nested past the
    # cap may be too deep to serialize into the request at all.
    problems = [
        p for index, item in enumerate(items) for p in submissions.value_problems(item, index)
    ]
    if problems:
        raise submissions.SubmissionInvalid(problems, places)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=api_url, timeout=60, headers=headers) as client:
        where = masking.mask_urls(api_url)
        try:
            bulk = {"tasks": [BulkItem.wire(item) for item in items]}
            answer = client.post("/api/tasks/bulk", json=bulk, timeout=BULK_TIMEOUT)
        except httpx.ReadTimeout:
            # Sent, and no answer: the tasks may exist. Said so, with the way to find out.
            then = (
                "look before sending them again: with --again a second run creates them anew"
                if again
                else "run the same command again: it follows them if they were"
            )
            raise errors.SluiceError(
                f"no answer from the Sluice API at {where} within {BULK_TIMEOUT.read:g} s: the "
                f"tasks may have been created; {then}"
            ) from None
        except httpx.HTTPError as exc:
            raise errors.SluiceError(
                f"cannot reach the Sluice API at {where}: {masking.mask(str(exc))}"
            ) from exc
        if answer.status_code == 409 and not again:
            raise _already(file, priority)
        if answer.status_code != 201:
            raise _refusal(answer, api_url, places)
        created = answer_json(answer, api_url)
        if not isinstance(created, dict) or not created.get("ids"):
            raise errors.SluiceError(
                f"{masking.mask_urls(api_url)} answered 201 without the tasks' ids: "
                "is it a Sluice API?"
            )
        ids: list[int] = created["ids"]
        first, last = min(ids), max(ids)
        replayed = answer.headers.get("Idempotent-Replayed") == "true"
        console.print(_created(file, ids, replayed, f" at {masking.mask_urls(api_url)}"))
        if not wait:
            return 0
        started = time.monotonic()
        try:
            watch(
                lambda: summary_through_restarts(client, ids).by_status,
                len(ids),
                console,
                threading.Event(),
                refresh_s=1.0,
            )
            summary = summary_through_restarts(client, ids)
        except (httpx.HTTPError, errors.SluiceError) as exc:
            # Say the tasks exist (a second `sluice submit` of the file follows them: its
            # tasks hold the file's idempotency keys).
            raise errors.SluiceError(
                f"lost the Sluice API at {masking.mask_urls(api_url)} while following tasks "
                f"{first}-{last}, which were created: {masking.mask(str(exc))}"
            ) from None
        console.print(summary_table(summary, time.monotonic() - started, []))
        say_pruned(console, len(ids), summary)
        return 0 if not summary.errors else 1


FOLLOW_GRACE_S = 60.0
"""How long `sluice submit --api` keeps following its tasks through an API it cannot reach
(a `sluice up` restarting is gone for a few seconds) before it gives up in one line."""
FOLLOW_RETRY_S = 1.0
"""The wait between two tries meanwhile."""


def summary_through_restarts(client: httpx.Client, ids: Sequence[int]) -> RunSummary:
    """:func:`remote_summary`, tried again while the API cannot be reached (refused or
    dropped connections, timeouts), for up to :data:`FOLLOW_GRACE_S`; an answer, even a
    refusal (a revoked key, a proxy's 502), is not waited out."""
    give_up_at = time.monotonic() + FOLLOW_GRACE_S
    while True:
        try:
            return remote_summary(client, ids)
        except httpx.TransportError:
            if time.monotonic() >= give_up_at:
                raise
            time.sleep(FOLLOW_RETRY_S)


def remote_summary(client: httpx.Client, ids: Sequence[int]) -> RunSummary:
    """Counts per status and the errors of the tasks ``ids`` read from the API.

    Only those ids count: a bulk call's ids need not be consecutive (PostgreSQL draws them
    from a sequence that another submit, at the same moment, draws from too), and another
    submitter's task between them used to be counted as one of this run's.
    """
    wanted = set(ids)
    first, last = min(ids), max(ids)
    statuses: Counter[str] = Counter()
    failures: list[tuple[int, str | None, str]] = []
    cursor: str | None = encode_cursor(first - 1)
    while cursor is not None:
        answer = client.get("/api/tasks", params={"cursor": cursor, "limit": 1000})
        if answer.status_code != 200:
            raise errors.SluiceError(f"answered {answer.status_code}: {answer_detail(answer)}")
        page = answer_json(answer, str(client.base_url))
        for task in page["items"]:
            if task["id"] > last:
                cursor = None
                break
            if task["id"] not in wanted:
                continue
            statuses[task["status"]] += 1
            if task["status"] == TaskStatus.ERROR.value:
                failures.append((task["id"], task["kind"], task["validation_error"] or ""))
        else:
            cursor = page["next_cursor"]
    return RunSummary(
        total=sum(statuses.values()), by_status=dict(statuses), by_event={}, errors=failures
    )
