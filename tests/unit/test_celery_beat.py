"""Beat keeps Sluice's schedule in memory: no file to share, collide over or lack rights to."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.apps.beat import Beat
from celery.beat import Scheduler

from sluice.drivers.celery_app import celery_config
from sluice.settings import load_settings


def beat_scheduler(app: Celery) -> Scheduler:
    """The scheduler `sluice beat` (Celery's Beat) would run for ``app``."""
    beat = Beat(app=app, quiet=True)
    service: Any = beat.Service(
        app=app,
        max_interval=beat.max_interval,
        scheduler_cls=beat.scheduler_cls,
        schedule_filename=beat.schedule,
    )
    scheduler: Scheduler = service.get_scheduler()
    return scheduler


@pytest.mark.parametrize("pumps", [2, 5])
def test_beat_writes_no_schedule_file_and_schedules_every_pump(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pumps: int
) -> None:
    """Beat kept its schedule in one shelve file in the temp directory, the same path for
    every deployment on a host: two beats wrote one file, and a second user could not open
    it. It writes nothing now, and still sends each of the SLUICE_PUMPS pumps."""
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    monkeypatch.setenv("SLUICE_PUMPS", str(pumps))
    app = Celery("beat-test", set_as_current=False)
    app.conf.update(celery_config(load_settings()))

    scheduler = beat_scheduler(app)
    entries = sorted(scheduler.schedule)
    scheduler.close()

    assert list(shared_tmp.iterdir()) == []
    assert list(Path.cwd().iterdir()) == []
    assert entries == [f"sluice-pump-{n}" for n in range(pumps)]


def test_workers_and_beat_reconnect_to_the_broker_for_as_long_as_it_is_away(
    tmp_path: Path,
) -> None:
    """Celery gives up reconnecting after ``broker_connection_max_retries`` tries (100 by
    default, the waits growing to 30 s: about 47 min), and the worker then ends with
    "Unrecoverable error" and exit code 0 (seen with the limit set to 2: the worker
    stopped after 6 s against a closed port). Sluice's app sets no limit: a broker that
    is away longer is still waited for, by workers and by beat's connection."""
    app = Celery("reconnect-test", set_as_current=False)
    app.conf.update(celery_config(load_settings(database_url=f"sqlite:///{tmp_path / 'r.db'}")))

    assert app.conf.broker_connection_max_retries is None
