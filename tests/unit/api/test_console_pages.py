"""The console's pages over a real runtime (SQLite, the bundled sandbox provider, no traffic):
overview, usage counters, pauses, the task list's filters and keyset pages, bulk actions
from preview to finished job, task detail with masked payload, audit, and the API twins."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sluice.api.app import build_api
from sluice.clock import FakeClock
from sluice.domain import LOCAL_ACTOR, Submission, TaskStatus
from sluice.runtime import Runtime, build_runtime
from sluice.settings import Settings
from sluice.store.rows import change_status, encode_cursor
from sluice.store.usage import UsageStore


@dataclass
class Console:
    client: TestClient
    runtime: Runtime

    def make(self, n: int, **fields: object) -> list[int]:
        specs = [
            Submission("sandbox", "campaign", {"name": f"c{i}", "token": "s3cret-value"})
            for i in range(n)
        ]
        ids = self.runtime.repo.create_many(specs)
        status = fields.pop("status", None)
        if status is not None:
            for task_id in ids:
                self.force(task_id, TaskStatus(str(status)), **fields)
        return ids

    def force(self, task_id: int, status: TaskStatus, **fields: object) -> None:
        repo = self.runtime.repo
        task = repo.get(task_id)
        with repo.engine.begin() as conn:
            assert change_status(conn, task, status, now=repo.clock.now(), event="test", **fields)

    def token(self, page: str) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found, page
        return found.group(1)


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Console]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'console.db'}",
        providers={
            "sandbox": {
                "preset": "sandbox-demo",
                "base_url": "http://127.0.0.1:9",
                "rate_limit": "20/s",
                "redact_fields": ["token"],
            }
        },
    )
    runtime = build_runtime(settings)
    # A clock that stands still: the current window (one second) is the one counted in.
    runtime.repo.clock = FakeClock(datetime.now(UTC).replace(microsecond=500_000))
    app = build_api(runtime)
    with TestClient(app, base_url="http://localhost") as client:
        yield Console(client, runtime)
    runtime.close()


def test_the_overview_shows_each_provider_its_limit_and_queue(ui: Console) -> None:
    ui.make(3)
    page = ui.client.get("/ui")
    assert page.status_code == 200
    assert 'data-provider="sandbox"' in page.text
    assert "<code>sandbox</code>" in page.text
    assert "20/s" in page.text
    assert "Queue: 3 tasks" in page.text
    data = ui.client.get("/api/overview").json()
    (sandbox,) = data["providers"]
    assert sandbox["name"] == "sandbox"
    assert sandbox["keys"][0]["limit"] == 20
    assert sum(row["count"] for row in sandbox["queue"]) == 3


def test_usage_counted_by_senders_shows_as_the_current_window_and_the_hour(ui: Console) -> None:
    now = ui.runtime.repo.clock.now()
    store = UsageStore(ui.runtime.repo.engine)
    store.add({("sandbox", "sent", now): 7, ("sandbox", "create", now): 7})
    # A second process adds to the same buckets: the counts sum.
    store.add({("sandbox", "sent", now): 5, ("sandbox", "error", now): 1})
    data = ui.client.get("/api/overview").json()
    key = data["providers"][0]["keys"][0]
    assert key["used"] == 12
    assert key["history"][-1] == 12
    assert data["providers"][0]["errors_hour"] == 1
    assert data["providers"][0]["creates_per_s"] == 0.7


def test_the_current_window_counts_sends_not_yet_flushed_for_this_second(ui: Console) -> None:
    """Senders flush about once a second, so the second under way may hold nothing yet:
    the current window of a 1 s limit shows the larger of this second and the last one,
    never a second before that, nor both added up."""
    now = ui.runtime.repo.clock.now()
    store = UsageStore(ui.runtime.repo.engine)
    store.add({("sandbox", "sent", now - timedelta(seconds=2)): 30})
    store.add({("sandbox", "sent", now - timedelta(seconds=1)): 9})

    def used() -> int:
        return int(ui.client.get("/api/overview").json()["providers"][0]["keys"][0]["used"])

    assert used() == 9
    store.add({("sandbox", "sent", now): 4})
    assert used() == 9
    store.add({("sandbox", "sent", now): 8})
    assert used() == 12


def test_a_pause_shows_with_its_signal_and_countdown(ui: Console) -> None:
    now = ui.runtime.repo.clock.now()
    until = now + timedelta(seconds=30)
    ui.runtime.pauses.record(
        "sandbox", until, signal="rate_limited", reason="HTTP 429; pause 30s", since=now
    )
    page = ui.client.get("/ui").text
    assert 'data-paused="true"' in page
    assert "rate_limited" in page
    assert "HTTP 429; pause 30s" in page
    assert "s left" in page
    provider = ui.client.get("/api/overview").json()["providers"][0]
    assert provider["paused"] is True
    assert 25 <= provider["pause_left_s"] <= 30


def test_filters_and_keyset_pages(ui: Console) -> None:
    ids = ui.make(60)
    ui.make(3, status="Error", validation_error="Invalid IP range: 10.0.0.999")
    first = ui.client.get("/ui/tasks").text
    assert f'data-task="{ids[0]}"' in first
    assert f'data-task="{ids[50]}"' not in first
    following = re.search(r'href="/ui/tasks\?([^"]+)" id="next-page"', first)
    assert following
    second = ui.client.get("/ui/tasks?" + following.group(1).replace("&amp;", "&")).text
    assert f'data-task="{ids[50]}"' in second
    assert f'data-task="{ids[0]}"' not in second
    errors = ui.client.get("/ui/tasks", params={"error_text": "invalid ip"}).text
    assert errors.count('data-status="Error"') == 3
    assert ui.client.get("/ui/tasks", params={"status": "Nope"}).status_code == 422


def test_bulk_retry_previews_then_changes_exactly_the_matching_tasks(ui: Console) -> None:
    failed = ui.make(4, status="Error", validation_error="bad budget")
    other = ui.make(2, status="Error", validation_error="bad name")
    page = ui.client.get("/ui/tasks", params={"error_text": "budget"}).text
    preview = ui.client.post(
        "/ui/tasks/preview",
        data={"csrf_token": ui.token(page), "action": "retry", "error_text": "budget"},
    )
    assert 'data-count="4"' in preview.text
    # A task failing after the preview is not covered: ids up to the previewed one only.
    late = ui.make(1, status="Error", validation_error="bad budget")
    answer = ui.client.post(
        "/ui/tasks/bulk",
        data={
            "csrf_token": ui.token(preview.text),
            "action": "retry",
            "error_text": "budget",
            "max_id": str(max(failed)),
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303
    job_id = int(answer.headers["location"].rsplit("/", 1)[1])
    context = ui.client.app.state.context  # type: ignore[attr-defined]
    context.bulk_runner.run_once()
    job = ui.client.get(f"/api/bulk-actions/{job_id}").json()
    assert (job["state"], job["changed"], job["count"]) == ("done", 4, 4)
    statuses = {i: ui.runtime.repo.get(i).status for i in failed + other + late}
    assert [statuses[i] for i in failed] == [TaskStatus.NOT_STARTED] * 4
    assert [statuses[i] for i in other + late] == [TaskStatus.ERROR] * 3
    assert "tasks.bulk_retry" in ui.client.get("/ui/audit").text


def test_a_bulk_action_matching_nothing_is_200_with_count_0(ui: Console) -> None:
    body = {"action": "cancel", "filter": {"kind": "nothing"}}
    preview = ui.client.post("/api/bulk-actions/preview", json=body)
    assert (preview.status_code, preview.json()["count"]) == (200, 0)
    started = ui.client.post("/api/bulk-actions", json=body)
    assert started.status_code == 202
    assert (started.json()["count"], started.json()["state"]) == (0, "done")
    assert ui.client.get("/api/bulk-actions/999").status_code == 404
    bad = ui.client.post("/api/bulk-actions", json={"action": "delete"})
    assert bad.status_code == 422


def test_the_task_page_masks_secrets_and_shows_family_and_events(ui: Console) -> None:
    (parent,) = ui.make(1)
    (child,) = ui.runtime.repo.create_many(
        [Submission("sandbox", "campaign", {"name": "kid"}, parent_id=parent)]
    )
    ui.runtime.repo.cancel(child, actor=LOCAL_ACTOR)
    page = ui.client.get(f"/ui/tasks/{parent}").text
    assert "s3cret-value" not in page
    assert f'href="/ui/tasks/{child}"' in page
    assert "created" in page
    child_page = ui.client.get(f"/ui/tasks/{child}").text
    assert f'href="/ui/tasks/{parent}"' in child_page
    assert "cancelled" in child_page
    assert ui.client.get("/ui/tasks/424242").status_code == 404


def test_the_task_page_shows_the_explanation(ui: Console) -> None:
    (task_id,) = ui.make(1, status="Error", validation_error="Invalid IP range: 10.0.0.999")
    page = ui.client.get(f"/ui/tasks/{task_id}").text
    assert 'id="explain-summary"' in page
    assert "final" in page
    assert "Invalid IP range: 10.0.0.999" in page


def _control(ui: Console, **fields: str) -> Any:
    page = ui.client.get("/ui").text
    return ui.client.post(
        "/ui/controls", data={"csrf_token": ui.token(page), **fields}, follow_redirects=False
    )


def test_controls_pause_resume_pin_and_unpin_from_the_overview(ui: Console) -> None:
    assert 'id="pause-form"' in ui.client.get("/ui").text
    paused = _control(ui, action="pause", target="sandbox", reason="provider incident")
    assert paused.status_code == 303
    page = ui.client.get("/ui").text
    assert 'data-paused="true"' in page
    assert "provider incident" in page
    assert "until resumed" in page
    assert _control(ui, action="resume", target="sandbox").status_code == 303
    assert 'data-paused="true"' not in ui.client.get("/ui").text
    assert (
        _control(ui, action="pin", target="sandbox", rate="5/s", reason="429s").status_code == 303
    )
    key = ui.client.get("/api/overview").json()["providers"][0]["keys"][0]
    assert (key["rate"], key["rate_source"]) == ("5/s", "pinned")
    assert _control(ui, action="unpin", target="sandbox").status_code == 303
    actions = ui.client.get("/ui/audit").text
    for action in ("limit.pause", "limit.resume", "limit.pin", "limit.unpin"):
        assert f"<code>{action}</code>" in actions


def test_refused_controls_name_the_problem_and_audit_nothing(ui: Console) -> None:
    unknown = _control(ui, action="pause", target="nosuch", reason="x")
    assert unknown.status_code == 404
    assert "nosuch" in unknown.text
    above = _control(ui, action="pin", target="sandbox", rate="50/s", reason="x")
    assert above.status_code == 422
    assert "only lowers" in above.text
    assert "<code>limit." not in ui.client.get("/ui/audit").text


def test_a_control_on_a_target_too_long_to_be_a_key_is_refused_without_echoing_it(
    ui: Console,
) -> None:
    """A 5,000-character target was refused "no limit key ..." quoting all of it back; it
    is refused by its length, as the API refuses it, and nothing is audited."""
    target = "sandbox:" + "x" * 5_000

    response = _control(ui, action="pause", target=target, reason="x")

    assert response.status_code == 422
    assert "target: at most 255 characters, got 5008" in response.text
    assert "x" * 300 not in response.text
    assert "<code>limit." not in ui.client.get("/ui/audit").text


@pytest.mark.parametrize("page", ["tasks", "jobs"])
def test_an_id_past_2_53_is_not_found_not_a_server_error(ui: Console, page: str) -> None:
    """/ui/tasks/<23 digits> and /ui/jobs/<23 digits> were 500s: the id overflowed SQLite's
    integer. Ids stop at 2**53 everywhere (the API's own routes refuse larger ones)."""
    huge = 99999999999999999999999
    response = ui.client.get(f"/ui/{page}/{huge}")

    assert response.status_code == 404
    assert f"{huge} not found" in response.text


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/ui/tasks/bulk", {"action": "cancel", "max_id": "9" * 23}),
        ("/ui/tasks/bulk", {"action": "cancel", "max_id": "\u00b2"}),
        ("/ui/tasks/preview", {"action": "cancel", "parent_id": "\u00b2"}),
    ],
)
def test_a_form_s_odd_id_is_refused_not_a_server_error(
    ui: Console, path: str, form: dict[str, str]
) -> None:
    """'²' passed str.isdigit() and then failed int() (a 500), and 23 digits overflowed
    SQLite's integer (a 500); both are refused and nothing is changed."""
    ui.make(2)
    token = ui.token(ui.client.get("/ui/tasks").text)

    response = ui.client.post(path, data={**form, "csrf_token": token}, follow_redirects=False)

    assert response.status_code == 422
    assert ui.runtime.repo.counts().get(TaskStatus.CANCELLED, 0) == 0


