"""``sluice tasks``: a page of tasks from the local database or through ``GET /api/tasks``,
the same rows either way; its options refused in one line before anything is asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice import operate
from sluice.api.app import build_api
from sluice.clock import FakeClock
from sluice.domain import Submission, TaskStatus
from sluice.runtime import build_runtime
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.repository import TaskRepository
from sluice.store.rows import tasks as task_rows
from tests.unit.cli.running import local_sluice, one_line, run_cli_captured
from tests.unit.cli.test_cli_api_client import api_answers

PROVIDERS_TOML = """
[providers.sandbox]
preset = "sandbox-demo"
base_url = "http://127.0.0.1:9"
rate_limit = "20/s"

[providers.acme]
base_url = "http://127.0.0.1:9"
rate_limit = "50/s"
kinds = { campaign = { submit = "POST /campaigns" }, adgroup = { submit = "POST /adgroups" } }
"""

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
API = "http://sluice.test"


@dataclass
class Local:
    url: str
    clock: FakeClock
    repo: TaskRepository


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Local]:
    """A local database and providers; tasks are made through its repository, one a minute
    from START (so --since/--until can split them)."""
    url = local_sluice(tmp_path, monkeypatch, PROVIDERS_TOML)
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    clock = FakeClock(START)
    yield Local(url, clock, TaskRepository(engine, clock=clock))
    engine.dispose()


@pytest.fixture
def api(local: Local, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """``--api`` calls reach the API app of the same database (in-process); the client
    itself reads ``GET /api/tasks`` for the tests."""
    runtime = build_runtime(load_settings())
    app = build_api(runtime)

    def client(base_url: str, headers: dict[str, str], **_: Any) -> TestClient:
        return TestClient(app, base_url="http://localhost", headers=headers)

    monkeypatch.setattr(operate.httpx, "Client", client)
    yield TestClient(app, base_url="http://localhost")
    runtime.close()


def make(local: Local, provider: str, kind: str, **extra: Any) -> int:
    task, _ = local.repo.create(Submission(provider, kind, {"name": "x"}, **extra))
    local.clock.advance(60)
    return task.id


def failed(local: Local, task_id: int, message: str) -> None:
    """The task ended in Error with ``message`` (as a provider's refusal leaves it)."""
    with local.repo.engine.begin() as conn:
        conn.execute(
            task_rows.update()
            .where(task_rows.c.id == task_id)
            .values(status="Error", phase="done", validation_error=message, attempts=1)
        )


@pytest.fixture
def some(local: Local) -> dict[str, int]:
    """Seven tasks: two providers, three kinds, a parent with two children, one
    Cancelled, one Error with a two-line validation error."""
    ids = {
        "spring": make(local, "sandbox", "campaign"),
        "summer": make(local, "sandbox", "campaign"),
        "acme1": make(local, "acme", "campaign"),
    }
    ids["group1"] = make(local, "acme", "adgroup", parent_id=ids["acme1"])
    ids["group2"] = make(local, "acme", "adgroup", parent_id=ids["acme1"])
    ids["autumn"] = make(local, "sandbox", "campaign")
    ids["winter"] = make(local, "sandbox", "campaign")
    local.repo.cancel(ids["summer"])
    failed(local, ids["autumn"], "\n name: too long (at most 40 characters)\nsee the provider docs")
    return ids


def run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    return run_cli_captured(monkeypatch, capsys, "tasks", *args)


def ids_of(table: str) -> list[int]:
    """The ids in the first column of a printed table."""
    cells = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    return [int(cell) for cell in cells if cell]


FILTERS: list[tuple[tuple[str, ...], list[str]]] = [
    ((), ["spring", "summer", "acme1", "group1", "group2", "autumn", "winter"]),
    (("--status", "Error"), ["autumn"]),
    (("--status", "cancelled"), ["summer"]),
    (("--status", "not-started"), ["spring", "acme1", "group1", "group2", "winter"]),
    (("--provider", "acme"), ["acme1", "group1", "group2"]),
    (("--kind", "adgroup"), ["group1", "group2"]),
    (("--parent", "PARENT"), ["group1", "group2"]),
    (("--provider", "sandbox", "--kind", "adgroup"), []),
    (("--since", "2026-12-01T09:02"), ["acme1", "group1", "group2", "autumn", "winter"]),
    (("--until", "2026-12-01T09:02:00Z"), ["spring", "summer"]),
    (("--since", "2026-12-01T10:01+01:00", "--until", "2026-12-01T09:03"), ["summer", "acme1"]),
    (
        ("--since", "2026-12-01", "--status", "Not Started", "--provider", "sandbox"),
        ["spring", "winter"],
    ),
]


@pytest.mark.parametrize(("args", "expected"), FILTERS)
def test_the_filters_give_the_same_rows_locally_and_through_the_api(
    some: dict[str, int],
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    expected: list[str],
) -> None:
    args = tuple(str(some["acme1"]) if arg == "PARENT" else arg for arg in args)

    code, here, err = run(monkeypatch, capsys, *args)
    assert (code, err) == (0, ""), err
    code, there, err = run(monkeypatch, capsys, *args, "--api", API)
    assert (code, err) == (0, ""), err

    assert there == here
    if expected:
        assert ids_of(here) == [some[name] for name in expected]
    else:
        assert here == "no tasks match\n"


def test_a_row_shows_the_task_and_the_first_line_of_its_error(
    some: dict[str, int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(monkeypatch, capsys, "--status", "Error")

    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert [cell.strip() for cell in lines[1].split("┃")[1:-1]] == list(operate.TASKS_COLUMNS)
    row = [cell.strip() for cell in lines[3].split("│")[1:-1]]
    assert row == [
        str(some["autumn"]),
        "sandbox",
        "campaign",
        "Error",
        "-",
        "1",
        "2026-12-01 09:05:00Z",
        "name: too long (at most 40 characters)",
    ]
    assert "provider docs" not in out
    assert len(lines) == 5  # a page that is not full says nothing more


def test_a_full_page_ends_with_the_cursor_of_the_next(
    some: dict[str, int],
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Walking the pages with the printed cursors lists every task once, in id order; the
    last page says nothing more. Through the API the same lines."""
    for via in ((), ("--api", API)):
        seen: list[int] = []
        cursor: tuple[str, ...] = ()
        pages = 0
        while True:
            code, out, err = run(monkeypatch, capsys, "--limit", "3", *cursor, *via)
            assert (code, err) == (0, ""), err
            pages += 1
            seen += ids_of(out)
            last = out.splitlines()[-1]
            if not last.startswith("more tasks: "):
                break
            assert last.endswith(" (with the same filters) for the next page")
            cursor = ("--cursor", last.split("--cursor ")[1].split()[0])
        assert seen == sorted(some.values())
        assert pages == 3


def test_json_lines_are_the_apis_page(
    some: dict[str, int],
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each line is one task with the fields of GET /api/tasks; the next page's cursor goes
    to stderr, so stdout stays JSON lines."""
    page = api.get("/api/tasks", params={"provider": "sandbox", "limit": 3}).json()

    for via in ((), ("--api", API)):
        args = ("--provider", "sandbox", "--limit", "3", "--json", *via)
        code, out, err = run(monkeypatch, capsys, *args)

        assert code == 0, err
        assert [json.loads(line) for line in out.splitlines()] == page["items"]
        assert err == operate.more_tasks(page["next_cursor"]) + "\n"


MISTAKES = [
    (
        ("--status", "Done"),
        "error: --status: 'Done' is not a task status; one of: Not Started, In Progress, "
        "Completed, Error, Cancelled",
    ),
    (
        ("--since", "yesterday"),
        "error: --since: 'yesterday' is not an ISO date and time (e.g. 2026-12-07, "
        "2026-12-07T09:30 in UTC, or 2026-12-07T09:30+01:00)",
    ),
    (
        ("--until", "2026-13-01"),
        "error: --until: '2026-13-01' is not an ISO date and time (e.g. 2026-12-07, "
        "2026-12-07T09:30 in UTC, or 2026-12-07T09:30+01:00)",
    ),
    (
        ("--since", "0001-01-01T00:00:00+14:00"),
        "error: --since: 0001-01-01T00:00:00+14:00 is out of range in UTC (years 1 to 9999)",
    ),
    (("--limit", "0"), "error: --limit must be between 1 and 1000, got 0"),
    (("--limit", "1001"), "error: --limit must be between 1 and 1000, got 1001"),
    (
        ("--limit", "many"),
        "sluice tasks: invalid value for '--limit': Input should be a valid integer, unable "
        "to parse string as an integer (see 'sluice tasks --help')",
    ),
    (("--cursor", "aWQ6"), "error: --cursor: 'aWQ6' is not a cursor a listing printed"),
    (("--provider", "p" * 65), "error: --provider: 1 to 64 characters"),
    (
        ("--parent", "0"),
        "sluice tasks: invalid value for '--parent': Input should be greater than or equal "
        "to 1 (see 'sluice tasks --help')",
    ),
]


@pytest.mark.parametrize("via", [(), ("--api", API)])
@pytest.mark.parametrize(("args", "expected"), MISTAKES)
def test_a_bad_option_is_one_line_before_anything_is_asked(
    local: Local,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    expected: str,
    via: tuple[str, ...],
) -> None:
    def nothing(**_: Any) -> None:
        raise AssertionError("the API was called")

    monkeypatch.setattr(operate.httpx, "Client", nothing)

    code, out, err = run(monkeypatch, capsys, *args, *via)

    assert (code, out) == (2, "")
    assert one_line(err) == expected


def test_no_database_is_one_line_and_none_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{missing}")

    code, out, err = run(monkeypatch, capsys)

    assert (code, out) == (2, "")
    assert one_line(err).startswith(f"error: no database at {missing}")
    assert not missing.exists()


def test_a_refusal_of_the_api_is_one_line_without_the_key(
    local: Local,
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = "sk_0123456789ab_Wq3VtYdR8pLmN2xK5sHgJf"

    code, out, err = run(monkeypatch, capsys, "--api", API, "--key", key)

    assert (code, out) == (2, "")
    assert one_line(err).startswith("error: refused (401): ")
    assert key[16:] not in err


@pytest.mark.parametrize(
    "body",
    [{"items": [{"id": 1}], "next_cursor": None}, {"items": [], "next_cursor": 3}, {"tasks": []}],
)
def test_json_that_is_not_a_page_of_tasks_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], body: dict[str, Any]
) -> None:
    """A URL that answers JSON of another shape (not a Sluice API, or a proxy's)."""
    api_answers(monkeypatch, lambda request: httpx.Response(200, json=body))

    code, out, err = run(monkeypatch, capsys, "--api", API)

    assert (code, out) == (2, "")
    assert one_line(err) == (f"error: {API} answered without a page of tasks: is it a Sluice API?")


def test_a_url_without_the_route_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--api naming a path below the API (…/api) or another server: its 404 in one line."""
    api_answers(monkeypatch, lambda request: httpx.Response(404, json={"detail": "Not Found"}))

    code, out, err = run(monkeypatch, capsys, "--api", f"{API}/api")

    assert (code, out) == (2, "")
    assert one_line(err) == "error: refused (404): Not Found"


# -- the property: whatever the tasks and filters, the CLI's rows are the API's page -------

statuses = st.sampled_from([None, *TaskStatus])
providers = st.sampled_from([None, "sandbox", "acme"])
kinds = st.sampled_from([None, "campaign", "adgroup"])
new_tasks = st.lists(
    st.tuples(st.sampled_from(["sandbox", "acme"]), st.booleans(), st.integers(0, 3)),
    max_size=6,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    added=new_tasks,
    status=statuses,
    provider=providers,
    kind=kinds,
    parent=st.booleans(),
    bounds=st.tuples(st.integers(-1, 12), st.integers(-1, 12)),
    naive=st.booleans(),
    limit=st.integers(1, 4),
)
def test_the_cli_lists_what_the_api_pages(
    local: Local,
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    added: list[tuple[str, bool, int]],
    status: TaskStatus | None,
    provider: str | None,
    kind: str | None,
    parent: bool,
    bounds: tuple[int, int],
    naive: bool,
    limit: int,
) -> None:
    """Tasks are added (some as children, some cancelled or failed, minutes apart) and a
    page asked for with any filters: the CLI's JSON lines on the local database are the
    API's items, its stderr names the API's next cursor, and through the API the table is
    the local one."""
    existing = local.repo.list_tasks(limit=1000).items
    for name, child, fate in added:
        parent_id = existing[-1].id if child and existing else None
        kind_of = "adgroup" if parent_id else "campaign"
        task_id = make(local, name, kind_of, parent_id=parent_id)
        if fate == 1 and not local.repo.get(task_id).status.is_final:
            local.repo.cancel(task_id)
        elif fate == 2:
            failed(local, task_id, "refused\nby the provider")
    existing = local.repo.list_tasks(limit=1000).items

    args: list[str] = ["--limit", str(limit)]
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        args += ["--status", status.value.upper()]
        params["status"] = status.value
    if provider is not None:
        args += ["--provider", provider]
        params["provider"] = provider
    if kind is not None:
        args += ["--kind", kind]
        params["kind"] = kind
    if parent and existing:
        args += ["--parent", str(existing[0].id)]
        params["parent_id"] = existing[0].id
    for option, field, minutes in zip(
        ("--since", "--until"), ("created_from", "created_to"), bounds, strict=True
    ):
        if minutes < 0:
            continue
        at = START + timedelta(minutes=minutes)
        args += [option, at.replace(tzinfo=None).isoformat() if naive else at.isoformat()]
        params[field] = at.isoformat()
    page = api.get("/api/tasks", params=params).json()

    code, out, err = run(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == page["items"]
    cursor = page["next_cursor"]
    assert err == ("" if cursor is None else operate.more_tasks(cursor) + "\n")

    code, here, err = run(monkeypatch, capsys, *args)
    assert (code, err) == (0, ""), err
    code, there, err = run(monkeypatch, capsys, *args, "--api", API)
    assert (code, err) == (0, ""), err
    assert there == here
    assert ids_of(here) == [item["id"] for item in page["items"]]
