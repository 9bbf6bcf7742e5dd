"""Operator mistakes at the command line end in one clear line, exit code 2, nothing written."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, insert, inspect, select, text

from sluice import cli
from sluice.store.repository import tasks

from .running import one_line, run_cli

PASSWORD = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"postgresql://admin:{PASSWORD}@127.0.0.1:1/sluice",
            "error: database unavailable: connection failed: ",
        ),
        (
            f"postgresql://admin:{PASSWORD}@127.0.0.1:notaport/sluice",
            "configuration error: database_url (postgresql://...) is not a database URL: "
            "its port is not a number",
        ),
        (
            f"mysql://admin:{PASSWORD}@127.0.0.1/sluice",
            "configuration error: database_url backend 'mysql' is not supported",
        ),
        ("sqlite:////no/such/folder/sluice.db", "error: database unavailable: unable to open"),
    ],
)
def test_db_upgrade_bad_database_url_is_one_line_without_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, expected: str
) -> None:
    """`sluice db upgrade` on an unreachable or malformed URL: one line, password masked."""
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)

    code, err = run_cli(monkeypatch, capsys, "db", "upgrade")

    assert code == 2
    line = one_line(err)
    assert line.startswith(expected), line
    assert PASSWORD not in err


@pytest.mark.parametrize("url", ["garbage", f"postgresql://admin:{PASSWORD}@127.0.0.1:x/sluice"])
@pytest.mark.parametrize(
    "command",
    [
        ("status", "--once"),
        ("audit",),
        ("keys", "list"),
        ("explain", "1"),
        ("pause", "sandbox", "--reason", "r"),
        ("db", "prune", "--older-than", "30d"),
        ("rates",),
        ("tasks",),
    ],
)
def test_a_database_url_that_does_not_parse_is_one_line_for_every_command(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    command: tuple[str, ...],
) -> None:
    """The check that an SQLite file exists parsed the URL with SQLAlchemy first:
    SLUICE_DATABASE_URL=garbage made each of these a traceback (ArgumentError)."""
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)

    code, err = run_cli(monkeypatch, capsys, *command)

    assert code == 2
    line = one_line(err)
    assert "is not a database URL" in line, line
    assert PASSWORD not in err


def test_unreachable_database_names_where_with_password_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unreachable database is named as postgresql://user:***@host/db."""
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"postgresql://admin:{PASSWORD}@127.0.0.1:1/app")

    _, err = run_cli(monkeypatch, capsys, "db", "upgrade")

    assert one_line(err).endswith("(postgresql://admin:***@127.0.0.1:1/app)")


def test_bad_provider_config_keeps_bracketed_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A provider with nothing to do is reported with [kinds.KIND] and [poll] intact."""
    config = tmp_path / "sluice.toml"
    config.write_text('[providers.acme]\nbase_url = "http://127.0.0.1:1"\nrate_limit = "1/s"\n')
    monkeypatch.setenv("SLUICE_CONFIG", str(config))
    data = tmp_path / "tasks.json"
    data.write_text('[{"kind": "campaign", "payload": {"name": "x"}}]')

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait")

    assert code == 2
    line = one_line(err)
    assert line.startswith("configuration error: ")
    assert "define [kinds.KIND] tables or a [poll] table" in line


def test_import_file_that_is_not_utf8_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file that is not UTF-8 text is refused in one line naming it; no database is made."""
    data = tmp_path / "tasks.csv"
    data.write_bytes(b"ref,kind,name\nc1,campaign,Caf\xe9\n")

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait")

    assert code == 2
    assert one_line(err).startswith(f"error: {data}: not UTF-8 text (byte ")
    assert not Path("sluice.db").exists()