def test_a_listing_after_an_id_past_2_53_is_empty_not_a_server_error(ui: Console) -> None:
    ui.make(1)

    assert ui.client.get("/ui/tasks?after=" + "9" * 23).status_code == 200
    assert ui.client.get("/ui/tasks?after=\u00b2").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "form", "field"),
    [
        ("GET", "/ui/tasks?error_text=%00", None, "error_text"),
        ("GET", "/ui/tasks?kind=%00", None, "kind"),
        ("GET", "/ui/audit?action=%00", None, "action"),
        (
            "POST",
            "/ui/controls",
            {"action": "pause", "target": "sandbox", "reason": "a\0b"},
            "reason",
        ),
        ("POST", "/ui/tasks/preview", {"action": "cancel", "error_text": "\0"}, "error_text"),
    ],
)
def test_nul_in_console_text_is_refused_naming_the_field(
    ui: Console, method: str, path: str, form: dict[str, str] | None, field: str
) -> None:
    """NUL in a console filter, audit action or control reason was a 500 on PostgreSQL
    (and stored as given on SQLite); it is refused as the API refuses it."""
    if form is None:
        response = ui.client.get(path)
    else:
        token = ui.token(ui.client.get("/ui/tasks").text)
        response = ui.client.post(path, data={**form, "csrf_token": token}, follow_redirects=False)

    assert response.status_code == 422
    assert f"{field}: must not contain NUL characters" in response.text


