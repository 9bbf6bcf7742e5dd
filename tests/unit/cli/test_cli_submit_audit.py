"""`sluice submit FILE` on the database is audited as the host's command (``cli``): one
``tasks.bulk_create`` record naming the tasks it created, as the API's bulk route writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from sluice.store.audit import audit
from tests.unit.cli.running import run_cli

FILE = (
    '[{"kind": "campaign", "payload": {"advertiser_id": "adv-1", "name": "x", "budget": 5}},'
    ' {"kind": "campaign", "payload": {"advertiser_id": "adv-1", "name": "y", "budget": 5}}]'
)


def test_submit_on_the_database_is_audited_as_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = tmp_path / "tasks.json"
    data.write_text(FILE)
    database = tmp_path / "s.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{database}")

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait")

    assert code == 0, err
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(audit.c.actor, audit.c.action, audit.c.detail)).all()
    finally:
        engine.dispose()
    assert [(r.actor, r.action, r.detail["count"]) for r in rows] == [
        ("cli", "tasks.bulk_create", 2)
    ]
