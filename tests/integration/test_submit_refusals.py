"""`sluice submit` says a refusal the same way embedded and through a running API (real
HTTP, uvicorn on a spare port): each problem at its line or task of the file, one line for
a refusal of the whole call, nothing written, the key never shown."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from harness.api_server import api_only_settings, serve_api
from sluice import submit
from sluice.runtime import Runtime, build_runtime
from sluice.store.repository import tasks
from tests.unit.cli.running import one_line, run_cli, run_cli_captured

KEY = "sk_0123456789ab_Wq3VtYdR8pLmN2xK5sHgJf"

CSV = "ref,parent_ref,kind,name\nc1,,campaign,A\n\n\ng1,c1,ad_groop,B\n"
JSON = (
    '{"tasks": [{"kind": "campaign", "payload": {"name": "A"}, "children": ['
    '{"kind": "ad_group", "payload": {}}, {"kind": "ad_groop", "payload": {}}]}]}'
)
UNKNOWN = "kind: unknown kind 'ad_groop' for provider 'sandbox'; known: ad, ad_group,"


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Runtime]]:
    auth = getattr(request, "param", "auto")
    settings = api_only_settings(f"sqlite:///{tmp_path / 'api.db'}", auth=auth)
    runtime = build_runtime(settings)
    try:
        with serve_api(runtime) as base_url:
            yield base_url, runtime
    finally:
        runtime.close()


def count(runtime: Runtime) -> int:
    with runtime.repo.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tasks)).scalar_one())


@pytest.mark.parametrize(
    ("name", "content", "place"),
    [("tasks.csv", CSV, "tasks.csv:5"), ("tasks.json", JSON, "tasks.json: tasks[0].children[1]")],
)
def test_a_problem_is_named_at_its_place_in_the_file_embedded_and_through_the_api(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    served: tuple[str, Runtime],
    name: str,
    content: str,
    place: str,
) -> None:
    """Embedded, a problem was named "item 2" (its index once the tree was flattened, which
    no editor shows); through the API, the 422's JSON was printed whole on stdout."""
    base_url, runtime = served
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'local.db'}")
    said = []
    for via in ([], ["--api", base_url]):
        code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait", *via)
        assert code == 2
        said.append(err)

    lines = said[0].strip().splitlines()
    assert lines[0] == "nothing was submitted: 1 problem(s)"
    assert lines[1].startswith(f"  {tmp_path}/{place}: {UNKNOWN}"), lines
    assert len(lines) == 2
    assert said[1] == said[0]
    assert count(runtime) == 0


@pytest.mark.parametrize("served", ["required"], indirect=True)
def test_a_refusal_of_the_whole_call_is_one_line_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    served: tuple[str, Runtime],
) -> None:
    """A wrong key was `refused (401): {"detail": ...}` on stdout, wrapped to the terminal."""
    base_url, runtime = served
    data = tmp_path / "tasks.csv"
    data.write_text("ref,parent_ref,kind,name\nc1,,campaign,A\n", encoding="utf-8")

    code, err = run_cli(
        monkeypatch, capsys, "submit", str(data), "--no-wait", "--api", base_url, "--key", KEY
    )

    assert code == 2
    assert one_line(err) == (
        f"error: {base_url} refused the tasks (401): a valid API key is required: "
        "Authorization: Bearer <key>"
    )
    assert KEY not in err
    assert count(runtime) == 0


def test_a_file_submitted_twice_creates_its_tasks_once_unless_told_again(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    served: tuple[str, Runtime],
) -> None:
    """A submit killed after the API committed (SIGKILL 24 s into a 10,000-task file: no
    output, 10,000 tasks stored) and run again created the 10,000 a second time. The same
    file, embedded or through the API, now finds the tasks the first created and follows
    them (the same ids, nothing written); --again creates them once more."""
    base_url, runtime = served
    data = tmp_path / "tasks.csv"
    data.write_text("ref,parent_ref,kind,name\nc1,,campaign,A\ng1,c1,ad_group,B\n")
    local = f"sqlite:///{tmp_path / 'local.db'}"
    monkeypatch.setenv("SLUICE_DATABASE_URL", local)
    for via, stored in (
        ([], lambda: count_at(local)),
        (["--api", base_url], lambda: count(runtime)),
    ):
        first, _ = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait", *via)
        second, out, _ = run_cli_captured(
            monkeypatch, capsys, "submit", str(data), "--no-wait", *via
        )

        assert (first, second) == (0, 0)
        assert one_line(out).startswith(f"{data} was already submitted: following its 2 tasks")
        assert one_line(out).endswith("--again creates them once more")
        assert stored() == 2

        again, _ = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait", "--again", *via)

        assert again == 0
        assert stored() == 4


def count_at(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(tasks)).scalar_one())
    finally:
        engine.dispose()


class SlowApi(BaseHTTPRequestHandler):
    """Reads a bulk call and answers only after the client has given up."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(3)
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_bulk_call_left_without_an_answer_says_the_tasks_may_exist(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bulk call sent and not answered in time (10,000 tasks on a loaded host took over
    the 60 s it waited) said "cannot reach the Sluice API ... timed out", though the API
    had the tasks; it now says they may exist and that running it again follows them."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(submit, "BULK_TIMEOUT", httpx.Timeout(10.0, read=0.5))
    data = tmp_path / "tasks.csv"
    data.write_text("ref,parent_ref,kind,name\nc1,,campaign,A\n")
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait", "--api", url)
    finally:
        server.shutdown()

    assert code == 2
    assert one_line(err) == (
        f"error: no answer from the Sluice API at {url} within 0.5 s: the tasks may have been "
        "created; run the same command again: it follows them if they were"
    )