def test_a_cursor_past_2_53_is_refused_not_a_server_error(ui: Console) -> None:
    """A cursor naming id 10**30 overflowed SQLite's integer: a 500 on /ui/audit and
    /api/audit. It is a cursor no listing returned: 422."""
    cursor = encode_cursor(10**30)

    assert ui.client.get(f"/ui/audit?cursor={cursor}").status_code == 422
    assert ui.client.get(f"/api/audit?cursor={cursor}").status_code == 422
    assert ui.client.get(f"/api/tasks?cursor={cursor}").status_code == 422


@pytest.mark.parametrize("path", ["/ui/tasks/abc", "/ui/jobs/x"])
def test_a_malformed_console_path_is_a_console_page_with_its_headers(
    ui: Console, path: str
) -> None:
    """FastAPI's 422 for /ui/tasks/abc was bare JSON without the console's Content-Security-
    Policy, frame and caching headers; it is a refusal page that has them."""
    response = ui.client.get(path)

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    assert "path." in response.text


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
@pytest.mark.parametrize("field", ["created_from", "created_to"])
def test_a_filter_date_out_of_range_in_utc_is_refused_naming_the_field(
    ui: Console, field: str, value: str
) -> None:
    """A filter date that UTC cannot hold was a 500 on the task list and on a bulk action's
    preview; it is shown as a problem with the filter, naming the field."""
    ui.make(1)
    token = ui.token(ui.client.get("/ui/tasks").text)

    listing = ui.client.get("/ui/tasks", params={field: value})
    preview = ui.client.post(
        "/ui/tasks/preview",
        data={"action": "cancel", field: value, "csrf_token": token},
        follow_redirects=False,
    )

    for response in (listing, preview):
        assert response.status_code == 422, response.text
        assert f"{field}: {value} is out of range in UTC" in response.text
    assert ui.runtime.repo.counts().get(TaskStatus.CANCELLED, 0) == 0


