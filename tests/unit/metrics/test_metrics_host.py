"""One host's processes: a shared directory per deployment, summed counters, dead processes'
in-flight gauges forgotten, and the metrics port behind its token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice import metrics_host

RECORD = """
import sys
from sluice import metrics
for _ in range(int(sys.argv[1])):
    metrics.granted("sbx", 0.01)
    call = metrics.upstream_started("sbx", 0.0)
    metrics.upstream_ended(call, "2xx", 0.02)
metrics.refused("sbx", "rate")
"""
EXPOSE = "import sys; from sluice import metrics; sys.stdout.write(metrics.exposition().decode())"


def run(code: str, folder: Path, *args: str) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def values(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


def test_counters_of_several_processes_are_summed(tmp_path: Path) -> None:
    """Three processes that ended recorded 3, 5 and 7 grants: a scrape from a fourth shows 15
    grants, 15 requests, 3 refusals and nothing in flight."""
    for count in ("3", "5", "7"):
        run(RECORD, tmp_path, count)
    found = values(run(EXPOSE, tmp_path))
    assert found["sluice_limiter_grants_total"] == 15
    assert found["sluice_upstream_requests_total"] == 15
    assert found["sluice_limiter_grant_wait_seconds_count"] == 15
    assert found["sluice_limiter_refusals_total"] == 3
    # Their in-flight gauges went with them (livesum: only running processes count).
    assert found.get("sluice_upstream_requests_in_flight", 0) == 0


def test_a_dead_process_keeps_its_counts_but_not_its_in_flight_gauge(tmp_path: Path) -> None:
    """Files of an ended process: its live gauge file goes, its counters stay."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(ended.stdout)
    (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
    (tmp_path / f"counter_{pid}.db").write_bytes(b"")
    (tmp_path / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")

    assert metrics_host.forget_dead_processes(str(tmp_path)) == [pid]

    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"counter_{pid}.db", f"gauge_livesum_{os.getpid()}.db"])


def test_one_directory_per_deployment_and_host(tmp_path: Path) -> None:
    """Processes of one deployment agree on the directory; another deployment gets its own;
    the name gives nothing of the database URL away."""
    url = "postgresql://u:s3cretpassw0rd@db/sluice"
    one = metrics_host.default_dir(url, "sluice:rl")
    assert one == metrics_host.default_dir(url, "sluice:rl")
    assert one != metrics_host.default_dir(url, "other:rl")
    assert "s3cret" not in str(one)


def test_prepare_uses_the_given_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PROMETHEUS_MULTIPROC_DIR given: it is created and used as it is."""
    folder = tmp_path / "given"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    assert metrics_host.prepare("sqlite://", "ns") == str(folder)
    assert folder.is_dir()


def test_prepare_leaves_a_process_that_already_counts_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once prometheus_client is loaded without a directory, nothing changes (in-process)."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert "prometheus_client" in sys.modules
    assert metrics_host.prepare("sqlite://", "ns") is None
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def call(app: Any, path: str, authorization: str | None = None) -> tuple[str, bytes]:
    environ = {"PATH_INFO": path}
    if authorization:
        environ["HTTP_AUTHORIZATION"] = authorization
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers: seen.append(status)))
    return seen[0], body


def test_the_metrics_port_asks_for_its_token() -> None:
    """With a token: no header or a wrong one is 401, the token 200; without: open."""
    guarded = metrics_host.metrics_app("tok-123456789")
    assert call(guarded, "/metrics")[0].startswith("401")
    assert call(guarded, "/metrics", "Bearer tok-12345678X")[0].startswith("401")
    status, body = call(guarded, "/metrics", "Bearer tok-123456789")
    assert status.startswith("200")
    assert b"tok-1234" not in body
    assert call(metrics_host.metrics_app(None), "/metrics")[0].startswith("200")
    assert call(guarded, "/other", "Bearer tok-123456789")[0].startswith("404")
    assert call(guarded, "/metrics", "Bearer tök-123456789")[0].startswith("401")
