"""``sluice up --workers N`` as a process: its workers do the work and stop with it."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from harness.cluster import Broker, children, free_port, open_broker
from sluice.domain import TaskStatus
from tests.acceptance.conftest import Cluster, campaigns

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture
def broker() -> Iterator[Broker]:
    """One Redis broker: how `sluice up` stops its workers does not depend on the broker."""
    opened = open_broker("redis", uuid.uuid4().hex[:10])
    try:
        yield opened
    finally:
        opened.cleanup()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sigterm_stops_up_and_its_worker_processes(cluster: Cluster) -> None:
    """SIGTERM ends `sluice up --workers 2` with exit code 0 and leaves no worker running."""
    cluster.start(sandbox={})
    cluster.create(campaigns(30))
    port = free_port()
    up = cluster.spawn("up", ["up", "--workers", "2", "--port", str(port)])

    cluster.wait_until_final(timeout_s=60)
    with suppress(httpx.TransportError):
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    workers = children(up.pid)
    assert len(workers) == 2, f"worker processes of up: {workers}\n{cluster.logs()}"

    up.popen.send_signal(signal.SIGTERM)
    try:
        code = up.popen.wait(timeout=45)
        left = [pid for pid in workers if _alive(pid)]
    except subprocess.TimeoutExpired:
        pytest.fail(f"sluice up did not stop on SIGTERM\n{cluster.logs()}")
    finally:
        for pid in workers:  # each worker leads its own session: never leave one behind
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    assert code == 0, cluster.logs()
    assert left == []
    assert cluster.counts() == {TaskStatus.COMPLETED.value: 30}
