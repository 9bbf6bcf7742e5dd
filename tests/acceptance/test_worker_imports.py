"""A real ``sluice worker --concurrency 2`` at run time loads no web stack and no sandbox.

tests/unit/test_layout.py checks the import graph (``lint-imports``) and one pump run in a
plain process; this runs the worker as deployed (Celery's main process and two prefork pool
processes) with ``PYTHONPROFILEIMPORTTIME=1``, so that every module any of its processes
imports, before or after the fork, is written to the worker's log.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from harness.cluster import Broker, children, open_broker
from tests.acceptance.conftest import Cluster, campaigns

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]

PUMP_S = 0.5
FORBIDDEN_PACKAGES = ("fastapi", "starlette", "uvicorn")
FORBIDDEN_SLUICE = ("sluice.api", "sluice.sandbox")
IMPORT_LINE = re.compile(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s+(?P<module>\S.*)$")


@pytest.fixture
def broker() -> Iterator[Broker]:
    """One Redis broker: what a worker imports does not depend on the broker."""
    opened = open_broker("redis", uuid.uuid4().hex[:10])
    try:
        yield opened
    finally:
        opened.cleanup()


def pumped(worker: Any, pid: int) -> bool:
    """A pump built its runtime in process ``pid``: it logged ``worker.ready pid=<pid>``
    (the main process never pumps; pool processes build theirs at their first pump)."""
    return f"worker.ready pid={pid}\n" in worker.output()


def driver_mapped(pid: int) -> bool:
    try:
        return "psycopg" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_a_worker_and_its_pool_processes_import_no_api_and_no_sandbox(cluster: Cluster) -> None:
    """After both pool processes ran pumps that sent and polled tasks, no process of the
    worker has imported FastAPI, Starlette, uvicorn, sluice.api or sluice.sandbox."""
    cluster.start(sandbox={})
    cluster.settings.update(PYTHONPROFILEIMPORTTIME="1", SLUICE_PUMP_S=str(PUMP_S))
    worker = cluster.worker("lean", concurrency=2, wait=True)
    pool = children(worker.pid)
    assert len(pool) == 2, f"expected 2 pool processes, found {pool}"
    assert not any(pumped(worker, pid) for pid in [worker.pid, *pool])
    # The database driver is imported before the fork, so the pool processes share its pages.
    assert driver_mapped(worker.pid)
    cluster.create(campaigns(6))
    sender = Celery("test-worker-imports", broker=cluster.broker_url)
    try:

        def every_child_pumped() -> bool:
            sender.send_task("sluice.pump", args=(PUMP_S,), queue="sluice")
            time.sleep(PUMP_S)
            return all(pumped(worker, pid) for pid in pool)

        cluster.wait_until(every_child_pumped, 90, "a pump in each pool process")
        cluster.wait_until_final(
            90, during=lambda: sender.send_task("sluice.pump", args=(PUMP_S,), queue="sluice")
        )
    finally:
        sender.close()
    assert cluster.counts().get("Completed") == 6
    assert children(worker.pid) == pool, "a pool process was replaced: its imports were lost"

    imported = {
        match["module"].strip()
        for line in worker.output().splitlines()
        if (match := IMPORT_LINE.search(line))
    }
    # The log holds the pool processes' own imports too (the pump's modules are first
    # imported by a pool process's first pump; the database driver by the main process).
    assert {"sluice.drivers.pump", "psycopg"} <= imported
    forbidden = sorted(
        name
        for name in imported
        if name.split(".")[0] in FORBIDDEN_PACKAGES
        or any(name == p or name.startswith(p + ".") for p in FORBIDDEN_SLUICE)
    )
    assert forbidden == []
