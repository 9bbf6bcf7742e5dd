"""Background loops that keep failing while the database is down log the outage, not a
traceback a second: the first failure of a streak with its traceback, the next ones one
line each (the count and the error), and one line when it works again. (With PostgreSQL
stopped for 20 s under an API and three workers, each worker process logged
``usage.flush_failed`` with its traceback every second, and the API ``bulk_job.failed``
twice a second: 4,000-7,000 lines per log.) The database here is real: a SQLite file
whose tables do not exist until it is migrated."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from sluice.engine.bulkjobs import BulkJobRunner
from sluice.engine.usage import UsageRecorder
from sluice.store import db
from sluice.store.bulkjobs import BulkJobs
from sluice.store.repository import TaskRepository
from sluice.store.usage import UsageStore

GUARD_S = 60.0


def named(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == event]


def test_usage_flushes_that_keep_failing_log_one_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")
    recorder = UsageRecorder(UsageStore(engine))
    with caplog.at_level(logging.INFO, logger="sluice.usage"):
        for _ in range(3):
            recorder.count("sandbox:write", "sent")
            recorder.flush()
        db.upgrade(engine)
        recorder.count("sandbox:write", "sent")
        recorder.flush()
        recorder.flush()
    engine.dispose()

    failed = named(caplog, "usage.flush_failed")
    assert [r.exc_info is not None for r in failed] == [True, False, False]
    assert [r.__dict__.get("failures") for r in failed[1:]] == [2, 3]
    assert all("\n" not in r.__dict__["error"] for r in failed[1:])
    assert [r.__dict__["failures"] for r in named(caplog, "usage.flush_recovered")] == [3]


def test_a_bulk_runner_that_keeps_failing_logs_one_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")
    runner = BulkJobRunner(BulkJobs(TaskRepository(engine)), worker="bulk")
    with caplog.at_level(logging.INFO, logger="sluice.bulkjobs"):
        runner.start()
        try:
            deadline = time.monotonic() + GUARD_S
            while len(named(caplog, "bulk_job.failed")) < 3:
                assert time.monotonic() < deadline, "the runner did not keep trying"
                time.sleep(0.05)
            db.upgrade(engine)
            while not named(caplog, "bulk_job.recovered"):
                assert time.monotonic() < deadline + GUARD_S, "the runner did not recover"
                time.sleep(0.05)
        finally:
            runner.stop()
            engine.dispose()

    failed = named(caplog, "bulk_job.failed")
    assert failed[0].exc_info is not None
    assert [r.exc_info for r in failed[1:]] == [None] * (len(failed) - 1)
    assert [r.__dict__.get("failures") for r in failed[1:]] == list(range(2, len(failed) + 1))
    assert [r.__dict__["failures"] for r in named(caplog, "bulk_job.recovered")] == [len(failed)]
