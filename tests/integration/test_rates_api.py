"""``sluice rates --api URL``: the same table as ``sluice rates`` on the server's database,
read over real HTTP from the API served on loopback (GET /api/rates); a refusal, a server
that is down or older than the CLI is one line on stderr, exit 2, never showing the key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from harness.api_server import serve_api
from sluice import apikeys
from sluice.controls import pin_rate
from sluice.domain import LOCAL_ACTOR
from sluice.runtime import Runtime, build_runtime
from sluice.settings import load_settings
from sluice.store.keys import KeyStore
from sluice.store.learned import LearnedDrop, LearnedRateStore
from tests.unit.cli.running import (
    assert_unreachable_api_is_one_line,
    assert_wrong_key_refused,
    one_line,
    run_cli,
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

[[providers.sandbox.limits]]
scope = "write"
rate = "10/s"

[providers.acme]
base_url = "http://127.0.0.1:9"
rate_limit = "50/s"
adaptive = true
kinds = {{ campaign = {{ submit = "POST /campaigns" }} }}
"""


def serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str
) -> Iterator[tuple[str, Runtime]]:
    """The API of the database and providers the local command reads too (same
    SLUICE_CONFIG, same SLUICE_DATABASE_URL), served on a loopback port."""
    config = tmp_path / "sluice.toml"
    config.write_text(CONFIG.format(auth=auth), encoding="utf-8")
    monkeypatch.setenv("SLUICE_CONFIG", str(config))
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path / 'sluice.db'}")
    runtime = build_runtime(load_settings())
    try:
        with serve_api(runtime) as base_url:
            yield base_url, runtime
    finally:
        runtime.close()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Runtime]]:
    yield from serving(tmp_path, monkeypatch, "auto")


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Runtime]]:
    yield from serving(tmp_path, monkeypatch, "required")


def test_the_same_table_locally_and_through_the_api(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: tuple[str, Runtime],
) -> None:
    """Configured rates, a pin and a learned rate: the same rows, read either way."""
    base_url, runtime = served
    runtime.controls.pin(
        "sandbox:write", pin_rate("5/s"), reason="429s since 09:40", actor=LOCAL_ACTOR
    )
    drop = LearnedDrop("acme", "acme", 50.0, 40.0, 20.0, time.time(), 1, "refused")
    assert LearnedRateStore(runtime.repo.engine).record_drop(drop, None, at=datetime.now(UTC))

    code, local, err = run_cli_captured(monkeypatch, capsys, "rates")
    assert (code, err) == (0, ""), err
    code, remote, err = run_cli_captured(monkeypatch, capsys, "rates", "--api", base_url)
    assert (code, err) == (0, ""), err

    assert remote == local
    rows = {line.split("│")[2].strip(): line for line in local.splitlines() if "│" in line}
    assert "configured" in rows["sandbox"]
    assert "20/s" in rows["sandbox"]
    pinned = rows["sandbox:write"]
    assert "pinned" in pinned
    assert "5/s" in pinned
    assert "10/s" in pinned
    assert "429s since 09:40" in pinned
    assert "learned" in rows["acme"]
    assert "50/s" in rows["acme"]


@pytest.mark.parametrize("via_env", [False, True])
def test_a_wrong_key_is_one_line_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secured: tuple[str, Runtime],
    via_env: bool,
) -> None:
    assert_wrong_key_refused(monkeypatch, capsys, "rates", secured[0], KEY, via_env=via_env)


def test_a_viewer_key_is_refused_in_one_line_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secured: tuple[str, Runtime],
) -> None:
    """The rates in force are an operator's view, as GET /api/providers is."""
    base_url, runtime = secured
    viewer = apikeys.create_key(
        KeyStore(runtime.repo.engine), name="dash", role="viewer", tenant="acme"
    ).token

    code, err = run_cli(monkeypatch, capsys, "rates", "--api", base_url, "--key", viewer)

    assert code == 2
    line = one_line(err)
    assert line.startswith("error: refused (403): "), line
    assert viewer not in err
    assert viewer.split("_", 2)[2] not in err  # sk_<id>_<secret>; the secret may hold "_"


def test_an_operator_key_reads_the_rates(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secured: tuple[str, Runtime],
) -> None:
    base_url, runtime = secured
    token = apikeys.create_key(KeyStore(runtime.repo.engine), name="ops", role="operator").token
    monkeypatch.setenv("SLUICE_API_KEY", token)

    code, out, err = run_cli_captured(monkeypatch, capsys, "rates", "--api", base_url)

    assert (code, err) == (0, ""), err
    assert "sandbox:write" in out
    assert token not in out


def test_a_server_that_is_down_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_unreachable_api_is_one_line(monkeypatch, capsys, "rates", KEY)


class _OlderApi(BaseHTTPRequestHandler):
    """A Sluice API from before GET /api/rates: FastAPI's 404 for a route it lacks."""

    def do_GET(self) -> None:
        body = b'{"detail":"Not Found"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_older_server_without_the_route_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OlderApi)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, err = run_cli(monkeypatch, capsys, "rates", "--api", url, "--key", KEY)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    assert code == 2
    assert one_line(err) == (
        f"error: {url} has no GET /api/rates: a Sluice API older than this command? "
        "(run `sluice rates` on its host, or upgrade it)"
    )
    assert KEY not in err