def test_import_file_that_cannot_be_read_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file the operating system refuses to read is reported in one line naming it."""
    data = tmp_path / "tasks.json"
    data.write_text("[]")

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait")

    assert code == 2
    assert one_line(err) == f"error: {data}: cannot read: Permission denied"


def test_a_file_of_more_tasks_than_one_call_takes_is_one_line_before_the_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It was "request: tasks: at most 10000 tasks per call, got 10001" (which call?), said
    after the database was created and every item checked."""
    data = tmp_path / "tasks.csv"
    data.write_text("kind,name\n" + "campaign,x\n" * 10_001, encoding="utf-8")
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path}/sluice.db")

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait")

    assert code == 2
    assert one_line(err) == (
        f"error: {data}: 10,001 tasks; sluice submit creates at most 10,000 at once, all or "
        "nothing: split the file, each parent in the same file as its children"
    )
    assert not (tmp_path / "sluice.db").exists()


@pytest.mark.parametrize("what", ["directory", "missing"])
def test_submit_of_a_directory_or_a_missing_file_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, what: str
) -> None:
    """Click's own check answered these with a usage box of seven lines."""
    data = tmp_path / "tasks.json"
    if what == "directory":
        data.mkdir()
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path}/sluice.db")

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait")

    assert code == 2
    reason = "is a directory" if what == "directory" else "no such file"
    assert one_line(err) == f"error: {data}: {reason}"
    assert not (tmp_path / "sluice.db").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('[{"kind": "campaign", "payload": {"name": "a\\u0000b"}}]', "NUL characters"),
        ('[{"kind": "campaign", "payload": {"na\\u0000me": "ab"}}]', "NUL characters"),
        ('[{"kind": "camp\\u0000aign", "payload": {"name": "ab"}}]', "NUL characters"),
        ('[{"kind": "campaign", "payload": {"budget": 1e400}}]', "must be finite"),
        ('[{"kind": "campaign", "provider": "' + "p" * 65 + '", "payload": {}}]', "1 to 64"),
        ('[{"kind": "campaign", "payload": {"name": "a\\ud800"}}]', "unpaired surrogates"),
        (
            '[{"kind": "campaign", "payload": ' + '{"a": ' * 300 + "1" + "}" * 301 + "]",
            "payload: objects and lists may nest at most 64 levels deep, got 300",
        ),
        ("[]", "tasks: no tasks given"),
        ('{"provider": "nope", "tasks": [{"kind": "campaign", "payload": {}}]}', "nope"),
    ],
)
@pytest.mark.parametrize("wait", [False, True])
def test_submit_refuses_what_the_api_refuses_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    content: str,
    problem: str,
    wait: bool,
) -> None:
    """`sluice submit` refuses NUL text, unpaired surrogates, non-finite numbers, long names,
    no tasks and unknown providers in one line; nothing is stored. Waiting (the default) it
    was a traceback: stopping the engine that never started raised "cannot join thread
    before it is started" over the refusal."""
    data = tmp_path / "tasks.json"
    data.write_text(content)

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), *([] if wait else ["--no-wait"]))

    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("nothing was submitted: 1 problem(s)"), err
    assert problem in err
    engine = create_engine("sqlite:///sluice.db")
    if inspect(engine).has_table("tasks"):
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(tasks)).scalar_one() == 0
    engine.dispose()


