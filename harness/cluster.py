"""A local cluster of real Sluice processes: one harness for acceptance tests and benchmarks.

A :class:`Cluster` is a folder (TOML file, logs, the metrics directory), a database, a
broker and a limiter namespace of its own, and ``sluice`` child processes (``sandbox``,
``worker``, ``beat``) started with :class:`subprocess.Popen` in their own process groups,
each writing to ``<folder>/<name>.log``.

Isolation on the shared servers, so that two clusters never see each other's work:

* **PostgreSQL**: a fresh database per cluster (:func:`postgres_database`), dropped after.
* **Redis broker**: a database number (1-15) claimed with ``SET ... NX`` on a marker key
  (:func:`redis_database`), emptied before use and flushed after.
* **RabbitMQ broker**: a fresh virtual host (``rabbitmqctl add_vhost`` +
  ``set_permissions``), deleted after; without ``rabbitmqctl`` the default vhost is used and
  the ``sluice`` queue is purged before and after.
* **Limiter**: keys under the cluster's own namespace in Redis db 0, deleted after.
* **Temporary files** (the host's metrics directory, ``sluice-metrics-*``) go to
  ``tempfile.gettempdir()``: every process gets ``TMPDIR`` set to the cluster's folder.
  (Celery beat keeps its schedule in memory, so it writes no file.)

Nothing here imports pytest: failures raise :class:`ClusterError` or :class:`TimeoutError`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import redis

if TYPE_CHECKING:
    from sluice.runtime import Runtime

PG_ADMIN_URL = os.environ.get(
    "SLUICE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("SLUICE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
# The acceptance suite's marker since before this harness: every checkout (branches
# included) claims Redis databases with the same key, so two never take the same number.
REDIS_DB_MARKER = "sluice:acceptance:claim"
STARTUP_TIMEOUT_S = 60.0
SLUICE = str(Path(sys.executable).with_name("sluice"))


class ClusterError(RuntimeError):
    """A process of the cluster did not start or died."""


# --- small helpers ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_key(key: str) -> str:
    """A key as TOML: bare when it can be, else quoted (``"audience.submit"`` is one key)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value: Any) -> str:
    """A value as inline TOML (tables and arrays inline, scalars as JSON)."""
    if isinstance(value, dict):
        pairs = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> None:
    """Write ``{"table.name": {key: value}}`` as TOML (nested values inline)."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{toml_key(key)} = {toml_value(value)}" for key, value in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def with_path(url: str, path: str) -> str:
    """``url`` with its path replaced (a Redis database number, an AMQP vhost)."""
    return urlsplit(url)._replace(path="/" + path).geturl()


SKEWED_CLOCK = Path(__file__).with_name("skewed_clock")


def skewed_clock_env(offset_s: float) -> dict[str, str]:
    """Environment for a child process whose wall clock reads ``offset_s`` seconds off
    (``harness/skewed_clock/sitecustomize.py``): another host's clock, on this one."""
    path = os.pathsep.join(p for p in (str(SKEWED_CLOCK), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "SLUICE_TEST_CLOCK_SKEW_S": str(offset_s)}


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms; raise TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.05)


# --- servers ------------------------------------------------------------------------------


