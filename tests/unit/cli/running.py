"""Running the ``sluice`` entry point in-process, for the CLI tests that read its stderr."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.cluster import free_port
from sluice import cli


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """Run ``sluice ARGS``; returns (exit code, stderr). Rich wraps at 200 columns."""
    code, _, err = run_cli_captured(monkeypatch, capsys, *args)
    return code, err


def run_cli_captured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run ``sluice ARGS``; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sluice", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    code = exit_info.value.code
    captured = capsys.readouterr()
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def one_line(text: str) -> str:
    """The one line of ``text``, failing the test if there are more or a traceback."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


def assert_wrong_key_refused(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    base_url: str,
    key: str,
    *,
    via_env: bool,
) -> None:
    """``sluice COMMAND --api BASE_URL`` with an unknown ``key`` (``--key``, or
    ``SLUICE_API_KEY`` when ``via_env``) ends in one line, exit code 2, without the key."""
    args: tuple[str, ...] = (command, "--api", base_url)
    if via_env:
        monkeypatch.setenv("SLUICE_API_KEY", key)
    else:
        args = (*args, "--key", key)

    code, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2
    assert one_line(err) == (
        "error: refused (401): a valid API key is required: Authorization: Bearer <key>"
    )
    assert key not in err
    assert key[-12:] not in err


def assert_unreachable_api_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, key: str
) -> None:
    """``sluice COMMAND --api URL`` with nothing listening at ``URL`` ends in one line, exit
    code 2, naming the URL with its password masked and never the key."""
    port = free_port()  # nothing listens there

    code, err = run_cli(
        monkeypatch, capsys, command, "--api", f"http://u:pw@127.0.0.1:{port}", "--key", key
    )

    assert code == 2
    line = one_line(err)
    assert line.startswith(f"error: cannot reach the Sluice API at http://u:***@127.0.0.1:{port}")
    assert "pw@" not in err
    assert key not in err


def local_sluice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, providers_toml: str) -> str:
    """Point the commands at a SQLite database in ``tmp_path`` (not created) and a config
    file holding ``providers_toml``, with no limiter; returns the database URL."""
    config = tmp_path / "sluice.toml"
    config.write_text(providers_toml, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'sluice.db'}"
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)
    monkeypatch.setenv("SLUICE_CONFIG", str(config))
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    return url