def test_submit_to_an_api_checks_the_nesting_cap_before_sending(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`sluice submit --api` refuses a payload nested past the cap in the API's words,
    before any request: one over ~255 levels was a traceback (its JSON could not be built)."""
    data = tmp_path / "tasks.json"
    data.write_text('[{"kind": "campaign", "payload": ' + '{"a": ' * 300 + "1" + "}" * 301 + "]")

    code, err = run_cli(
        monkeypatch, capsys, "submit", str(data), "--no-wait", "--api", "http://127.0.0.1:9"
    )

    assert code == 2, err
    assert err.splitlines() == [
        "nothing was submitted: 1 problem(s)",
        f"  {data}: tasks[0]: payload: objects and lists may nest at most 64 levels deep, got 300",
    ]


@pytest.mark.parametrize("column", [False, True])
def test_submit_a_file_nested_too_deep_to_parse_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    column: bool,
) -> None:
    """A JSON file, or a CSV cell of a json column, nested beyond what the parser can follow
    is refused in one line naming the file; it was a RecursionError's traceback."""
    deep = "[" * 5000 + "]" * 5000
    if column:
        data = tmp_path / "tasks.csv"
        data.write_text(f"ref,kind,targeting:json\nc1,campaign,{deep}\n")
    else:
        data = tmp_path / "tasks.json"
        data.write_text(f'[{{"kind": "campaign", "payload": {{"a": {deep}}}}}]')

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait")

    assert code == 2
    line = one_line(err)
    assert line.startswith(f"error: {data}"), line
    assert "nested too deeply" in line


def test_submit_json_with_nan_is_refused_at_parse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """NaN in a JSON file (Python's parser accepts it) is refused in one line."""
    data = tmp_path / "tasks.json"
    data.write_text('[{"kind": "campaign", "payload": {"budget": NaN}}]')

    code, err = run_cli(monkeypatch, capsys, "submit", str(data), "--no-wait")

    assert code == 2
    assert "NaN is not a JSON number" in one_line(err)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", "error: --older-than: must be a duration like '500ms', '2s', '5min', '1h' or '1d'"),
        ("30m", "error: --older-than: must be a duration like"),
        ("-1d", "error: --older-than: must be a duration like"),
        ("0d", "error: --older-than: must be a positive duration, got '0d'"),
    ],
)
def test_db_prune_bad_duration_is_one_line_and_touches_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    value: str,
    expected: str,
) -> None:
    """`sluice db prune --older-than X` with a bad X: one line naming the option, exit 2,
    and the database is not even created."""
    path = tmp_path / "sluice.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{path}")

    code, err = run_cli(monkeypatch, capsys, "db", "prune", "--older-than", value)

    assert code == 2
    assert one_line(err).startswith(expected)
    assert not path.exists()


@pytest.mark.parametrize("value", ["0", "-5", "1000001", str(10**22)])
def test_db_prune_batch_out_of_range_is_one_line_and_deletes_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    value: str,
) -> None:
    """`sluice db prune --batch 10000000000000000000000` was an OverflowError traceback from
    SQLite, and `--batch 0` a box of several lines: one line, bounded as
    SLUICE_RETENTION_BATCH is (1 to 1,000,000), and a final old task is still there."""
    path = tmp_path / "sluice.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{path}")
    cli.app(["db", "upgrade"], standalone_mode=False)
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        long_ago = datetime(2000, 1, 1, tzinfo=UTC)
        conn.execute(
            insert(tasks).values(
                provider="sandbox",
                status="Completed",
                phase="done",
                created_at=long_ago,
                updated_at=long_ago,
            )
        )
    capsys.readouterr()

    code, err = run_cli(monkeypatch, capsys, "db", "prune", "--older-than", "1d", "--batch", value)

    assert code == 2, err
    assert one_line(err) == f"error: --batch must be between 1 and 1000000, got {value}"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tasks)).scalar_one() == 1
    engine.dispose()


def test_db_prune_reports_what_it_deleted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'sluice.db'}")
    cli.app(["db", "upgrade"], standalone_mode=False)
    monkeypatch.setattr(sys, "argv", ["sluice", "db", "prune", "--older-than", "30d"])

    cli.app(["db", "prune", "--older-than", "30d"], standalone_mode=False)

    assert "pruned 0 task(s) and 0 event(s) in 0 batch(es)" in capsys.readouterr().err


