"""A command line that does not parse is one line on stderr naming the problem, exit code 2.

Typer drew these as a box of five lines or more (the usage, a hint, a framed error); the
line now names the command, the offending option, command or argument, and its help.
"""

from __future__ import annotations

import contextlib
import io
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice import cli

from .running import one_line, run_cli, run_cli_captured


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("submit", "--bogus"),
            "sluice submit: no such option: --bogus (see 'sluice submit --help')",
        ),
        (("nosuchcmd",), "sluice: no such command 'nosuchcmd' (see 'sluice --help')"),
        (("--bogus",), "sluice: no such option: --bogus (see 'sluice --help')"),
        (("submit",), "sluice submit: missing argument 'file' (see 'sluice submit --help')"),
        (
            ("submit", "a.json", "b.json"),
            "sluice submit: got unexpected extra argument(s) (b.json) (see 'sluice submit --help')",
        ),
        (
            ("db", "nosuch"),
            "sluice db: no such command 'nosuch' (see 'sluice db --help')",
        ),
        (
            ("db", "prune", "--bogus", "1"),
            "sluice db prune: no such option: --bogus (see 'sluice db prune --help')",
        ),
        (
            ("keys", "create", "--name", "ops"),
            "sluice keys create: missing option '--role' (see 'sluice keys create --help')",
        ),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else "",
)
def test_a_usage_error_is_one_line_naming_it_and_the_help(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    expected: str,
) -> None:
    """Unknown options and commands, missing and extra arguments, at the top and nested."""
    code, out, err = run_cli_captured(monkeypatch, capsys, *args)

    assert code == 2
    assert one_line(err) == expected
    assert out == ""


@pytest.mark.parametrize(
    ("args", "token"),
    [
        (("audit", "--limit", "abc"), "'--limit'"),
        (("audit", "--limit", "0"), "'--limit'"),
        (("explain", "0"), "'task_id'"),
        (("db", "prune", "--older-than", "30d", "--batch", "many"), "'--batch'"),
        (("metrics-serve", "--port", "http"), "'--port'"),
        (("sandbox", "--port", "abc"), "'--port'"),
        (("sandbox", "--bogus"), "--bogus"),
        (("sandbox", "--log-level", "loud"), "'--log-level'"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else "",
)
def test_a_bad_value_is_one_line_naming_the_option(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    token: str,
) -> None:
    """A number that does not parse or is out of range, in a top-level or nested command
    (and in ``sandbox``, which is added only when asked for), names the parameter."""
    code, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2
    line = one_line(err)
    command = " ".join(arg for arg in args[:2] if not arg.startswith("-"))
    if args[0] != "db":
        command = args[0]
    assert line.startswith(f"sluice {command}: "), line
    assert token in line, line
    assert line.endswith(f"(see 'sluice {command} --help')"), line


def test_a_bad_boolean_in_the_environment_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Sluice option takes a fixed set of choices; a flag read from a variable does
    (true or false), and a value outside it names the flag and the variable."""
    monkeypatch.setenv("SLUICE_INSECURE", "maybe")

    code, err = run_cli(monkeypatch, capsys, "api")

    assert code == 2
    assert one_line(err) == (
        "sluice api: invalid value for '--insecure' (env var: 'SLUICE_INSECURE'): Input should "
        "be a valid boolean, unable to interpret input (see 'sluice api --help')"
    )


def test_a_mistyped_command_keeps_the_suggestion_on_its_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Typer's "did you mean" stays: it is the most useful part of the message."""
    code, err = run_cli(monkeypatch, capsys, "statsu")

    assert code == 2
    assert one_line(err) == (
        "sluice: no such command 'statsu'. Did you mean 'status'? (see 'sluice --help')"
    )


def test_help_pages_are_unchanged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--help`` is still Typer's page on stdout, exit 0; a group given no command still
    shows its page (Click's exit code 2 for it is unchanged)."""
    code, out, err = run_cli_captured(monkeypatch, capsys, "submit", "--help")
    assert (code, err) == (0, "")
    assert "Usage: sluice submit [OPTIONS] {file}" in out
    assert "--priority" in out

    code, out, err = run_cli_captured(monkeypatch, capsys, "db")
    assert (code, err) == (2, "")
    assert "Usage: sluice db [OPTIONS] COMMAND [ARGS]..." in out
    assert "prune" in out


def test_a_sluice_error_keeps_its_own_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sluice's own refusals of a value that parsed are unchanged: ``error: ...``."""
    code, err = run_cli(monkeypatch, capsys, "submit", "x.json", "--priority", "101")

    assert code == 2
    assert one_line(err) == "error: --priority must be between -100 and 100, got 101"


def test_an_interrupt_and_an_unexpected_error_behave_as_before(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C ends a command with 130 and says nothing; a bug is its traceback, exit 1."""

    def interrupted(**_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_open_store", interrupted)
    assert run_cli(monkeypatch, capsys, "keys", "list") == (130, "")

    def broken(**_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_open_store", broken)
    code, err = run_cli(monkeypatch, capsys, "keys", "list")
    assert code == 1
    assert err.startswith("Traceback (most recent call last):")
    assert err.rstrip().endswith("RuntimeError: a bug")


SUBMIT_OPTIONS = {"--api", "--wait", "--no-wait", "--key", "--priority", "--again", "--help"}


@given(
    name=st.from_regex(r"--[a-z][a-z0-9-]{0,20}", fullmatch=True).filter(
        lambda name: name not in SUBMIT_OPTIONS
    )
)
def test_any_unknown_option_is_one_line_naming_it(name: str) -> None:
    """Whatever the unknown option, the answer is one line that names it, exit code 2."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(err):
        patch.setattr(sys, "argv", ["sluice", "submit", "tasks.json", name])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()

    assert exit_info.value.code == 2
    line = one_line(err.getvalue())
    assert line.startswith(f"sluice submit: no such option: {name}"), line
    assert line.endswith("(see 'sluice submit --help')"), line
