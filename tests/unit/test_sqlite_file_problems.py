"""An SQLite file that cannot be written right now: locked by another process past the
busy timeout, or read-only. The API answers a clear 503 JSON, every command one line with
exit code 2, and nothing is half-written.

Both conditions are real ones: another connection holds ``BEGIN EXCLUSIVE`` on the file,
or the file is opened read-only (``mode=ro``, what a read-only file or mount gives).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import sluice
from sluice.api.app import create_app
from sluice.settings import Settings
from sluice.store import db
from sluice.store.repository import TaskRepository, tasks
from tests.unit.api.conftest import CATALOG
from tests.unit.cli.running import one_line, run_cli

EXAMPLE = Path(__file__).parents[2] / "examples" / "hierarchy.csv"
GUARD_S = 90
"""How long a refused start may take on a loaded host before the test calls it a hang."""
BUSY_S = 0.2
"""The busy timeout of these tests: a locked file is reported after this long, not 30 s."""


@pytest.fixture
def database(tmp_path: Path) -> str:
    """A migrated SQLite file (its URL)."""
    url = f"sqlite:///{tmp_path / 'sluice.db'}"
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    engine.dispose()
    return url


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", BUSY_S)


@pytest.fixture
def locked(database: str) -> Iterator[str]:
    """The database, held by another connection in ``BEGIN EXCLUSIVE`` until the test ends."""
    holder = sqlite3.connect(database.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield database
    finally:
        holder.rollback()
        holder.close()


def read_only(url: str) -> str:
    """The same file opened read-only."""
    return f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"


def task_count(url: str) -> int:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(tasks)).scalar_one())
    finally:
        engine.dispose()


def api(url: str) -> TestClient:
    engine = db.make_engine(url)
    app = create_app(Settings(database_url=url), TaskRepository(engine), CATALOG)
    return TestClient(app, base_url="http://localhost", raise_server_exceptions=False)


@pytest.mark.usefixtures("short_busy_timeout")
def test_a_locked_database_is_503_json_not_500(locked: str) -> None:
    """A create while another process holds the file's write lock was a plain-text 500
    "Internal Server Error" after 30 s, with a traceback in the log."""
    with api(locked) as client:
        answer = client.post("/api/tasks", json={"id": 1, "status": "Not Started"})

    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "5"
    assert answer.json() == {"detail": "database unavailable: database is locked"}


@pytest.mark.usefixtures("short_busy_timeout")
def test_a_command_on_a_locked_database_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], locked: str
) -> None:
    """`sluice keys create` on a locked file printed SQLAlchemy's traceback, exit code 1."""
    monkeypatch.setenv("SLUICE_DATABASE_URL", locked)

    code, err = run_cli(monkeypatch, capsys, "keys", "create", "--name", "ci", "--role", "admin")

    assert code == 2
    assert one_line(err).startswith("error: database unavailable: database is locked (sqlite:")


def test_a_read_only_database_is_503_json_and_nothing_written(database: str) -> None:
    """A create on a read-only file was a 500 with the statement and its parameters in the
    log; now 503 naming the reason, and no task."""
    with api(read_only(database)) as client:
        answer = client.post("/api/tasks", json={"id": 1, "status": "Not Started"})

    assert answer.status_code == 503, answer.text
    assert answer.json() == {"detail": "database unavailable: attempt to write a readonly database"}
    assert task_count(database) == 0


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "create", "--name", "ci", "--role", "admin"),
        ("submit", str(EXAMPLE), "--no-wait"),
    ],
)
def test_a_write_command_on_a_read_only_database_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database: str,
    args: tuple[str, ...],
) -> None:
    """They printed SQLAlchemy's traceback with the INSERT and every row it held (a key's
    hash, whole payloads), exit code 1."""
    monkeypatch.setenv("SLUICE_DATABASE_URL", read_only(database))

    code, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2
    line = one_line(err)
    assert line.startswith("error: database unavailable: attempt to write a readonly database")
    assert task_count(database) == 0


@pytest.mark.parametrize("command", ["up", "api"])
def test_serving_a_read_only_database_refuses_to_start(database: str, command: str) -> None:
    """`sluice up` (and `sluice api`) started on a read-only file and served: the engine
    failed every step in its log and the API refused every create, nothing said at start.
    Run as a process: the old code served until stopped (here, until the guard)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(sluice.__file__).parents[1]),  # this checkout, from any cwd
        "SLUICE_DATABASE_URL": read_only(database),
        "COLUMNS": "200",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sluice", command, "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=GUARD_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`sluice {command}` was still serving a read-only database after {GUARD_S} s")

    assert done.returncode == 2
    assert one_line(done.stderr).startswith(
        "error: database unavailable: attempt to write a readonly database (sqlite:"
    )
