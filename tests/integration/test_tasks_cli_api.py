"""``sluice tasks --api URL``: the same rows as ``sluice tasks`` on the server's database,
read over real HTTP from the API served on loopback (GET /api/tasks); a refused key, a
server that is down, is one line on stderr, exit 2, and the key is never shown."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.api_server import serve_api
from sluice import apikeys
from sluice.domain import Submission
from sluice.runtime import Runtime, build_runtime
from sluice.settings import load_settings
from sluice.store.keys import KeyStore
from tests.unit.cli.running import (
    assert_unreachable_api_is_one_line,
    assert_wrong_key_refused,
    run_cli_captured,
)

KEY = "sk_0123456789ab_Wq3VtYdR8pLmN2xK5sHgJf"

CONFIG = """
[sluice]
default_provider = "sandbox"
auth = "{auth}"

[providers.sandbox]
preset = "sandbox-demo"
base_url = "http://127.0.0.1:9"
rate_limit = "20/s"

[providers.acme]
base_url = "http://127.0.0.1:9"
rate_limit = "50/s"
kinds = {{ campaign = {{ submit = "POST /campaigns" }} }}
"""


def serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str
) -> Iterator[tuple[str, Runtime, dict[str, int]]]:
    """The API of the database the local command reads too, served on a loopback port,
    with five tasks: two tenants, two providers, one cancelled."""
    config = tmp_path / "sluice.toml"
    config.write_text(CONFIG.format(auth=auth), encoding="utf-8")
    monkeypatch.setenv("SLUICE_CONFIG", str(config))
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'sluice.db'}")
    runtime = build_runtime(load_settings())
    repo = runtime.repo
    ids = {
        name: repo.create(Submission(provider, "campaign", {"name": name}, tenant=tenant))[0].id
        for name, provider, tenant in [
            ("spring", "sandbox", "default"),
            ("summer", "sandbox", "default"),
            ("acme1", "acme", "acme"),
            ("acme2", "acme", "acme"),
            ("autumn", "sandbox", "default"),
        ]
    }
    repo.cancel(ids["summer"])
    try:
        with serve_api(runtime) as base_url:
            yield base_url, runtime, ids
    finally:
        runtime.close()


@pytest.fixture
def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Runtime, dict[str, int]]]:
    yield from serving(tmp_path, monkeypatch, "auto")


@pytest.fixture
def secured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Runtime, dict[str, int]]]:
    yield from serving(tmp_path, monkeypatch, "required")


def ids_of(table: str) -> list[int]:
    cells = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    return [int(cell) for cell in cells if cell]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["spring", "summer", "acme1", "acme2", "autumn"]),
        (("--provider", "acme"), ["acme1", "acme2"]),
        (("--status", "Not Started", "--provider", "sandbox"), ["spring", "autumn"]),
        (("--status", "Cancelled"), ["summer"]),
        (("--limit", "2"), ["spring", "summer"]),
        (("--since", "2000-01-01", "--until", "2000-01-02"), []),
    ],
)
def test_the_same_rows_locally_and_through_the_api(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: tuple[str, Runtime, dict[str, int]],
    args: tuple[str, ...],
    expected: list[str],
) -> None:
    base_url, _, ids = served

    code, local, err = run_cli_captured(monkeypatch, capsys, "tasks", *args)
    assert (code, err) == (0, ""), err
    code, remote, err = run_cli_captured(monkeypatch, capsys, "tasks", *args, "--api", base_url)
    assert (code, err) == (0, ""), err

    assert remote == local
    assert ids_of(local) == [ids[name] for name in expected]
    full = args == ("--limit", "2")  # the only page here with more after it
    assert local.splitlines()[-1].startswith("more tasks: add --cursor ") is full


def test_the_json_lines_are_the_same_both_ways(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: tuple[str, Runtime, dict[str, int]],
) -> None:
    base_url, _, ids = served

    code, local, err = run_cli_captured(monkeypatch, capsys, "tasks", "--json")
    assert (code, err) == (0, ""), err
    code, remote, err = run_cli_captured(monkeypatch, capsys, "tasks", "--json", "--api", base_url)
    assert (code, err) == (0, ""), err

    parsed = [json.loads(line) for line in local.splitlines()]
    assert parsed == [json.loads(line) for line in remote.splitlines()]
    assert [task["id"] for task in parsed] == sorted(ids.values())
    assert {task["tenant"] for task in parsed} == {"default", "acme"}


@pytest.mark.parametrize("via_env", [False, True])
def test_a_wrong_key_is_one_line_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secured: tuple[str, Runtime, dict[str, int]],
    via_env: bool,
) -> None:
    assert_wrong_key_refused(monkeypatch, capsys, "tasks", secured[0], KEY, via_env=via_env)


def test_a_tenants_key_lists_its_own_tasks_and_is_never_printed(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secured: tuple[str, Runtime, dict[str, int]],
) -> None:
    """GET /api/tasks is any role's: a viewer's key of tenant acme sees acme's tasks, an
    operator's every tenant's; neither key shows in what is printed."""
    base_url, runtime, ids = secured
    store = KeyStore(runtime.repo.engine)
    viewer = apikeys.create_key(store, name="dash", role="viewer", tenant="acme").token
    operator = apikeys.create_key(store, name="ops", role="operator").token

    code, out, err = run_cli_captured(
        monkeypatch, capsys, "tasks", "--api", base_url, "--key", viewer
    )
    assert (code, err) == (0, ""), err
    assert ids_of(out) == [ids["acme1"], ids["acme2"]]

    monkeypatch.setenv("SLUICE_API_KEY", operator)
    code, everything, err = run_cli_captured(
        monkeypatch, capsys, "tasks", "--api", base_url, "--json"
    )
    assert (code, err) == (0, ""), err
    assert [json.loads(line)["id"] for line in everything.splitlines()] == sorted(ids.values())

    for token in (viewer, operator):
        assert token.split("_", 2)[2] not in out + everything  # sk_<id>_<secret>


def test_a_server_that_is_down_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_unreachable_api_is_one_line(monkeypatch, capsys, "tasks", KEY)
