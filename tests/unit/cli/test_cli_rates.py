"""`sluice rates`: each key's configured rate beside the rate in force, and why."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluice import cli
from sluice.store import db
from sluice.store.learned import LearnedDrop, LearnedRateStore

CONFIG = """
[sluice]
default_provider = "acme"

[providers.acme]
base_url = "http://acme.test"
rate_limit = "50/s"
adaptive = true
kinds = { campaign = { submit = "POST /campaigns" } }
"""


def test_rates_shows_a_learned_rate_beside_the_configured_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text(CONFIG, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'sluice.db'}"
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    drop = LearnedDrop("acme", "acme", 50.0, 40.0, 20.0, time.time(), 1, "refused")
    assert LearnedRateStore(engine).record_drop(drop, None, at=datetime.now(UTC))
    engine.dispose()
    monkeypatch.setenv("SLUICE_CONFIG", str(config))
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(sys, "argv", ["sluice", "rates"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if " acme " in line and "learned" in line)
    assert "50/s" in row
    assert "20/s" in row or "20.1/s" in row or "20.2/s" in row
