"""``sluice status``: the overview as a table, from the local database or a running API."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sluice import cli
from sluice.domain import Submission
from sluice.store import db
from sluice.store.repository import TaskRepository


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["sluice", *args])
    monkeypatch.setenv("COLUMNS", "160")
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    code = exit_info.value.code
    out = capsys.readouterr()
    return (code if isinstance(code, int) else 1), out.out, out.err


def test_status_once_shows_each_provider_key_and_the_queue(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'status.db'}"
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    TaskRepository(engine).create_many([Submission("sandbox", "campaign", {"name": "x"})] * 3)
    engine.dispose()
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)

    code, out, err = run_cli(monkeypatch, capsys, "status", "--once")

    assert code == 0, err
    assert "sandbox" in out
    assert "20/s" in out
    assert "Not Started" in out
    assert "ready" in out
    assert "running" in out


def test_status_against_an_api_that_is_not_there_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_cli(
        monkeypatch, capsys, "status", "--once", "--api", "http://127.0.0.1:9"
    )

    assert code == 1
    assert err.strip().splitlines() == ["status: cannot reach http://127.0.0.1:9: ConnectError"]
