"""Two `sluice up` on one SQLite file: the second refuses to start.

Each embedded engine has its own in-memory limiter, so two of them on one database send
twice the provider's rate: with a 20/s sandbox, two `sluice up` sharing a file sent 22
calls in one second and the sandbox refused 31 of 300 creates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import sluice
from harness.cluster import free_port
from sluice.clock import SystemClock
from sluice.domain import Submission
from sluice.drivers.engine_lock import UP, FileLock
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.server import SandboxServer
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository
from tests.unit.cli.running import one_line

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GUARD_S = 120.0
"""How long a start may take on a loaded host before the test calls it a hang."""


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it is still running after the guard."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=GUARD_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_answered(process: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    """Until ``url`` answers 200, while ``process`` runs (its log in the failure)."""
    deadline = time.monotonic() + GUARD_S
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def embedded_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a `sluice` command of this checkout, from any cwd, on
    ``database_url`` with no shared limiter and no config file but the cwd's."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(sluice.__file__).parents[1]),
        "SLUICE_DATABASE_URL": database_url,
        "COLUMNS": "200",
        **extra,
    }
    env.pop("SLUICE_REDIS_URL", None)
    env.pop("SLUICE_CONFIG", None)
    return env


def sluice_up(
    env: dict[str, str], port: int, log: Path, *options: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """`sluice up --port PORT OPTIONS` in the background, its output in ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sluice", "up", *options, "--port", str(port)],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def second_up_refusal(env: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    """Start `sluice up` on ``env``'s database, then a second one on another port: the
    first one's pid and the second one's one line of refusal (the first still running)."""
    port = free_port()
    first = sluice_up(env, port, tmp_path / "first.log")
    try:
        wait_until_answered(
            first,
            f"http://127.0.0.1:{port}/readyz",
            tmp_path / "first.log",
            "the first sluice up never became ready",
        )
        try:
            second = subprocess.run(
                [sys.executable, "-m", "sluice", "up", "--port", str(free_port())],
                env=env,
                capture_output=True,
                text=True,
                timeout=GUARD_S,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"the second sluice up was still running after {GUARD_S} s")
        assert second.returncode == 2, second.stderr
        assert first.poll() is None  # the first one goes on
        return first.pid, one_line(second.stderr)
    finally:
        stop(first)


def test_a_second_sluice_up_on_the_same_database_refuses_to_start(tmp_path: Path) -> None:
    pid, line = second_up_refusal(embedded_env(f"sqlite:///{tmp_path / 'sluice.db'}"), tmp_path)
    assert line.startswith("error: another sluice up runs the engine on this database"), line
    assert f"(pid {pid}, lock " in line


def test_sluice_up_starts_again_on_a_database_whose_engine_was_killed(tmp_path: Path) -> None:
    """The lock goes with its process, even after SIGKILL: a restart is not refused."""
    env = embedded_env(f"sqlite:///{tmp_path / 'sluice.db'}")
    for attempt in range(2):
        port = free_port()
        log = tmp_path / f"up{attempt}.log"
        up = sluice_up(env, port, log)
        try:
            wait_until_answered(
                up, f"http://127.0.0.1:{port}/readyz", log, "sluice up never became ready"
            )
        finally:
            up.kill()
            up.wait()


def test_sluice_up_recovers_at_once_what_a_killed_engine_left_claimed(tmp_path: Path) -> None:
    """A `sluice up` killed mid-submission left its tasks claimed, and the restarted one
    waited out their lease (`SLUICE_CLAIM_LEASE_S`, 120 s) before it looked them up: the
    soak saw six tasks, and their children, stand still for two minutes after every kill.
    The restart holds the engine lock, so no other engine can hold those claims: it
    recovers them as it starts and says how many (here the lease is a day)."""
    database = tmp_path / "sluice.db"
    engine = db.make_engine(f"sqlite:///{database}")
    db.ensure_schema(engine)
    (task_id,) = TaskRepository(engine).create_many(
        [
            Submission(
                provider="sandbox",
                kind="campaign",
                payload={"advertiser_id": "adv-1", "name": "A", "budget": 1000},
            )
        ]
    )
    assert WorkQueue(engine).claim_due(SystemClock().now(), 10, "vm:1/killed", 86400.0)
    engine.dispose()
    server = SandboxServer(SandboxConfig.from_settings({"profile": "demo"}), port=0)
    sandbox_port = server.start().rsplit(":", 1)[1]
    (tmp_path / "sluice.toml").write_text(f"[sandbox]\nport = {sandbox_port}\n", encoding="utf-8")
    port, log = free_port(), tmp_path / "up.log"
    up = sluice_up(embedded_env(f"sqlite:///{database}"), port, log, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/api/tasks/{task_id}"
        wait_until_answered(up, url, log, "sluice up never became ready")
        deadline = time.monotonic() + GUARD_S
        while httpx.get(url, timeout=30).json()["status"] != "Completed":
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        stop(up)
        server.stop()
    said = log.read_text()
    assert "tasks.recovered count=1" in said, said
    assert "uncertain=1" in said, said


@pytest.mark.parametrize(
    ("other_port", "refusal"),
    [(False, "in use"), (True, "another sluice up runs the engine on this database")],
    ids=["same-port", "another-port"],
)
def test_a_second_demo_leaves_the_running_demos_database_alone(
    tmp_path: Path, other_port: bool, refusal: str
) -> None:
    """`sluice up --demo` deletes ./sluice-demo.db to start afresh: a second one started
    beside a running demo deleted the running demo's file (and its WAL) before it found
    the port taken (or, on another port, went on to run a second engine on a new file), so
    the running demo lost its tasks from the next connection on."""
    sandbox_port, port = free_port(), free_port()
    second_port = free_port() if other_port else port
    (tmp_path / "sluice.toml").write_text(f"[sandbox]\nport = {sandbox_port}\n", encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(sluice.__file__).parents[1]),
        "COLUMNS": "200",
    }
    env.pop("SLUICE_DATABASE_URL", None)
    env.pop("SLUICE_CONFIG", None)
    first = sluice_up(env, port, tmp_path / "first.log", "--demo", cwd=tmp_path)
    try:
        wait_until_answered(
            first,
            f"http://127.0.0.1:{port}/api/tasks/1001",
            tmp_path / "first.log",
            "the demo's tasks never appeared",
        )
        inode = (tmp_path / "sluice-demo.db").stat().st_ino

        second = subprocess.run(
            [sys.executable, "-m", "sluice", "up", "--demo", "--port", str(second_port)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=GUARD_S,
        )

        assert second.returncode == 2
        assert refusal in one_line(second.stderr)
        assert (tmp_path / "sluice-demo.db").stat().st_ino == inode
        assert httpx.get(f"http://127.0.0.1:{port}/api/tasks/1001", timeout=30).status_code == 200
    finally:
        stop(first)


def test_sluice_submit_beside_a_running_sluice_up_lets_its_engine_send(tmp_path: Path) -> None:
    """`sluice submit FILE` (no --api) ran an engine of its own beside `sluice up` on the
    same database: two in-memory limiters, each at the providers' full rate. It now follows
    its tasks while the running engine sends them."""
    sandbox_port, port = free_port(), free_port()
    (tmp_path / "sluice.toml").write_text(f"[sandbox]\nport = {sandbox_port}\n", encoding="utf-8")
    (tmp_path / "tasks.csv").write_text(
        "ref,parent_ref,kind,advertiser_id,name,budget:int,bid:float\n"
        "c1,,campaign,adv-1,A,1000,\ng1,c1,ad_group,,B,,1.5\nc2,,campaign,adv-1,C,1000,\n",
        encoding="utf-8",
    )
    env = embedded_env(f"sqlite:///{tmp_path / 'sluice.db'}")
    up = sluice_up(env, port, tmp_path / "up.log", "--sandbox", cwd=tmp_path)
    try:
        wait_until_answered(
            up, f"http://127.0.0.1:{port}/readyz", tmp_path / "up.log", "sluice up never ready"
        )
        try:
            submitted = subprocess.run(
                [sys.executable, "-m", "sluice", "submit", "tasks.csv"],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=GUARD_S,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"sluice submit was still running after {GUARD_S} s")
        assert submitted.returncode == 0, submitted.stderr
        said = " ".join(submitted.stdout.split())
        assert f"sluice up (pid {up.pid}) runs the engine on this database" in said, said
        assert "Completed" in said
        listed = httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=30).json()["items"]
        assert sorted(t["status"] for t in listed) == ["Completed"] * 3
        assert up.poll() is None
    finally:
        stop(up)


def test_a_second_sluice_up_on_the_same_postgresql_database_refuses_to_start(
    tmp_path: Path, postgres_url: str
) -> None:
    """Without Redis, two `sluice up` on one PostgreSQL database both ran their engines."""
    env = embedded_env(postgres_url)
    pid, line = second_up_refusal(env, tmp_path)
    assert line.startswith(f"error: another sluice up (pid {pid} on "), line
    assert "runs the engine on this database (PostgreSQL backend " in line
    port = free_port()
    again = sluice_up(env, port, tmp_path / "again.log")  # free once the first stopped
    try:
        wait_until_answered(
            again, f"http://127.0.0.1:{port}/readyz", tmp_path / "again.log", "never ready"
        )
    finally:
        stop(again)


def test_sluice_submit_sends_its_tasks_itself_once_the_other_engine_stops(
    tmp_path: Path,
) -> None:
    """A submit that found another engine holding the database follows its tasks, and takes
    the lock and sends them itself once that engine is gone (here the test holds the lock,
    as a `sluice up` would, and lets it go once the submit says it is following)."""
    database = tmp_path / "sluice.db"
    server = SandboxServer(SandboxConfig.from_settings({"profile": "demo"}), port=0)
    base_url = server.start()
    port = base_url.rsplit(":", 1)[1]
    (tmp_path / "sluice.toml").write_text(f"[sandbox]\nport = {port}\n", encoding="utf-8")
    (tmp_path / "tasks.csv").write_text(
        "ref,parent_ref,kind,advertiser_id,name,budget:int\nc1,,campaign,adv-1,A,1000\n",
        encoding="utf-8",
    )
    env = embedded_env(f"sqlite:///{database}", PYTHONUNBUFFERED="1")
    other = FileLock(str(database), UP)
    assert other.acquire()
    try:
        submit = subprocess.Popen(
            [sys.executable, "-m", "sluice", "submit", "tasks.csv"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert submit.stdout is not None
        said: list[str] = []
        for line in submit.stdout:
            said.append(line)
            if "runs the engine on this database" in line:
                break
        assert said, "the submit said nothing"
        assert "sluice up (pid " in said[-1], "".join(said)
        other.release()
        rest, _ = submit.communicate(timeout=GUARD_S)
        assert submit.returncode == 0, "".join(said) + rest
        summary = " ".join(rest.split())
        assert "Completed │ 1" in summary, summary
        assert "requests to sandbox │ " in summary, summary  # sent from this submit
    finally:
        other.release()
        server.stop()
