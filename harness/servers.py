"""Private PostgreSQL and RabbitMQ servers on spare ports, for tests that restart a server.

The shared servers (PostgreSQL on 5432, RabbitMQ on 5672) are never stopped: a test that
restarts one starts its own instance from the same binaries, in a folder of its own under
the system's temporary directory, bound to loopback, and restarts that one.

* :class:`PostgresServer`: ``initdb`` (trust authentication, so any password is accepted)
  and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``. PostgreSQL refuses to run as root, so
  as root both run as the ``postgres`` OS user through ``runuser`` and the folder is handed
  to that user.
* :class:`RabbitMQServer`: ``/usr/lib/rabbitmq/bin/rabbitmq-server`` in the foreground,
  with its own node name, AMQP and distribution ports, data, logs, configuration file
  (the system's names port 5672), environment file and an empty plugin list (the
  management plugin would want port 15672). Erlang's cookie lives in the folder (``HOME``).

Nothing here imports pytest: a server that cannot be had raises :class:`ServerUnavailable`.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from harness.cluster import ClusterError, children, free_port, wait_until

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


class ServerUnavailable(ClusterError):
    """The binaries (or the OS user) needed to run a private server are not here."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _private_folder(prefix: str, owner: str | None) -> Path:
    """A new folder under the temporary directory, owned by ``owner`` when we are root."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None and os.geteuid() == 0:
        shutil.chown(folder, owner, owner)
    return folder


# --- PostgreSQL ---------------------------------------------------------------------------


def _postgres_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise ServerUnavailable("no initdb: install PostgreSQL's server package")
    return Path(initdb).parent


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of its own on a spare loopback port."""

    folder: Path
    bin_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    """The address it listens on (another host's, with ``prefix``: :mod:`harness.netns`)."""
    prefix: list[str] = field(default_factory=list)
    """Words put before each server command (``ip netns exec NS`` runs it on another host)."""

    @classmethod
    def create(cls, host: str = "127.0.0.1", prefix: list[str] | None = None) -> PostgresServer:
        """``initdb`` a new cluster (not started yet)."""
        bin_dir = _postgres_bin()
        as_root = os.geteuid() == 0
        if as_root and shutil.which("runuser") is None:
            raise ServerUnavailable("running PostgreSQL as root needs runuser (util-linux)")
        folder = _private_folder("sluice-pg-", "postgres" if as_root else None)
        server = cls(folder, bin_dir, host=host, prefix=list(prefix or []))
        server._run(
            "initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync", timeout_s=120,
        )  # fmt: skip
        if host != "127.0.0.1":  # initdb lets in loopback only
            with (server.data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
                hba.write(f"host all all {host.rsplit('.', 1)[0]}.0/24 trust\n")
        return server

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def _run(self, tool: str, *args: str, timeout_s: float = START_TIMEOUT_S) -> str:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*self.prefix, *prefix, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.folder,
        )
        if result.returncode != 0:
            raise ClusterError(f"{tool} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def start(self) -> None:
        """Start (or start again) and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses={self.host} -k {self.folder} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", str(int(START_TIMEOUT_S)), "-o", options, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop: ``fast`` ends every session at once; ``immediate`` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return port_open(self.port, self.host)

    def _processes(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        return [postmaster, *children(postmaster)]

    def freeze(self) -> None:
        """SIGSTOP the server's processes: connections stay open and the kernel still
        accepts new ones, but nothing answers (a hung server, or one behind a partition)."""
        for pid in self._processes():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        for pid in self._processes():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def url(self, database: str, password: str = "") -> str:
        """A URL for ``database`` (trust authentication: any password is accepted)."""
        secret = f":{password}" if password else ""
        return f"postgresql://postgres{secret}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import sqlalchemy as sa

        admin = sa.create_engine(
            f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres",
            isolation_level="AUTOCOMMIT",
        )
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()

    def destroy(self) -> None:
        """Stop it if running and delete its folder."""
        if self.running():
            with suppress(ClusterError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


# --- RabbitMQ -----------------------------------------------------------------------------


def _rabbitmq_server() -> str:
    inner = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # Debian's /usr/sbin one su's
    if inner.exists():
        return str(inner)
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise ServerUnavailable("no rabbitmq-server: install RabbitMQ's server package")
    return found


@dataclass
class RabbitMQServer:
    """A RabbitMQ node of its own on spare loopback ports (AMQP and distribution)."""

    folder: Path = field(default_factory=lambda: _private_folder("sluice-rabbitmq-", None))
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"sluice-test-{uuid.uuid4().hex[:8]}@localhost")
    command: str = field(default_factory=_rabbitmq_server)
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    """The address AMQP listens on (another host's, with ``prefix``: :mod:`harness.netns`)."""
    prefix: list[str] = field(default_factory=list)
    """Words put before the server's command (``ip netns exec NS``)."""

    def __post_init__(self) -> None:
        conf = f"listeners.tcp.local = {self.host}:{self.port}\n"
        if self.host != "127.0.0.1":  # guest may connect from loopback only, by default
            conf += "loopback_users.guest = false\n"
        (self.folder / "rabbitmq.conf").write_text(conf, encoding="utf-8")
        (self.folder / "rabbitmq-env.conf").write_text("", encoding="utf-8")
        (self.folder / "enabled_plugins").write_text("[].\n", encoding="utf-8")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.folder),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.folder / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.folder / "log"),
            RABBITMQ_CONFIG_FILE=str(self.folder / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.folder / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.folder / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.folder / "node.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start (or start again, keeping its data) and wait until AMQP connects."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.prefix, self.command],
                cwd=self.folder,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise ClusterError(f"rabbitmq-server exited:\n{self.output()[-3000:]}")
            return port_open(self.port, self.host) and self._amqp_answers()

        wait_until(ready, timeout_s, f"RabbitMQ node {self.node} on :{self.port}")

    def _amqp_answers(self) -> bool:
        from kombu.connection import Connection

        try:
            with Connection(self.url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1)
            return True
        except Exception:
            return False

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the node's process group (a clean shutdown); SIGKILL if it lingers."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        deadline = time.monotonic() + timeout_s
        while port_open(self.port, self.host) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.process = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def destroy(self) -> None:
        """Stop it and delete its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
