"""``sluice sandbox``: reads [sandbox] through the settings, flags win, runs uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from sluice.sandbox.cli import load_config, sandbox_command


@pytest.fixture
def toml_file(tmp_path: Path) -> Path:
    """A sluice.toml with a [sandbox] section."""
    path = tmp_path / "sandbox.toml"
    path.write_text(
        '[sandbox]\nprofile = "meta"\nseed = 3\nport = 9300\n'
        'limits = [{name = "app", limit = 7, window_s = 2}]\n'
        '[sandbox.fixtures]\n"1" = {status = "SUCCESS"}\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replaces uvicorn.run with a recorder so the command returns at once."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    return calls


def _runner_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(sandbox_command)
    return app


def test_section_is_read_from_the_given_file_and_flags_win(toml_file: Path) -> None:
    """The [sandbox] table of --config is used, and explicit flags override it."""
    config = load_config(toml_file, seed=11, port=None, profile=None)
    assert (config.profile, config.seed, config.port) == ("meta", 11, 9300)
    assert config.limits[0].limit == 7
    assert config.fixtures["1"].status == "SUCCESS"


def test_without_a_file_the_port_defaults_to_9000() -> None:
    """With no TOML anywhere, the sandbox listens on 9000 with the standard profile."""
    config = load_config()
    assert (config.profile, config.port) == ("standard", 9000)


def test_command_serves_with_flags_and_env(
    toml_file: Path, served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags and SLUICE_SANDBOX_* variables reach uvicorn's host and port."""
    monkeypatch.setenv("SLUICE_SANDBOX_PORT", "9555")
    result = CliRunner().invoke(
        _runner_app(), ["--config", str(toml_file), "--host", "127.0.0.2", "--profile", "bare"]
    )
    assert result.exit_code == 0, result.output
    assert (served[0]["host"], served[0]["port"]) == ("127.0.0.2", 9555)


def test_the_port_is_bound_before_it_is_announced(served: list[dict[str, Any]]) -> None:
    """uvicorn serves the socket the command bound (its fd), and port 0 is announced as
    the port the system chose, not as 0."""
    result = CliRunner().invoke(_runner_app(), ["--port", "0"])

    assert result.exit_code == 0, result.output
    assert isinstance(served[0]["fd"], int)
    announced = result.output.strip().rsplit(":", 1)[1]
    assert announced.isdigit(), result.output
    assert int(announced) > 0


def test_unknown_profile_is_a_usage_error(served: list[dict[str, Any]]) -> None:
    """A wrong --profile exits with status 2, names the known profiles and serves nothing."""
    result = CliRunner(env={"COLUMNS": "200"}).invoke(_runner_app(), ["--profile", "acme"])
    assert result.exit_code == 2
    known = "bare, demo, dv360, google-ads, headers, hidden, hidden-headers, leaky, meta, standard"
    assert f"known: {known}" in result.output
    assert served == []


def test_a_bad_value_names_its_key_without_pydantic_s_text(
    tmp_path: Path, served: list[dict[str, Any]]
) -> None:
    """A limit of 0 in [sandbox] was shown as pydantic's whole report (input values, a
    link to pydantic's site); it is one line naming the key and the reason."""
    path = tmp_path / "sandbox.toml"
    path.write_text('[sandbox]\nlimits = [{name = "x", limit = 0, window_s = 1}]\n')

    result = CliRunner(env={"COLUMNS": "200"}).invoke(_runner_app(), ["--config", str(path)])

    assert result.exit_code == 2
    assert "sandbox.limits.0.sliding.limit: Input should be greater than 0" in result.output
    assert "errors.pydantic.dev" not in result.output
    assert "input_value" not in result.output
    assert served == []


@pytest.mark.parametrize("level", ["LOUD", "verbose"])
def test_an_unknown_log_level_is_a_usage_error(served: list[dict[str, Any]], level: str) -> None:
    """`sluice sandbox --log-level LOUD` was a KeyError traceback from uvicorn's logging
    set-up; it exits with status 2 naming the levels, and serves nothing."""
    result = CliRunner(env={"COLUMNS": "200"}).invoke(_runner_app(), ["--log-level", level])

    assert result.exit_code == 2
    assert "one of critical, error, warning, info, debug, trace" in result.output
    assert served == []


def test_the_log_level_is_read_in_any_case(served: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(_runner_app(), ["--log-level", "INFO", "--port", "0"])

    assert result.exit_code == 0, result.output
    assert served[0]["log_level"] == "info"