@contextmanager
def postgres_database(prefix: str = "sluice_cluster") -> Iterator[str]:
    """A fresh, empty PostgreSQL database; dropped on exit."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redis_base() -> str:
    return with_path(REDIS_URL, "").rstrip("/")


def claim_redis_db(owner: str, expire_s: int = 900, numbers: Sequence[int] = ()) -> int:
    """Claim an unused Redis database number (marker key with an expiry), the first free
    one of ``numbers`` (default 15 down to 1); empty it."""
    for number in numbers or range(15, 0, -1):
        client = redis.Redis.from_url(f"{redis_base()}/{number}")
        try:
            if client.set(REDIS_DB_MARKER, owner, nx=True, ex=expire_s):
                # Only our marker may remain: whatever else is there is stale.
                for key in client.scan_iter(count=1000):
                    if key != REDIS_DB_MARKER.encode():
                        client.delete(key)
                return number
        finally:
            client.close()
    raise ClusterError(f"no free Redis database in {list(numbers) or '1..15'} (stale markers?)")


def release_redis_db(number: int) -> None:
    client = redis.Redis.from_url(f"{redis_base()}/{number}")
    try:
        client.flushdb()
    finally:
        client.close()


@contextmanager
def redis_database(numbers: Sequence[int] = ()) -> Iterator[str]:
    """The URL of a Redis database claimed for the caller (one of ``numbers`` if given),
    flushed on exit."""
    number = claim_redis_db(uuid.uuid4().hex, numbers=numbers)
    try:
        yield f"{redis_base()}/{number}"
    finally:
        release_redis_db(number)


def drop_namespace(url: str, namespace: str) -> None:
    """Delete the limiter keys under ``namespace`` (on every node of a ``redis+cluster://``
    URL: ``redis.Redis.from_url`` refused that scheme with a ValueError, so a cluster's
    :meth:`Cluster.stop` failed after stopping its processes)."""
    from sluice.ratelimit.redis import connect

    with suppress(redis.RedisError, redis.exceptions.RedisClusterException):
        client = connect(url, socket_connect_timeout=2)
        try:
            for key in client.scan_iter(match=f"{namespace}*", count=1000):
                client.delete(key)
        finally:
            client.close()


def _rabbitmqctl(*args: str) -> bool:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return False
    result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    return result.returncode == 0


def _purge_sluice_queue(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn, suppress(Exception):
        conn.default_channel.queue_purge("sluice")


@dataclass
class Broker:
    """A cluster's broker: its URL and how to give it back."""

    kind: str
    url: str
    cleanup: Callable[[], None]

    def queue_length(self) -> int:
        """Messages waiting in the ``sluice`` queue."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            try:
                return int(client.llen("sluice"))
            finally:
                client.close()
        from kombu import Connection

        with Connection(self.url, connect_timeout=5) as conn:
            try:
                _, count, _ = conn.default_channel.queue_declare("sluice", passive=True)
            except Exception:
                return 0
            return int(count)


def open_broker(kind: str, owner: str) -> Broker:
    """A broker of ``kind`` (``redis`` or ``rabbitmq``) isolated for ``owner``."""
    if kind == "redis":
        number = claim_redis_db(owner)
        return Broker(kind, f"{redis_base()}/{number}", lambda: release_redis_db(number))
    vhost = f"sluice-{owner}"
    user = RABBITMQ_URL.split("://", 1)[1].split(":", 1)[0]
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl(
        "set_permissions", "-p", vhost, user, ".*", ".*", ".*"
    ):
        return Broker(
            kind, with_path(RABBITMQ_URL, vhost), lambda: _rabbitmqctl("delete_vhost", vhost)
        )
    _purge_sluice_queue(RABBITMQ_URL)
    return Broker(kind, RABBITMQ_URL, lambda: _purge_sluice_queue(RABBITMQ_URL))


# --- processes ----------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process in its own group, its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker's pool children included)."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def terminate(self) -> None:
        """SIGTERM the main process only: a Celery worker then shuts its pool down warmly."""
        if self.alive():
            with suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate, wait up to ``timeout_s``, then SIGKILL whatever is left of the group."""
        self.terminate()
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout_s)
        self.kill(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (e.g. a Celery worker's pool processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def descendants(pids: Sequence[int]) -> set[int]:
    """``pids`` and every process below them."""
    found = set(pids)
    frontier = list(pids)
    while frontier:
        frontier = [child for pid in frontier for child in children(pid) if child not in found]
        found.update(frontier)
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """``rss``, ``pss`` and ``uss`` (private pages) of one process, in KiB (Linux /proc)."""
    figures = {"rss": 0, "pss": 0, "uss": 0}
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            value = rest.split()
            if not value or not value[0].isdigit():
                continue
            if name == "Rss":
                figures["rss"] = int(value[0])
            elif name == "Pss":
                figures["pss"] = int(value[0])
            elif name in ("Private_Clean", "Private_Dirty"):
                figures["uss"] += int(value[0])
    return figures


def rss_kib(root_pids: Sequence[int]) -> int:
    """Resident memory of the given processes and all their descendants, in KiB."""
    return sum(memory_kib(pid)["rss"] for pid in descendants(root_pids))


def open_fds(pid: int) -> int:
    """File descriptors ``pid`` holds open (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _socket_inodes(pids: Sequence[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        with suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    return inodes


def tcp_local_ports(pids: Sequence[int], remote_port: int) -> set[int]:
    """Local ports of the established TCP connections that ``pids`` hold to ``remote_port``
    (``/proc/net/tcp``; how a server's client list is told apart per process)."""
    inodes = _socket_inodes(pids)
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                established = fields[3] == "01"
                to_server = int(fields[2].rsplit(":", 1)[1], 16) == remote_port
                if established and to_server and int(fields[9]) in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def redis_clients(url: str, pids: Sequence[int]) -> dict[str, int]:
    """Redis's ``CLIENT LIST`` entries that belong to ``pids``, counted per database."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        ports = tcp_local_ports(pids, urlsplit(url).port or 6379)
        counts: dict[str, int] = {}
        for entry in client.client_list():
            if int(str(entry.get("addr", ":0")).rsplit(":", 1)[1]) in ports:
                db = f"db{entry.get('db', '?')}"
                counts[db] = counts.get(db, 0) + 1
        return counts
    finally:
        client.close()


def postgres_connections(database_url: str) -> int:
    """Sessions open on the database of ``database_url`` (``pg_stat_activity``)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    name = urlsplit(database_url).path.lstrip("/")
    admin = sa.create_engine(PG_ADMIN_URL, poolclass=NullPool)
    try:
        with admin.connect() as conn:
            query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name")
            return int(conn.execute(query, {"name": name}).scalar_one())
    finally:
        admin.dispose()


# --- the cluster --------------------------------------------------------------------------


@dataclass
class Cluster:
    """Sluice processes sharing one configuration, database, broker and limiter namespace."""

    folder: Path
    database_url: str
    broker_url: str
    redis_url: str = REDIS_URL
    namespace: str = field(default_factory=lambda: f"sluice:cluster:{uuid.uuid4().hex[:10]}")
    settings: dict[str, str] = field(default_factory=dict)
    sluice: str = SLUICE
    procs: list[Proc] = field(default_factory=list)

    @property
    def config(self) -> Path:
        """The cluster's TOML file (``SLUICE_CONFIG`` of every process)."""
        return self.folder / "sluice.toml"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(
            SLUICE_CONFIG=str(self.config),
            SLUICE_DATABASE_URL=self.database_url,
            SLUICE_BROKER_URL=self.broker_url,
            SLUICE_REDIS_URL=self.redis_url,
            SLUICE_LIMITER_NAMESPACE=self.namespace,
            TMPDIR=str(self.folder),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.settings)
        return env

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        command: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start ``sluice ARGS`` (or ``command``) in a new process group, output to a log;
        ``env`` adds to (or overrides) the cluster's environment for this process only."""
        argv = [*(command or [self.sluice]), *args]
        log = self.folder / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                cwd=self.folder,
                env={**self.env(), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log, argv)
        self.procs.append(proc)
        return proc

    def crash(self, proc: Proc) -> Proc:
        """SIGKILL ``proc``'s whole process group, reap it, and start it again the same way.

        The new process appends to the same log and replaces ``proc`` in :attr:`procs`.
        """
        proc.kill(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)
        self.procs.remove(proc)
        return self.spawn(proc.name, proc.argv[1:], proc.argv[:1])

    def upgrade_database(self) -> None:
        """``sluice db upgrade`` on the cluster's database."""
        result = subprocess.run(
            [self.sluice, "db", "upgrade"], env=self.env(), capture_output=True, timeout=60
        )
        if result.returncode != 0:
            raise ClusterError(f"sluice db upgrade failed:\n{result.stderr.decode()}")

    def sandbox(self, port: int, profile: str = "standard") -> str:
        """Start ``sluice sandbox`` (reading ``[sandbox]`` of the TOML file); its base URL."""
        proc = self.spawn("sandbox", ["sandbox", "--port", str(port), "--profile", profile])
        base_url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if not proc.alive():
                raise ClusterError(f"sandbox exited:\n{proc.output()}")
            with suppress(httpx.TransportError):
                return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
            return False

        wait_until(up, STARTUP_TIMEOUT_S, f"the sandbox at {base_url}")
        return base_url

    def worker(
        self,
        name: str,
        *,
        beat: bool = False,
        concurrency: int = 2,
        loglevel: str = "INFO",
        wait: bool = False,
    ) -> Proc:
        """Start ``sluice worker`` named ``NAME@<host>``; with ``wait``, until it is ready."""
        args = ["worker", "--hostname", f"{name}@%h", "--concurrency", str(concurrency)]
        args += ["--loglevel", loglevel]
        if beat:
            args.append("--beat")
        proc = self.spawn(name, args)
        if wait:
            self.wait_ready([proc])
        return proc

    def beat(self, loglevel: str = "INFO", env: dict[str, str] | None = None) -> Proc:
        """Start a separate ``sluice beat`` (``env`` added to its environment)."""
        return self.spawn("beat", ["beat", "--loglevel", loglevel], env=env)

    def wait_ready(self, workers: Sequence[Proc], timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until every worker logged Celery's ``ready.`` line (needs loglevel INFO)."""

        def ready() -> bool:
            for proc in workers:
                if not proc.alive():
                    raise ClusterError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
            return all("ready." in proc.output() for proc in workers)

        wait_until(ready, timeout_s, "the workers to be ready")

    def stop(self) -> None:
        """Stop every process (warmly first), then delete the limiter's keys."""
        for proc in self.procs:
            proc.terminate()
        for proc in reversed(self.procs):
            proc.stop()
        drop_namespace(self.redis_url, self.namespace)

    def logs(self, tail_chars: int = 6000) -> str:
        """The end of every process's log, for a failure report."""
        return "\n".join(
            f"----- {proc.name} (pid {proc.pid}) -----\n{proc.output()[-tail_chars:]}"
            for proc in self.procs
        )

    def build_runtime(self, **overrides: Any) -> Runtime:
        """A runtime of this process on the cluster's store, providers and limiter."""
        from sluice.runtime import build_runtime
        from sluice.settings import load_settings

        previous = os.environ.get("SLUICE_CONFIG")
        os.environ["SLUICE_CONFIG"] = str(self.config)
        try:
            settings = load_settings(
                database_url=self.database_url,
                redis_url=self.redis_url,
                limiter_namespace=self.namespace,
                **overrides,
            )
        finally:
            if previous is None:
                os.environ.pop("SLUICE_CONFIG", None)
            else:
                os.environ["SLUICE_CONFIG"] = previous
        return build_runtime(settings)
