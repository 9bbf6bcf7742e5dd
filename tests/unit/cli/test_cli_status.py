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

    assert code == 2  # an operator error, like every command's (it was 1)
    assert err.strip().splitlines() == [
        "status: cannot reach the Sluice API at http://127.0.0.1:9: [Errno 111] Connection refused"
    ]


def test_status_never_repeats_a_password_in_the_api_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--api http://user:secret@host` was repeated as given in the one-line error."""
    code, _out, err = run_cli(
        monkeypatch, capsys, "status", "--once", "--api", "http://ops:s3cr3t-pw@127.0.0.1:9"
    )

    assert code == 2
    assert "s3cr3t-pw" not in err
    assert err.strip().startswith(
        "status: cannot reach the Sluice API at http://ops:***@127.0.0.1:9"
    )


def test_status_shows_a_spent_quota_waiting_for_its_reset(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A provider's daily quota, all used: the table says it is spent and when it resets,
    on the clock of its time zone."""
    from datetime import UTC, datetime

    from sluice.engine.quotas import local_time, window_of
    from sluice.ratelimit.quota import parse_quota
    from sluice.store.quotas import QuotaStore

    url = f"sqlite:///{tmp_path / 'status.db'}"
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    quota = parse_quota("50/d", "America/Los_Angeles")
    now = datetime.now(UTC)
    window = window_of("gads:1d", quota, now)
    assert QuotaStore(engine).reserve(window, 50, now) == 50
    engine.dispose()
    config = tmp_path / "sluice.toml"
    config.write_text(
        '[sluice]\ndefault_provider = "gads"\n\n[providers.gads]\npreset = "sandbox-demo"\n'
        'base_url = "http://127.0.0.1:9"\nrate_limit = "5/s"\nquota = "50/d"\n'
        'quota_reset = "America/Los_Angeles"\n'
    )
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)
    monkeypatch.setenv("SLUICE_CONFIG", str(config))

    code, out, err = run_cli(monkeypatch, capsys, "status", "--once")

    assert code == 0, err
    assert "quota gads:1d" in out
    assert "50/50" in out
    assert f"spent: waits for the reset at {local_time(window.end, 'America/Los_Angeles')}" in out


def test_status_shows_payload_values_as_text_and_a_pause_until_resumed() -> None:
    """A per-account key is named by a tenant's payload value: it is printed as written,
    never read as Rich markup (``[/]`` crashed every operator's `sluice status` with a
    MarkupError; ``[link=...]`` made a link), and a pause with no end says so ("paused
    None s" before)."""
    from io import StringIO

    from rich.console import Console

    from sluice import status

    data = {
        "at": "2026-12-05T20:33:35+00:00",
        "providers": [
            {
                "name": "sandbox",
                "paused": True,
                "pause_left_s": None,
                "pause_signal": "manual",
                "keys": [
                    {"key": "sandbox", "rate": "20/s", "used": 0, "limit": 20},
                    {"key": "sandbox:write:advertiser_id=[/]", "rate": None, "used": 1},
                    {"key": "sandbox:write:advertiser_id=[link=http://x]y[/link]", "used": 1},
                ],
                "queue": [{"status": "Error", "phase": "done", "count": 1}],
            }
        ],
    }
    out = StringIO()

    Console(file=out, width=200).print(status.render(data))

    shown = out.getvalue()
    assert "advertiser_id=[/]" in shown
    assert "advertiser_id=[link=http://x]y[/link]" in shown
    assert "paused until resumed (manual)" in shown
    assert "None" not in shown


def test_status_names_the_busiest_account_keys_and_counts_the_others() -> None:
    """`sluice status` printed one line per account key used in the last five minutes:
    1,526 lines for 3,000 advertisers under a per-advertiser limit. Like the console it
    now names the busiest few, paused ones first, and counts the rest."""
    from io import StringIO

    from rich.console import Console

    from sluice import status

    accounts = [
        {"key": f"sandbox:write:advertiser_id=adv-{n}", "used": 1, "account": True}
        for n in range(100)
    ]
    accounts[37] = {**accounts[37], "paused": True, "used": 0}
    accounts[50] = {**accounts[50], "used": 9}
    data = {
        "at": "2026-12-05T20:33:35+00:00",
        "providers": [
            {
                "name": "sandbox",
                "keys": [{"key": "sandbox", "rate": "20/s", "used": 100, "limit": 20}, *accounts],
                "queue": [],
            }
        ],
    }
    out = StringIO()

    Console(file=out, width=200).print(status.render(data))

    shown = out.getvalue()
    named = [line for line in shown.splitlines() if "advertiser_id=adv-" in line]
    assert 1 <= len(named) <= 10
    assert "adv-37 " in named[0]
    assert "adv-50 " in named[1]
    assert f"{100 - len(named)} more account keys" in shown
