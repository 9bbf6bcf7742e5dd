"""The canary: a full run with unique secrets planted, then every trace it left is searched.

Planted: the provider's token and two tenants' tokens (one the DSP refuses: 401s), three
API keys, the metrics scrape token, and a PostgreSQL password (a role with a password,
created on the shared server for this test; the server trusts local connections, so the
password only has to travel in the URL, which is where leaks happen). The run goes through
provider 401s, timeouts after the DSP committed (then lookups), validation errors, debug
logging, a sensitive payload field, the console, and four start-ups that fail on bad
configuration.

Searched, for any 10-character piece of a secret (as it is, percent-decoded or
JSON-unescaped): the stdout and stderr of every ``sluice`` process (except the one line
``sluice keys create`` prints the new key on, by design), every API and console answer
(bodies and headers), ``/metrics`` (with a key and with the scrape token), every row of
every table of the database, and the log records of an in-process run at DEBUG (formatted
and raw).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from harness.cluster import SLUICE, free_port
from sluice import logs, submissions
from sluice.domain import Submission, TaskStatus
from sluice.runtime import build_runtime
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer
from sluice.settings import load_settings
from tests.canary import Canary, find_leaks
from tests.conftest import PG_ADMIN_URL, require_service

FINAL = {s.value for s in (TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED)}
CARD = "4111000011112222"

# A long run (a full flow, four failing start-ups, an in-process run): the hang guard is
# wider than the default on a loaded host.
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(360)]


@dataclass
class Run:
    """What the run planted, and every text it left behind (where -> text)."""

    folder: Path
    env: dict[str, str]
    canaries: list[Canary] = field(default_factory=list)
    corpus: dict[str, str] = field(default_factory=dict)

    def sluice(self, *args: str, env: dict[str, str] | None = None, name: str = "") -> str:
        """Run a ``sluice`` command to the end; keep its output; return its stdout."""
        result = subprocess.run(
            [SLUICE, *args],
            env=env or self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        label = name or " ".join(args)
        self.corpus[f"{label}: stderr"] = result.stderr
        self.corpus[f"{label}: stdout"] = result.stdout
        return result.stdout

    def keep(self, label: str, response: httpx.Response) -> httpx.Response:
        """Keep an answer (status line, headers, body) for the search."""
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.corpus[f"{label} -> {response.status_code}"] = f"{headers}\n\n{response.text}"
        return response


@pytest.fixture
def canary_database() -> Iterator[tuple[str, Canary]]:
    """A PostgreSQL role with a canary password owning a fresh database; dropped after."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"canary_{uuid.uuid4().hex[:10]}"
    password = Canary.make("database password", prefix="cnrydb", suffix="@/")
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        literal = password.value.replace("'", "''")
        conn.execute(sa.text(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{literal}'"))
        conn.execute(sa.text(f'CREATE DATABASE "{name}" OWNER "{name}"'))
    url = f"postgresql://{name}:{quote(password.value, safe='')}@127.0.0.1:5432/{name}"
    try:
        yield url, password
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def dsp() -> Iterator[tuple[str, Canary, Canary, Canary]]:
    """The sandbox with auth: the provider's and acme's tokens known, globex's not; creates
    sometimes commit and then hang past Sluice's timeout."""
    house = Canary.make("provider token", prefix="cnryprov")
    acme = Canary.make("tenant acme token", prefix="cnryacme")
    globex = Canary.make("tenant globex token (refused)", prefix="cnryglbx")
    config = SandboxConfig.from_settings(
        {
            "profile": "standard",
            "auth": True,
            "tokens": {house.value: "agency-house", acme.value: "acme-account"},
            "idempotency": False,
            "accept_delay_s": 0,
            "process_delay_s": 0.05,
            "faults": {"commit_then_timeout": 0.3, "hang_s": 1.0},
            "limits": [{"name": "app", "per": "app", "limit": 50, "window_s": 1.0}],
        }
    )
    server = SandboxServer(config, port=0)
    url = server.start()
    try:
        yield url, house, acme, globex
    finally:
        server.stop()


def provider_table(base_url: str) -> str:
    return f"""
[sluice]
default_provider = "sbx"

[providers.sbx]
preset = "sandbox-standard"
base_url = "{base_url}"
rate_limit = "30/s"
timeout = "400ms"
retry_base = "50ms"
retry_max = "200ms"
max_attempts = 3
redact_fields = ["card.number"]
headers = {{ Authorization = "Bearer ${{CANARY_PROVIDER_TOKEN}}" }}

[providers.sbx.poll]
interval = "100ms"

[providers.sbx.tenants.acme]
headers = {{ Authorization = "Bearer ${{CANARY_ACME_TOKEN}}" }}

[providers.sbx.tenants.globex]
headers = {{ Authorization = "Bearer ${{CANARY_GLOBEX_TOKEN}}" }}
"""


def payload(name: str, **fields: object) -> dict[str, object]:
    return {"advertiser_id": "adv-1", "name": name, "budget": 100, **fields}


def campaign(name: str, **fields: object) -> dict[str, object]:
    return {"kind": "campaign", "payload": payload(name, **fields)}


def wait_final(client: httpx.Client, headers: dict[str, str], run: Run, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page = run.keep("GET /api/tasks (admin)", client.get("/api/tasks", headers=headers))
        items = page.json()["items"]
        if len(items) >= count and all(t["status"] in FINAL for t in items):
            return
        time.sleep(0.2)
    pytest.fail(f"tasks not final: {page.text}")


def database_dump(url: str) -> str:
    """Every row of every table (Alembic's included), as text."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        lines = []
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    lines.append(f"{table}: {tuple(row)!r}")
        return "\n".join(lines)
    finally:
        engine.dispose()


def test_no_secret_is_ever_shown(
    tmp_path: Path,
    canary_database: tuple[str, Canary],
    dsp: tuple[str, Canary, Canary, Canary],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Logs, answers, console pages, metrics and the database dump hold no piece of any
    planted secret, through 401s, timeouts, debug logging and configuration errors."""
    database_url, db_password = canary_database
    base_url, house, acme_token, globex_token = dsp
    config = tmp_path / "sluice.toml"
    config.write_text(provider_table(base_url), encoding="utf-8")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_CONFIG": str(config),
        "SLUICE_DATABASE_URL": database_url,
        "SLUICE_LOG_LEVEL": "DEBUG",
        "SLUICE_AUTH": "required",
        "SLUICE_HOST": "127.0.0.1",
        "SLUICE_PORT": str(port),
        "CANARY_PROVIDER_TOKEN": house.value,
        "CANARY_ACME_TOKEN": acme_token.value,
        "CANARY_GLOBEX_TOKEN": globex_token.value,
        "COLUMNS": "200",
        # Metrics files beside the test's, not in the host's temporary directory.
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    scrape_token = Canary.make("metrics scrape token", prefix="cnryscrp")
    env["SLUICE_METRICS_TOKEN"] = scrape_token.value
    run = Run(tmp_path, env, [db_password, house, acme_token, globex_token, scrape_token])

    # Keys: `sluice keys create` prints the key once on stdout, by design: kept out of
    # the corpus, its stderr searched.
    run.sluice("db", "upgrade")
    keys: dict[str, str] = {}
    for label, role, tenant in (
        ("acme", "submitter", "acme"),
        ("globex", "submitter", "globex"),
        ("admin", "admin", None),
    ):
        argv = ["keys", "create", "--name", f"canary-{label}", "--role", role]
        argv += ["--tenant", tenant] if tenant else []
        keys[label] = run.sluice(*argv, name=f"keys create {label}").strip().splitlines()[-1]
        del run.corpus[f"keys create {label}: stdout"]
        run.canaries.append(Canary.api_key(f"API key {label}", keys[label]))
    run.sluice("keys", "list")

    # The full flow against a running `sluice up`.
    log_file = tmp_path / "up.log"
    with log_file.open("w") as sink:
        up = subprocess.Popen(
            [SLUICE, "up"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        api_flow(run, f"http://127.0.0.1:{port}", keys)
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    run.corpus["sluice up: stdout+stderr"] = log_file.read_text(encoding="utf-8")
    assert "provider.transient" in run.corpus["sluice up: stdout+stderr"]  # DEBUG/INFO on

    run.corpus["database dump"] = database_dump(database_url)
    config_errors(run, database_url, db_password)
    in_process_run(run, monkeypatch, caplog)

    # The search itself is checked: planted text is found.
    control = {"control": f"x {house.value} y {keys['acme']} z {database_url}"}
    assert {h.secret for h in find_leaks(control, run.canaries)} >= {
        "provider token",
        "API key acme",
        "database password",
    }
    # Kept beside the test's files, to read what was searched when a hit is reported.
    (tmp_path / "corpus.json").write_text(json.dumps(run.corpus, indent=1), encoding="utf-8")
    hits = find_leaks(run.corpus, run.canaries)
    assert not hits, "\n".join(map(str, hits))
    assert len(run.corpus) > 60
    # The card number (redact_fields) is stored, to be sent, and shown nowhere else.
    card = Canary("card number (redact_fields)", CARD, CARD)
    shown = {where: text for where, text in run.corpus.items() if where != "database dump"}
    assert find_leaks({"control": f"card {CARD}"}, [card])
    assert not find_leaks(shown, [card])


def api_flow(run: Run, base: str, keys: dict[str, str]) -> None:
    acme = {"Authorization": f"Bearer {keys['acme']}"}
    globex = {"Authorization": f"Bearer {keys['globex']}"}
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    with httpx.Client(base_url=base, timeout=10) as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "sluice up did not start"
            time.sleep(0.2)
        keep = run.keep
        keep("GET /api/tasks (no key)", client.get("/api/tasks"))
        wrong = {"Authorization": "Bearer sk_0123456789ab_wrong"}
        keep("GET /api/tasks (wrong key)", client.get("/api/tasks", headers=wrong))
        ids = []
        for n in range(6):
            body = campaign(f"acme {n}", card={"number": CARD, "holder": "A"})
            created = keep(
                "POST /api/tasks acme", client.post("/api/tasks", json=body, headers=acme)
            )
            assert created.status_code == 201, created.text
            assert CARD not in created.text
            ids.append(created.json()["id"])
        group = {"kind": "ad_group", "payload": {"name": "G", "bid": 1.0}, "parent_index": 0}
        bulk = {"tasks": [campaign("acme bulk"), group]}
        keep("POST bulk acme", client.post("/api/tasks/bulk", json=bulk, headers=acme))
        invalid = {"kind": "nope", "payload": {}}
        keep("POST invalid", client.post("/api/tasks", json=invalid, headers=acme))
        negative = campaign("acme negative", budget=-5)
        keep("POST negative budget", client.post("/api/tasks", json=negative, headers=acme))
        for n in range(2):
            body = campaign(f"globex {n}")
            keep("POST /api/tasks globex", client.post("/api/tasks", json=body, headers=globex))
        wait_final(client, admin, run, 11)
        everything = client.get("/api/tasks", params={"limit": 1000}, headers=admin).json()["items"]
        assert {t["status"] for t in everything} >= {"Completed", "Error"}
        for task in everything:
            name = str((task["payload"] or {}).get("name", ""))
            who = acme if name.startswith("acme") else admin
            path = f"/api/tasks/{task['id']}"
            keep(f"GET {path}", client.get(path, headers=who))
            keep(f"GET {path}/events", client.get(f"{path}/events", headers=who))
        failed = [t["id"] for t in everything if t["status"] == "Error"]
        keep("POST retry", client.post(f"/api/tasks/{failed[0]}/retry", headers=admin))
        keep("POST cancel", client.post(f"/api/tasks/{failed[0]}/cancel", headers=admin))
        paths = ("/api/keys", "/api/audit", "/readyz", "/healthz", "/api/healthchecker")
        for path in (*paths, "/openapi.json", "/docs"):
            keep(f"GET {path}", client.get(path, headers=admin))
        # Metrics: with an admin key, with the scrape token, and refused without either.
        metrics = keep("GET /metrics", client.get("/metrics", headers=admin))
        assert metrics.status_code == 200, metrics.text
        assert "sluice_upstream_requests_total" in metrics.text
        scraper = {"Authorization": f"Bearer {run.env['SLUICE_METRICS_TOKEN']}"}
        scraped = keep("GET /metrics (scrape token)", client.get("/metrics", headers=scraper))
        assert scraped.status_code == 200, scraped.text
        keep("GET /metrics (no key)", client.get("/metrics"))
        keep("GET /api/tasks (scrape token)", client.get("/api/tasks", headers=scraper))
        # The console: sign in with a key, look, sign out.
        form = keep("GET /ui/login", client.get("/ui/login"))
        token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        wrong_form = {"api_key": keys["acme"] + "x", "csrf_token": token}
        keep("POST /ui/login (wrong)", client.post("/ui/login", data=wrong_form))
        good_form = {"api_key": keys["acme"], "csrf_token": token}
        signed = keep(
            "POST /ui/login", client.post("/ui/login", data=good_form, follow_redirects=False)
        )
        assert signed.status_code == 303
        page = keep("GET /ui", client.get("/ui"))
        assert "canary-acme" in page.text
        console_pages(run, client, everything, "acme")
        csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        out = client.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
        keep("POST /ui/logout", out)
        # An admin's console: every tenant's pages (globex's 401s), the audit trail.
        form = client.get("/ui/login")
        token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        admin_form = {"api_key": keys["admin"], "csrf_token": token}
        signed = client.post("/ui/login", data=admin_form, follow_redirects=False)
        assert signed.status_code == 303
        console_pages(run, client, everything, "admin")
        audit = keep("GET /ui/audit (admin)", client.get("/ui/audit"))
        assert "console.sign_in" in audit.text


def console_pages(run: Run, client: httpx.Client, tasks: list[dict[str, object]], who: str) -> None:
    """The console's task list (all, failed) and the page of every task the key may see."""
    for query in ("", "?status=Error"):
        listed = run.keep(f"GET /ui/tasks{query} ({who})", client.get(f"/ui/tasks{query}"))
        assert listed.status_code == 200, listed.text
    for task in tasks:
        if who == "admin" or task["tenant"] == who:
            path = f"/ui/tasks/{task['id']}"
            page = run.keep(f"GET {path} ({who})", client.get(path))
            assert page.status_code == 200, page.text


def config_errors(run: Run, database_url: str, password: Canary) -> None:
    """Start-ups that fail on bad configuration around the planted secrets."""
    bad_port_url = database_url.replace("127.0.0.1:5432", "127.0.0.1:notaport")
    run.sluice("up", env={**run.env, "SLUICE_DATABASE_URL": bad_port_url}, name="unparseable URL")
    run.sluice("api", env={**run.env, "SLUICE_PUMPS": password.value}, name="bad setting")
    closed = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{free_port()}")
    run.sluice("db", "upgrade", env={**run.env, "SLUICE_DATABASE_URL": closed}, name="no database")
    broken = run.folder / "broken.toml"
    broken.write_text(
        provider_table("ftp://user:" + password.value + "@dsp.example").replace(
            'timeout = "400ms"', 'timeout = "later"'
        ),
        encoding="utf-8",
    )
    run.sluice("api", env={**run.env, "SLUICE_CONFIG": str(broken)}, name="bad provider table")
    for label in ("unparseable URL", "bad setting", "no database", "bad provider table"):
        assert run.corpus[f"{label}: stderr"].strip(), label


def in_process_run(
    run: Run, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine in this process at DEBUG (httpx, httpcore, SQLAlchemy too): 401s, timeouts."""
    for name in ("CANARY_PROVIDER_TOKEN", "CANARY_ACME_TOKEN", "CANARY_GLOBEX_TOKEN"):
        monkeypatch.setenv(name, run.env[name])
    monkeypatch.setenv("SLUICE_CONFIG", run.env["SLUICE_CONFIG"])
    formatter = logs.FieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    noisy = [logging.getLogger(name) for name in ("httpx", "httpcore", "sqlalchemy.engine")]
    levels = [logger.level for logger in noisy]
    for logger in noisy:
        # setLevel (not the attribute): it clears the loggers' isEnabledFor cache, which
        # SQLAlchemy would otherwise keep reading at DEBUG in later tests.
        logger.setLevel(logging.DEBUG)
    try:
        run_in_process(run, caplog)
    finally:
        for logger, level in zip(noisy, levels, strict=True):
            logger.setLevel(level)
    formatted = "\n".join(formatter.format(r) for r in caplog.records)
    run.corpus["caplog (Sluice's formatter)"] = formatted
    skipped = {"msg", "args", "exc_info"}
    run.corpus["caplog (raw messages)"] = "\n".join(
        f"{r.name} {r.getMessage()} "
        + json.dumps({k: str(v) for k, v in r.__dict__.items() if k not in skipped})
        for r in caplog.records
    )


def run_in_process(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    from tests.integration.conftest import run_until_final

    with caplog.at_level(logging.DEBUG):
        runtime = build_runtime(load_settings(database_url=run.env["SLUICE_DATABASE_URL"]))
        try:
            items = [
                Submission(kind="campaign", payload=payload(f"p{n}"), tenant=tenant)
                for n, tenant in enumerate(["acme", "globex", "other", "acme"])
            ]
            submissions.create_tasks(runtime.repo, runtime.catalog, items)
            run_until_final(runtime, timeout_s=60)
        finally:
            runtime.close()
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