def test_the_overview_names_a_bounded_number_of_account_keys(ui: Console) -> None:
    """Every account key used in the last five minutes had a row in the live card and a
    chart in the last hour, on every push: with 3,000 advertisers under a per-advertiser
    limit the overview was 1.37 MB and each live stream was sent about 1 MB a second.
    Like the quotas on the card, the account keys now show the busiest few (paused ones
    first) and a count of the rest; the API's overview still lists every one."""
    now = ui.runtime.repo.clock.now()
    store = UsageStore(ui.runtime.repo.engine)
    accounts = 500
    store.add(
        {("sandbox", "sent", now): accounts}
        | {(f"sandbox:advertiser_id=adv-{n}", "sent", now): 1 for n in range(accounts)}
        | {("sandbox:advertiser_id=adv-busiest", "sent", now): 9}
    )
    listed = ui.client.get("/api/overview").json()["providers"][0]["keys"]
    assert sum(1 for k in listed if k["account"]) == accounts + 1

    live = ui.client.get("/ui").text
    history = ui.client.get("/ui/overview/history").text
    shown_rows = re.findall(r'data-key="sandbox:advertiser_id=([^"]+)"', live)
    shown_charts = re.findall(r"<figcaption>sandbox:advertiser_id=([^:]+):", history)
    for shown, page in ((shown_rows, live), (shown_charts, history)):
        assert 1 <= len(shown) <= 10
        assert shown[0] == "adv-busiest"
        assert f"{accounts + 1 - len(shown)} more account keys" in page
    assert len(live) < 100_000
    provider_page = ui.client.get("/ui/providers/sandbox").text
    shown_on_provider = re.findall(r'data-key="sandbox:advertiser_id=([^"]+)"', provider_page)
    assert 1 <= len(shown_on_provider) <= 10
    assert f"{accounts + 1 - len(shown_on_provider)} more account keys" in provider_page