def test_explain_an_id_past_2_53_is_refused_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API takes task ids up to 2**53; the CLI passed a larger one to SQLite, which
    raised OverflowError."""
    code, err = run_cli(monkeypatch, capsys, "explain", str(2**53 + 1))

    assert code == 2, err
    assert "Traceback" not in err
    assert "task_id" in err


@pytest.mark.parametrize(
    "args",
    [
        ("api", "--port", "99999"),
        ("up", "--port", "0"),
        ("metrics-serve", "--port", "70000"),
        ("worker", "--concurrency", "-1"),
        ("worker", "--concurrency", "0"),
    ],
)
def test_a_port_or_concurrency_out_of_range_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    """`sluice api --port 99999` listened on port 34463; `sluice worker --concurrency -1`
    was a traceback from Celery, and 0 started as many processes as the host has cores."""
    code, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2, err
    assert "Traceback" not in err
    assert args[1] in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("worker", "--concurrency", "100000"), "--concurrency (SLUICE_WORKER_CONCURRENCY)"),
        (("worker", "--concurrency", "65"), "--concurrency (SLUICE_WORKER_CONCURRENCY)"),
        (("worker", "--concurrency", "0"), "--concurrency (SLUICE_WORKER_CONCURRENCY)"),
        (("up", "--workers", "65"), "--workers (SLUICE_WORKERS)"),
        (("up", "--workers", "-1"), "--workers (SLUICE_WORKERS)"),
    ],
)
def test_a_number_of_worker_processes_outside_its_range_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    expected: str,
) -> None:
    """`sluice worker --concurrency 100000` started building a pool of 100,000 processes
    and died with a "Too many open files" traceback; `sluice up --workers` had no bound at
    all. Both are 1 (0 for --workers) to 64, refused in one line before anything starts."""
    code, err = run_cli(monkeypatch, capsys, *args)

    low = 0 if args[1] == "--workers" else 1
    assert code == 2
    assert one_line(err) == f"error: {expected} must be between {low} and 64, got {args[2]}"


def test_explain_of_an_id_the_store_has_not_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(monkeypatch, capsys, "db", "upgrade")[0] == 0
    code, err = run_cli(monkeypatch, capsys, "explain", str(2**53))

    assert code == 2
    assert one_line(err) == f"error: task {2**53} not found"


@pytest.mark.parametrize(
    ("revision", "expected"),
    [
        ("nope", "error: no migration 'nope': Can't locate revision identified by 'nope'"),
        ("-1", "error: no migration '-1': Relative revision -1 didn't produce 1 migrations"),
    ],
)
def test_db_upgrade_to_an_unknown_revision_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    revision: str,
    expected: str,
) -> None:
    """`sluice db upgrade nope` (a typo) was alembic's CommandError with a traceback."""
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'up.db'}")

    code, err = run_cli(monkeypatch, capsys, "db", "upgrade", "--", revision)

    assert code == 2
    assert one_line(err) == expected


