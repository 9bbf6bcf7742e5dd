"""``sluice pause|resume|pin|unpin|explain``: on the local database and through the API, the
same lines; mistakes are one line and exit 2, writing nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from sluice import operate
from sluice.api.app import build_api
from sluice.domain import Submission
from sluice.runtime import build_runtime
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.audit import audit
from tests.unit.cli.running import local_sluice
from tests.unit.cli.running import run_cli_captured as run_cli

PROVIDERS_TOML = """
[providers.sandbox]
preset = "sandbox-demo"
base_url = "http://127.0.0.1:9"
rate_limit = "20/s"

[[providers.sandbox.limits]]
scope = "write"
rate = "10/s"
"""


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local database and providers for the commands; returns the database URL."""
    url = local_sluice(tmp_path, monkeypatch, PROVIDERS_TOML)
    engine = db.make_engine(url)  # as a running Sluice leaves it: the commands need one
    db.ensure_schema(engine)
    engine.dispose()
    return url


def audited(url: str) -> int:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(audit)).scalar_one())
    finally:
        engine.dispose()


def test_the_config_file_is_read(local: str) -> None:
    """The fixture's settings name the providers the commands act on."""
    assert "sandbox" in load_settings().providers


LOCAL_SCRIPT = [
    (
        ("pause", "sandbox", "--reason", "vendor maintenance", "--for", "30min"),
        "paused sandbox until ",
    ),
    (
        ("pin", "sandbox:write", "5/s", "--reason", "429s"),
        "pinned sandbox:write at 5/s (configured 10/s): 429s",
    ),
    (("explain", "1"), "task 1: Not Started (ready): paused until "),
    (("unpin", "sandbox:write"), "unpinned sandbox:write: 5/s -> configured 10/s"),
    (("resume", "sandbox"), "resumed sandbox"),
    (("explain", "1"), "task 1: Not Started (ready): waiting for a slot on sandbox:write"),
    (("unpin", "sandbox:write"), "sandbox:write had no pin; it runs at its configured 10/s"),
]


def test_each_command_on_the_local_database_says_what_it_did(
    local: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = build_runtime(load_settings())
    runtime.repo.create(Submission("sandbox", "campaign", {"name": "Spring"}))
    runtime.close()

    for args, expected in LOCAL_SCRIPT:
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert (code, err) == (0, ""), err
        assert out.splitlines()[0].startswith(expected), out

    records = audited(local)
    assert records == 5  # pause, pin, unpin, resume, unpin: explain writes nothing


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("pin", "sandbox:write", "11/s", "--reason", "r"),
            "error: a pin only lowers: 11/s is above",
        ),
        (("pin", "sandbox:write", "lots", "--reason", "r"), "error: invalid rate 'lots'"),
        (
            ("pause", "nope", "--reason", "r"),
            "error: unknown provider 'nope'; known providers: sandbox",
        ),
        (
            ("resume", "sandbox:read"),
            "error: unknown limit key 'sandbox:read' of provider 'sandbox'",
        ),
        (
            ("pause", "sandbox", "--reason", "r", "--for", "soon"),
            "error: duration must be a duration",
        ),
        (("explain", "42"), "error: task 42 not found"),
        (
            ("pause", "sandbox", "--reason", "r", "--until", "0001-01-01T00:00:00+14:00"),
            "error: until 0001-01-01T00:00:00+14:00 is out of range in UTC (years 1 to 9999)",
        ),
        (
            ("pause", "sandbox", "--reason", "r", "--until", "9999-12-31T23:59:59-14:00"),
            "error: until 9999-12-31T23:59:59-14:00 is out of range in UTC (years 1 to 9999)",
        ),
    ],
)
def test_mistakes_are_one_line_and_write_nothing(
    local: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    expected: str,
) -> None:
    code, _out, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(expected), err
    assert audited(local) == 0


def test_an_unreachable_api_is_one_line(
    local: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        monkeypatch, capsys, "resume", "sandbox", "--api", "http://u:pw@127.0.0.1:9"
    )

    assert code == 2
    assert err.strip().startswith("error: cannot reach the Sluice API at http://u:***@127.0.0.1:9")
    assert "pw" not in err.replace("pw@", "")


@pytest.fixture
def remote(local: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``--api`` calls reach the API app of the same database (in-process)."""
    runtime = build_runtime(load_settings())
    app = build_api(runtime)

    def client(base_url: str, headers: dict[str, str], **_: Any) -> TestClient:
        return TestClient(app, base_url="http://localhost", headers=headers)

    monkeypatch.setattr(operate.httpx, "Client", client)
    yield
    runtime.close()


def test_through_the_api_the_commands_print_the_same_lines(
    local: str,
    remote: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runtime = build_runtime(load_settings())
    runtime.repo.create(Submission("sandbox", "campaign", {"name": "Spring"}))
    runtime.close()

    for args, expected in LOCAL_SCRIPT:
        code, out, err = run_cli(monkeypatch, capsys, *args, "--api", "http://sluice.test")
        assert (code, err) == (0, ""), err
        assert out.splitlines()[0].startswith(expected), out
    code, _, err = run_cli(
        monkeypatch, capsys, "pin", "sandbox:write", "50/s", "--reason", "r", "--api", "http://x"
    )
    assert code == 2
    assert err.strip() == (
        "error: refused (422): a pin only lowers: 50/s is above sandbox:write's configured "
        "rate 10/s"
    )
    assert audited(local) == 5


def test_an_end_out_of_range_in_utc_through_the_api_is_one_line(
    local: str,
    remote: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sluice pause --until 0001-01-01T00:00:00+14:00 --api URL` is the API's 422 in one
    line (it was a traceback: the API answered 500); nothing is paused or audited."""
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        *("pause", "sandbox", "--reason", "r", "--until", "0001-01-01T00:00:00+14:00"),
        *("--api", "http://sluice.test"),
    )

    assert code == 2
    assert err.strip() == (
        "error: refused (422): Value error, 0001-01-01T00:00:00+14:00 is out of range in UTC "
        "(years 1 to 9999)"
    )
    assert audited(local) == 0


@pytest.mark.parametrize(
    ("args", "out", "warning"),
    [
        (("resume", "sandbox"), "sandbox was not paused", "controls.limiter_unavailable"),
        (("explain", "TASK"), "task TASK: Not Started (ready)", "explain.limiter_unavailable"),
    ],
)
def test_a_limiter_that_is_down_is_a_warning_line_not_a_traceback(
    local: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    out: str,
    warning: str,
) -> None:
    """With SLUICE_REDIS_URL unreachable, the command still works on the database (the
    dispatchers copy its pauses into the limiter), but printed 60 to 140 lines of
    traceback through Python's last-resort log handler, unformatted and unmasked."""
    runtime = build_runtime(load_settings())
    task, _ = runtime.repo.create(Submission("sandbox", "campaign", {"name": "Spring"}))
    runtime.close()
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://:hunter2-secret@127.0.0.1:1/0")
    args = tuple(str(task.id) if arg == "TASK" else arg for arg in args)

    code, shown, err = run_cli(monkeypatch, capsys, *args)

    assert code == 0, err
    assert shown.startswith(out.replace("TASK", str(task.id))), shown
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert any(warning in line for line in lines), err
    assert all(" WARNING " in line and "Connection refused" in line for line in lines), err
    assert "hunter2" not in err
