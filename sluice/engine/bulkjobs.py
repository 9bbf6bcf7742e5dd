"""Runs stored bulk jobs (:mod:`sluice.store.bulkjobs`) in batches, in the API process.

A job is claimed under a lease renewed by each batch; after a crash (or when another API
process died holding it) the lease lapses and any runner picks the job up again at its
cursor. :meth:`BulkJobRunner.run_once` does all the work there is, for tests and for the
thread :meth:`start` runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from sluice import errors
from sluice.logs import FailureStreak
from sluice.store.bulkjobs import BATCH, STOPPED, BulkJobs

log = logging.getLogger("sluice.bulkjobs")

IDLE_S = 0.5
LEASE_S = 60.0


class BulkJobRunner:
    """Claims running bulk jobs and runs their batches until each is done."""

    def __init__(self, jobs: BulkJobs, *, batch: int = BATCH, worker: str | None = None) -> None:
        self.jobs = jobs
        self.batch = batch
        self.worker = worker or f"{socket.gethostname()}/{os.getpid()}/bulk"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # While the database is down every look fails: the first logs its traceback, the
        # next ones one line each (the API logged a traceback twice a second).
        self._failures = FailureStreak(log, "bulk_job.failed", "bulk_job.recovered")

    def run_once(self) -> int:
        """Run every claimable job to its end; returns how many batches ran."""
        batches = 0
        while not self._stop.is_set():
            job = self.jobs.claim(self.worker, LEASE_S)
            if job is None:
                return batches
            try:
                done = False
                while not done and not self._stop.is_set():
                    done = self.jobs.run_batch(job.id, self.worker, batch=self.batch)
                    batches += 1
            except errors.BulkJobNotFound:
                continue
            if done and self.jobs.get(job.id).state == STOPPED:
                # Its key was revoked or expired (audited as tasks.bulk_stop).
                log.warning("bulk_job.stopped", extra={"job": job.id, "action": job.action})
            else:
                log.info("bulk_job.done", extra={"job": job.id, "action": job.action})
        return batches

    def wake(self) -> None:
        """Look for work now (a job was just started)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sluice-bulk", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:
                self._failures.failed(exc)
            else:
                self._failures.succeeded()
            self._wake.wait(IDLE_S)
            self._wake.clear()