def test_db_upgrade_says_the_revision_the_database_is_at(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`sluice db upgrade base` on a database at head changes nothing; it said the database
    was "at base". It says the revision the database is at, before and after."""
    from alembic.script import ScriptDirectory

    from sluice.store import db

    url = f"sqlite:///{tmp_path / 'up.db'}"
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()
    engine.dispose()

    code, err = run_cli(monkeypatch, capsys, "db", "upgrade", "base")

    assert code == 0, err
    assert one_line(err) == f"database at {url} is at {head} (asked for base)"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("pause", "sandbox", "--reason", "caf\udce9"), "--reason"),
        (("pin", "sandbox", "5/s", "--reason", "caf\udce9"), "--reason"),
        (("audit", "--tenant", "caf\udce9"), "--tenant"),
        (("audit", "--action", "task.\udce9"), "--action"),
        (("keys", "revoke", "caf\udce9"), "KEY_ID"),
        # A Celery node name, and hosts to listen on, were tracebacks: kombu's pidbox queue
        # name, the socket's bind.
        (("worker", "--hostname", "caf\udce9"), "--hostname"),
        (("worker", "--metrics-port", "9464", "--metrics-host", "\udcff"), "--metrics-host"),
        (("metrics-serve", "--host", "\udcff"), "--host"),
        (("api", "--host", "\udcff"), "--host"),
        (("up", "--host", "\udcff"), "--host"),
    ],
)
def test_text_that_is_not_utf8_is_one_line_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: tuple[str, ...],
    option: str,
) -> None:
    """Bytes a shell in another encoding passes (Latin-1 'café'; Python reads them as lone
    surrogates) were a UnicodeEncodeError traceback from the database driver."""
    url = f"sqlite:///{tmp_path / 'text.db'}"
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)

    code, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2
    assert one_line(err) == (
        f"error: {option}: not UTF-8 text (the terminal passed bytes in another encoding)"
    )
    engine = create_engine(url)
    if inspect(engine).has_table("audit"):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit")).scalar_one() == 0
    engine.dispose()


@pytest.mark.parametrize("command", ["api", "up"])
@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"SLUICE_API_RATE_LIMIT": "hunter2-fast"},
            "configuration error: SLUICE_API_RATE_LIMIT / [sluice] api_rate_limit: must be a "
            "rate like '20/s', '600/min' or '5/2s'",
        ),
        (
            {"SLUICE_API_RATE_LIMIT": "5/s", "SLUICE_API_RATE_BURST": "5"},
            "configuration error: api_rate_burst: must be below api_rate_limit's count (5), got 5",
        ),
    ],
)
def test_a_bad_api_rate_limit_stops_the_api_before_it_opens_the_database(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
    variables: dict[str, str],
    expected: str,
) -> None:
    """It was checked when the API was built: `sluice api` and `sluice up` had created and
    migrated the database and said that auth was off before refusing it."""
    database = tmp_path / "never.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{database}")
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)

    code, err = run_cli(monkeypatch, capsys, command, "--port", "9")

    assert code == 2
    assert one_line(err) == expected
    assert not database.exists()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("command", ["up", "api"])
def test_an_api_port_in_use_is_one_line_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    busy_port: int,
    command: str,
) -> None:
    """The API's port was found taken only after the database was migrated (and for `up`
    the engine started, claiming and sending tasks) and the addresses printed; uvicorn
    then exited with status 3."""
    database = tmp_path / "never.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{database}")

    code, err = run_cli(monkeypatch, capsys, command, "--port", str(busy_port))

    assert code == 2
    assert one_line(err).startswith(f"error: cannot listen on 127.0.0.1:{busy_port}: "), err
    assert not database.exists()


@pytest.mark.parametrize("command", ["up", "api"])
def test_auth_off_without_insecure_is_one_line_before_the_database_is_opened(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
) -> None:
    """SLUICE_AUTH=off without --insecure was refused only after the database was created
    and migrated (a `store.migrated` log line came before the error)."""
    database = tmp_path / "never.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("SLUICE_AUTH", "off")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]

    code, err = run_cli(monkeypatch, capsys, command, "--port", str(port))

    assert code == 2
    assert one_line(err) == (
        "configuration error: SLUICE_AUTH=off lets anyone who can reach the API do anything; "
        "add --insecure to start anyway"
    )
    assert not database.exists()


def test_up_with_the_sandbox_on_a_port_in_use_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    busy_port: int,
) -> None:
    """`sluice up --sandbox` (or --demo) beside a sandbox already running on its port (the
    README's `sluice sandbox --port 9100`) was an OSError traceback."""
    config = tmp_path / "sluice.toml"
    config.write_text(f"[sandbox]\nport = {busy_port}\n")
    monkeypatch.setenv("SLUICE_CONFIG", str(config))
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'up.db'}")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        api_port = free.getsockname()[1]

    code, err = run_cli(monkeypatch, capsys, "up", "--sandbox", "--port", str(api_port))

    assert code == 2
    assert one_line(err).startswith(
        f"error: cannot start the sandbox DSP on 127.0.0.1:{busy_port}: "
    ), err


