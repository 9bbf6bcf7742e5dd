"""`sluice submit FILE --priority N`: every task of the file gets N; outside -100..100 is
one operator line and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select

from sluice.store.repository import tasks
from tests.unit.cli.running import run_cli

FILE = '[{"kind": "campaign", "payload": {"advertiser_id": "adv-1", "name": "x", "budget": 5}}]'


def stored_priorities(database: Path) -> list[int]:
    engine = create_engine(f"sqlite:///{database}")
    try:
        if not inspect(engine).has_table("tasks"):
            return []
        with engine.connect() as conn:
            return list(conn.execute(select(tasks.c.priority)).scalars())
    finally:
        engine.dispose()


def test_submit_gives_every_task_the_priority(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = tmp_path / "tasks.json"
    data.write_text(FILE)
    database = tmp_path / "p.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{database}")

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait", "--priority", "7")

    assert code == 0, err
    assert stored_priorities(database) == [7]


@pytest.mark.parametrize("priority", ["101", "-101"])
def test_submit_refuses_a_priority_out_of_range_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    priority: str,
) -> None:
    data = tmp_path / "tasks.json"
    data.write_text(FILE)
    database = tmp_path / "p.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{database}")

    code, err = run_cli(
        monkeypatch, capsys, "submit", str(data), "--no-wait", f"--priority={priority}"
    )

    assert code == 2
    lines = err.strip().splitlines()
    assert lines == [f"error: --priority must be between -100 and 100, got {priority}"]
    assert stored_priorities(database) == []
