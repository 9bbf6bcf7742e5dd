"""`sluice keys` and `sluice audit`: a key is printed once, listed without its secret,
revoked by id; bad requests are one-line errors; every change is audited."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sluice import cli


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner on a fresh SQLite database, wide enough for whole table cells."""
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'keys.db'}")
    return CliRunner(env={"COLUMNS": "250"})


def test_a_key_is_printed_once_and_listed_without_its_secret(run: CliRunner) -> None:
    """keys create prints the key alone on stdout; keys list shows id, role and tenant but
    no secret; keys revoke ends it and audit lists both actions."""
    made = run.invoke(
        cli.app,
        ["keys", "create", "--name", "ci-acme", "--role", "submitter", "--tenant", "acme"],
    )
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    prefix, key_id, secret = token.split("_", 2)
    assert prefix == "sk"

    listed = run.invoke(cli.app, ["keys", "list"])
    assert key_id in listed.stdout
    assert "submitter" in listed.stdout
    assert "acme" in listed.stdout
    assert secret not in listed.stdout

    revoked = run.invoke(cli.app, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0
    assert "revoked" in run.invoke(cli.app, ["keys", "list"]).stdout

    audit = run.invoke(cli.app, ["audit"]).stdout
    assert "key.create" in audit
    assert "key.revoke" in audit
    assert secret not in audit


def test_bad_key_requests_are_one_line_errors(
    run: CliRunner, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown role, a missing tenant or an unknown id end with exit 2 and one line
    naming the problem, no traceback, and no key."""
    for args, message in (
        (["keys", "create", "--name", "x", "--role", "boss"], "unknown role 'boss'"),
        (["keys", "create", "--name", "x", "--role", "viewer"], "belongs to one tenant"),
        (["keys", "revoke", "0123456789ab"], "API key '0123456789ab' not found"),
    ):
        monkeypatch.setattr("sys.argv", ["sluice", *args])
        with pytest.raises(SystemExit) as ended:
            cli.main()  # as the console script: Sluice's errors become one line, exit 2
        error = capsys.readouterr().err
        assert ended.value.code == 2
        assert message in error
        assert "Traceback" not in error
        assert len(error.strip().splitlines()) == 1

    assert "viewer" not in run.invoke(cli.app, ["keys", "list"]).stdout


def test_key_names_are_shown_as_written(run: CliRunner) -> None:
    """A key name that looks like console markup is printed as it is, never interpreted
    (a stray closing tag would otherwise end the command with a traceback)."""
    name = "[/red] ops [bold]team"
    made = run.invoke(cli.app, ["keys", "create", "--name", name, "--role", "admin"])
    key_id = made.stdout.strip().splitlines()[-1].split("_")[1]

    listed = run.invoke(cli.app, ["keys", "list"])
    revoked = run.invoke(cli.app, ["keys", "revoke", key_id])
    audit = run.invoke(cli.app, ["audit"])

    assert (made.exit_code, listed.exit_code, revoked.exit_code, audit.exit_code) == (0, 0, 0, 0)
    assert name in made.output
    assert name in listed.stdout
    assert name in revoked.output
    assert name in audit.stdout


def test_a_leaked_key_is_revoked_by_its_whole_text(run: CliRunner) -> None:
    """`sluice keys revoke` given the whole key (what someone who found a leak holds)
    revokes it by its public id and prints no secret. It answered "API key
    'sk_<id>_***' not found" and left the leaked key usable."""
    made = run.invoke(
        cli.app, ["keys", "create", "--name", "leaky", "--role", "viewer", "--tenant", "acme"]
    )
    token = made.stdout.strip().splitlines()[-1]
    key_id, secret = token.split("_", 2)[1:]

    revoked = run.invoke(cli.app, ["keys", "revoke", token])

    assert revoked.exit_code == 0, revoked.output
    assert f"revoked key {key_id} 'leaky'" in revoked.output
    assert secret not in revoked.output
    listed = run.invoke(cli.app, ["keys", "list"]).stdout
    assert "revoked" in listed


def test_audit_lists_what_one_key_did(run: CliRunner, tmp_path: Path) -> None:
    """`sluice audit --key-id` (an id, or the whole key) lists that key's actions only:
    docs/security.md's way to read what a leaked key did. The option did not exist, and
    the 50 newest records of every key were all the command showed."""
    from sluice import apikeys
    from sluice.domain import Actor
    from sluice.store import db
    from sluice.store.keys import KeyStore

    made = run.invoke(cli.app, ["keys", "create", "--name", "boss", "--role", "admin"])
    token = made.stdout.strip().splitlines()[-1]
    key_id = token.split("_")[1]
    engine = db.make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    store = KeyStore(engine)
    boss = store.get(key_id)
    apikeys.create_key(
        store, name="by-boss", role="viewer", tenant="acme", actor=Actor.of_key(boss)
    )
    apikeys.create_key(store, name="by-cli", role="viewer", tenant="acme")
    engine.dispose()

    for given in (key_id, token):
        shown = run.invoke(cli.app, ["audit", "--key-id", given])
        assert shown.exit_code == 0, shown.output
        assert "by-boss" in shown.stdout
        assert "by-cli" not in shown.stdout
        assert token.split("_", 2)[2] not in shown.stdout