def test_sluice_sandbox_on_a_port_in_use_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], busy_port: int
) -> None:
    """`sluice sandbox --port P` with P taken first said "sandbox DSP (standard profile) on
    http://127.0.0.1:P", then uvicorn logged the bind error and exited with status 3."""
    import uvicorn

    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append(kwargs))

    code, err = run_cli(monkeypatch, capsys, "sandbox", "--port", str(busy_port))

    assert code == 2
    assert one_line(err).startswith(f"error: cannot listen on 127.0.0.1:{busy_port}: "), err
    assert served == []


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_an_unknown_loglevel_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """`sluice worker --loglevel LOUD` was a ValueError traceback from logging, and `sluice
    beat --loglevel LOUD` a BadParameter traceback from Celery's command line."""
    from sluice.celery_app import app as celery

    monkeypatch.setattr(celery, "worker_main", lambda argv: None)
    monkeypatch.setattr(celery, "start", lambda argv: None)

    code, err = run_cli(monkeypatch, capsys, command, "--loglevel", "LOUD")

    assert code == 2
    assert one_line(err) == (
        "error: --loglevel must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_worker_and_beat_take_the_log_level_of_the_settings(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
) -> None:
    """Every process reads the same settings (docs/deployment.md): the config file's
    log_level too, not only SLUICE_LOG_LEVEL."""
    from sluice.celery_app import app as celery

    seen: list[list[str]] = []
    monkeypatch.setattr(celery, "worker_main", seen.append)
    monkeypatch.setattr(celery, "start", seen.append)
    monkeypatch.setattr("sluice.logs.configure", lambda level: None)
    config = tmp_path / "sluice.toml"
    config.write_text(
        '[sluice]\nlog_level = "warning"\nredis_url = "redis://127.0.0.1:6379/1"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("SLUICE_CONFIG", str(config))
    code, _ = run_cli(monkeypatch, capsys, command)

    assert code == 0
    assert seen
    assert seen[0][seen[0].index("--loglevel") + 1] == "WARNING"


def test_beat_with_bad_settings_is_one_line_and_never_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sluice beat` read no setting before Celery configured the app, where Celery logged
    and swallowed the error: beat then ran on Celery's defaults (amqp://guest@localhost,
    no pumps scheduled), for ever."""
    from sluice.celery_app import app as celery

    started: list[list[str]] = []
    monkeypatch.setattr(celery, "start", started.append)
    monkeypatch.setenv("SLUICE_PUMPS", "many")

    code, err = run_cli(monkeypatch, capsys, "beat")

    assert code == 2
    assert one_line(err).startswith("configuration error: invalid setting SLUICE_PUMPS")
    assert not started


def test_celery_configuring_the_app_with_bad_settings_stops_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`celery -A sluice.celery_app worker` with a bad setting: Celery swallowed the error
    of the app's configure signal and consumed from its default broker instead."""
    from celery import Celery

    from sluice.drivers.celery_app import _configure

    monkeypatch.setenv("SLUICE_BROKER_URL", f"amqp://sluice:{PASSWORD}!127.0.0.1:5672//")
    other = Celery("other")

    with pytest.raises(SystemExit) as exit_info:
        _configure(other)

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert one_line(err).startswith("configuration error: invalid setting SLUICE_BROKER_URL")
    assert PASSWORD not in err


def test_a_worker_without_the_shared_limiter_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without SLUICE_REDIS_URL each pool process of `sluice worker` built an in-memory
    limiter of its own: `--concurrency 4` sent four times every configured rate."""
    from sluice.celery_app import app as celery

    started: list[list[str]] = []
    monkeypatch.setattr(celery, "worker_main", started.append)
    monkeypatch.setenv("SLUICE_BROKER_URL", "redis://127.0.0.1:6379/0")

    code, err = run_cli(monkeypatch, capsys, "worker", "--concurrency", "4")

    assert code == 2
    assert one_line(err).startswith("configuration error: a worker needs SLUICE_REDIS_URL")
    assert not started


def test_a_celery_started_worker_without_the_shared_limiter_stops_before_its_pool_forks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`celery -A sluice.celery_app worker` reads the settings at worker_init, before its
    pool processes are forked."""
    from sluice.drivers.celery_app import _import_database_driver

    with pytest.raises(SystemExit) as exit_info:
        _import_database_driver()

    assert exit_info.value.code == 2
    assert one_line(capsys.readouterr().err).startswith(
        "configuration error: a worker needs SLUICE_REDIS_URL"
    )


def test_sluice_worker_checks_its_settings_once_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`sluice worker` checked the worker's settings (the database URL, every provider
    built) before starting Celery, and Celery's worker_init checked them all again: each
    provider was built twice and each of its warnings logged twice. Once now, while a
    worker that Celery starts itself (`celery -A sluice.celery_app worker`) is still checked."""
    from sluice.celery_app import app as celery
    from sluice.drivers import celery_app
    from sluice.providers import registry

    built: list[str] = []
    real_load_providers = registry.load_providers

    def counting_load_providers(settings: object, **kwargs: object) -> object:
        built.append("providers")
        return real_load_providers(settings, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "load_providers", counting_load_providers)
    monkeypatch.setattr("sluice.logs.configure", lambda level: None)
    monkeypatch.setattr("sluice.process_memory.limit_malloc_arenas", lambda: False)
    # Celery's worker_init, in the process that called worker_main, as a real worker runs it.
    monkeypatch.setattr(celery, "worker_main", lambda argv: celery_app._import_database_driver())
    monkeypatch.setattr(celery_app, "_passed", [], raising=False)
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'worker.db'}")
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://127.0.0.1:6379/1")

    code, err = run_cli(monkeypatch, capsys, "worker")

    assert code == 0, err
    assert built == ["providers"]

    # A worker Celery starts on its own is still checked at worker_init, once.
    monkeypatch.setattr(celery_app, "_passed", [], raising=False)
    built.clear()
    celery_app._import_database_driver()
    assert built == ["providers"]


@pytest.mark.parametrize("command", [("metrics-serve",), ("worker", "--metrics-")])
def test_a_metrics_port_that_cannot_be_listened_on_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    busy_port: int,
    command: tuple[str, ...],
) -> None:
    """`sluice metrics-serve --port N` with N in use was an OSError traceback; `sluice
    worker --metrics-port N` logged Celery's "Signal handler raised" traceback once its
    pool had started, and ran on without metrics."""
    from sluice.celery_app import app as celery

    started: list[list[str]] = []
    monkeypatch.setattr(celery, "worker_main", started.append)
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://127.0.0.1:6379/1")
    args = [*command[:1], f"{command[1] if len(command) > 1 else '--'}port", str(busy_port)]

    code, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2
    assert one_line(err) == (
        f"configuration error: cannot listen on 127.0.0.1:{busy_port} for metrics: "
        "Address already in use"
    )
    assert not started


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        (
            "SLUICE_DATABASE_URL",
            f"postgresql://admin:{PASSWORD}@127.0.0.1:notaport/sluice",
            "configuration error: database_url (postgresql://...) is not a database URL",
        ),
        (
            "SLUICE_CONFIG",
            '[sluice]\ndefault_provider = "acme"\n'
            '[providers.acme]\nbase_url = "http://127.0.0.1:1"\nrate_limit = "fast"\n',
            "configuration error: ",
        ),
    ],
)
def test_a_worker_whose_pool_could_not_build_its_runtime_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    setting: str,
    value: str,
    expected: str,
) -> None:
    """Each pool process reads the database URL and the providers at its first pump: a
    mistake in either started a worker that logged a traceback every pump, for ever."""
    from sluice.celery_app import app as celery

    started: list[list[str]] = []
    monkeypatch.setattr(celery, "worker_main", started.append)
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://127.0.0.1:6379/1")
    if setting == "SLUICE_CONFIG":
        config = tmp_path / "sluice.toml"
        config.write_text(value, encoding="utf-8")
        value = str(config)
    monkeypatch.setenv(setting, value)

    code, err = run_cli(monkeypatch, capsys, "worker")

    assert code == 2
    assert one_line(err).startswith(expected)
    assert "acme" in err or setting != "SLUICE_CONFIG"
    assert PASSWORD not in err
    assert not started


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--once"),
        ("explain", "1"),
        ("rates",),
        ("tasks",),
        ("audit",),
        ("keys", "list"),
        ("keys", "revoke", "k1"),
        ("pause", "sandbox", "--reason", "x"),
        ("resume", "sandbox"),
        ("db", "prune", "--older-than", "30d"),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_command_on_a_database_that_does_not_exist_creates_none(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: tuple[str, ...],
) -> None:
    """Run in the wrong folder (or with a typo in the URL), these created and migrated an
    empty database there and answered from it: an empty overview, "task 1 not found", a
    provider "paused" that no engine reads."""
    path = tmp_path / "sluice.db"
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{path}")

    code, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2
    assert one_line(err).endswith(
        f"no database at {path} (SLUICE_DATABASE_URL names a file that does not exist; "
        "sluice up, sluice api or sluice db upgrade creates it)"
    )
    assert not path.exists()


FUTURE_REVISION = "0099_from_a_newer_sluice"


@pytest.mark.parametrize(
    "args",
    [("db", "upgrade"), ("api",), ("status", "--once"), ("keys", "list"), ("worker",)],
)
def test_a_database_newer_than_this_sluice_is_one_line_naming_both_revisions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    """A database a newer release upgraded (a rollback of the code, or an old worker
    restarted after the upgrade) was "error: no migration 'head': Can't locate revision
    identified by ..." from every command, as if 'head' were a mistyped argument; `sluice
    worker` started, said ready and wrote a traceback for every pump, for ever. Each now
    names the database's revision and this Sluice's newest, in one line, before starting."""
    from alembic.script import ScriptDirectory

    from sluice.celery_app import app as celery
    from sluice.store import db

    started: list[list[str]] = []
    monkeypatch.setattr(celery, "worker_main", started.append)
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://127.0.0.1:6379/1")
    monkeypatch.setenv("SLUICE_BROKER_URL", "redis://127.0.0.1:1/0")
    assert run_cli(monkeypatch, capsys, "db", "upgrade")[0] == 0
    engine = create_engine("sqlite:///sluice.db")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE_REVISION})
    engine.dispose()
    head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()

    code, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2
    line = one_line(err)
    label, _, message = line.partition(": ")
    # `sluice status` names itself, as for its other errors.
    assert label == ("status" if args[0] == "status" else "configuration error")
    assert message.startswith("the database is at schema revision")
    assert f"'{FUTURE_REVISION}'" in line
    assert f"newest is '{head}'" in line
    assert not started


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--once"),
        ("keys", "list"),
        ("keys", "create", "--name", "ops", "--role", "admin"),
        ("audit",),
        ("explain", "1"),
        ("rates",),
        ("tasks",),
        ("pause", "sandbox", "--reason", "maintenance"),
        ("db", "prune", "--older-than", "30d"),
    ],
)
def test_an_operator_command_refuses_a_database_older_than_this_sluice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    """The commands that read or change what a running Sluice holds upgraded an older
    database to their own release: a newer `sluice status` run against production
    migrated it under the running older release, unasked. They now refuse it in one line
    asking for `sluice db upgrade`, and leave it at its revision."""
    from sluice.store import db

    assert run_cli(monkeypatch, capsys, "db", "upgrade", "0013_tenant_status")[0] == 0

    code, err = run_cli(monkeypatch, capsys, *args)

    assert code == 2
    label, _, message = one_line(err).partition(": ")
    assert label == ("status" if args[0] == "status" else "configuration error")
    assert message.startswith(
        "the database is at schema revision '0013_tenant_status', older than this Sluice's"
    )
    assert "run `sluice db upgrade` first" in message
    engine = db.make_engine("sqlite:///sluice.db")
    assert db.current_revision(engine) == "0013_tenant_status"
    engine.dispose()
