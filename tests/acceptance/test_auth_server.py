"""The real `sluice api` process: the prototype's curl walk-through works unchanged on
loopback, a proxied request needs a key, and the server will not start open to the network."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.cluster import SLUICE, free_port

STARTUP_S = 90
"""How long `sluice api` may take to answer: a hang guard, not a speed target (on a host
loaded 15x over its cores, starting took over 30 s)."""

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def api_url(tmp_path: Path) -> Iterator[str]:
    """`sluice api` on a free loopback port with SLUICE_AUTH left at auto."""
    port = free_port()
    log = (tmp_path / "api.log").open("w")
    process = subprocess.Popen(
        [SLUICE, "api", "--port", str(port)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "SLUICE_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"},
    )
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail((tmp_path / "api.log").read_text())
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
    assert "auth is off because the API listens on loopback" in (tmp_path / "api.log").read_text()


def curl(*args: str) -> tuple[int, str]:
    out = subprocess.run(
        ["curl", "--silent", "--write-out", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def test_the_prototypes_curl_examples_work_unchanged_on_loopback(api_url: str) -> None:
    """The README's curl commands (no key) create and read tasks; the same request through a
    proxy (X-Forwarded-For) is 401."""
    status, body = curl(
        "--location",
        f"{api_url}/api/tasks",
        "--header",
        "Content-Type: application/json",
        "--data",
        '{\n  "id": 1,\n  "status": "Not Started"\n}',
    )
    assert status == 201, body
    assert json.loads(body)["tenant"] == "default"
    assert curl(f"{api_url}/api/tasks/1")[0] == 200
    assert curl(f"{api_url}/api/healthchecker") == (200, '{"message":"The API is up."}')

    proxied, _ = curl(f"{api_url}/api/tasks/1", "--header", "X-Forwarded-For: 203.0.113.9")
    assert proxied == 401


def test_the_api_will_not_start_open_to_the_network(tmp_path: Path) -> None:
    """`sluice api --host 0.0.0.0` with no key, or SLUICE_AUTH=off, exits 2 naming the fix."""
    env = {"PATH": "/usr/bin:/bin", "SLUICE_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    public = subprocess.run(
        [SLUICE, "api", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    off = subprocess.run(
        [SLUICE, "api", "--port", str(free_port())],
        cwd=tmp_path,
        env=env | {"SLUICE_AUTH": "off"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert public.returncode == 2
    assert "no API key exists" in public.stderr
    assert "Traceback" not in public.stderr
    assert off.returncode == 2
    assert "--insecure" in off.stderr
