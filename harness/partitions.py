"""A distributed Sluice across hosts (network namespaces), and partitions made under it.

:func:`partitioned_cluster` builds, on a :class:`harness.netns.Network`, one host per
server and one per worker:

* ``db``: a private PostgreSQL (:class:`harness.servers.PostgresServer`);
* ``redis``: the limiter's private ``redis-server``;
* ``broker``: the Celery broker, another private ``redis-server`` (or RabbitMQ);
* ``dsp``: ``sluice sandbox``, the independent counter of what reached the provider
  (every request, the busiest sliding second, duplicate objects);
* ``w1``, ``w2``...: one ``sluice worker`` each (the first with ``--beat``).

Nothing here touches the shared servers. The test process, in the root namespace, reaches
every host through the bridge. :meth:`Partitioned.partition` cuts a host off (every packet
to and from it dropped in silence) and :meth:`Partitioned.heal` lets them through again.

How long a worker takes to *give up* on a server is read from the kernel, not from its
logs: :meth:`Partitioned.established` lists the worker's established TCP connections to a
server (``/proc/PID/net/tcp`` of a process in the worker's namespace), and a connection
that was open when the partition began and is no longer established was given up (by the
kernel's keepalives or ``tcp_user_timeout``, or closed by the client's own timeout).

``python -m harness.partitions`` runs a round of partitions under a rate-limited
workload and prints what it measured (root and iproute2 needed; see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.cluster import SLUICE, Cluster, Proc, wait_until, write_toml
from harness.netns import Network
from harness.redis_server import RedisServer
from harness.servers import PostgresServer, RabbitMQServer

SERVERS = ("db", "redis", "broker", "dsp")
PG_PORT = 5432
REDIS_PORT = 6379
BROKER_PORT = 6380
DSP_PORT = 9100
RATE = 20
"""The provider's limit per second, configured in Sluice and enforced by the sandbox."""

SETTINGS = {
    "SLUICE_LOG_LEVEL": "INFO",
    "SLUICE_CLAIM_LEASE_S": "15",
    "SLUICE_RECONCILE_EVERY_S": "2",
}


class LogTail:
    """Lines appended to a file, each stamped with ``time.monotonic()`` when first seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.read()

    def read(self) -> None:
        with suppress(OSError), self.path.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
            self._offset += len(chunk)
            now = time.monotonic()
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self.lines += [(now, line.decode(errors="replace")) for line in complete]

    def first_after(self, since: float, text: str) -> float | None:
        """When the first line holding ``text`` was seen after ``since`` (monotonic)."""
        for seen, line in list(self.lines):
            if seen >= since and text in line:
                return seen
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@dataclass
class Partitioned:
    """The network, its servers and the cluster of Sluice processes on it."""

    network: Network
    folder: Path
    postgres: PostgresServer
    limiter: RedisServer
    cluster: Cluster
    sandbox_url: str = ""
    workers: dict[str, Proc] = field(default_factory=dict)
    tails: dict[str, LogTail] = field(default_factory=dict)

    def address(self, host: str) -> str:
        return self.network.hosts[host].address

    # -- processes -----------------------------------------------------------------------

    def start_sandbox(self) -> None:
        address = self.address("dsp")
        proc = self.cluster.spawn(
            "sandbox",
            ["sandbox", "--host", address, "--port", str(DSP_PORT), "--profile", "standard"],
            command=[*self.network.run_prefix("dsp"), SLUICE],
        )
        self.sandbox_url = f"http://{address}:{DSP_PORT}"

        def up() -> bool:
            if not proc.alive():
                raise RuntimeError(f"sandbox exited:\n{proc.output()}")
            with suppress(httpx.TransportError):
                return httpx.get(f"{self.sandbox_url}/healthz", timeout=1).status_code == 200
            return False

        wait_until(up, 60, "the sandbox")

    def start_worker(self, host: str, *, beat: bool = False, concurrency: int = 2) -> Proc:
        args = ["worker", "--hostname", f"{host}@%h", "--concurrency", str(concurrency)]
        args += ["--loglevel", "INFO"] + (["--beat"] if beat else [])
        proc = self.cluster.spawn(host, args, command=[*self.network.run_prefix(host), SLUICE])
        self.workers[host] = proc
        self.tails[host] = LogTail(proc.log)
        return proc

    def wait_ready(self, timeout_s: float = 90) -> None:
        self.cluster.wait_ready(list(self.workers.values()), timeout_s)

    # -- partitions ----------------------------------------------------------------------

    def partition(self, host: str) -> float:
        self.network.partition(host)
        return time.monotonic()

    def heal(self, host: str) -> float:
        self.network.heal(host)
        return time.monotonic()

    def server_port(self, server: str) -> tuple[str, int]:
        ports = {"db": PG_PORT, "redis": REDIS_PORT, "broker": BROKER_PORT, "dsp": DSP_PORT}
        return self.address(server), ports[server]

    def established(self, worker: str, server: str) -> set[int]:
        """Local ports of ``worker``'s established TCP connections to ``server``."""
        address, port = self.server_port(server)
        remote = f"{_hex_address(address)}:{port:04X}"
        found: set[int] = set()
        with suppress(OSError):
            table = Path(f"/proc/{self.workers[worker].pid}/net/tcp").read_text()
            for line in table.splitlines()[1:]:
                words = line.split()
                if words[2] == remote and words[3] == "01":
                    found.add(int(words[1].rsplit(":", 1)[1], 16))
        return found

    # -- the provider's view -------------------------------------------------------------

    def sandbox_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.sandbox_url}/_sandbox/stats", timeout=10).json()
        return stats

    def creates(self) -> int:
        stats = self.sandbox_stats()
        return int(sum(stats["requests"].get("POST /v1/campaigns", {}).values()))


def _hex_address(address: str) -> str:
    """An IPv4 address as ``/proc/net/tcp`` writes it (little-endian hex)."""
    return "".join(f"{int(part):02X}" for part in reversed(address.split(".")))


@contextmanager
def partitioned_cluster(
    folder: Path,
    workers: tuple[str, ...] = ("w1", "w2"),
    settings: dict[str, str] | None = None,
    provider: dict[str, Any] | None = None,
    broker_kind: str = "redis",
) -> Iterator[Partitioned]:
    """Build the hosts, servers and cluster; start the sandbox and the workers (not wait
    for them). Everything is stopped and deleted on exit, partitions healed first."""
    with ExitStack() as stack:
        network = Network()
        stack.callback(network.destroy)
        network.start()
        for name in (*SERVERS, *workers):
            network.add_host(name)

        def heal_all() -> None:
            for host in network.hosts:
                network.heal(host)

        postgres = PostgresServer.create(
            host=network.hosts["db"].address, prefix=network.run_prefix("db")
        )
        postgres.port = PG_PORT
        stack.callback(postgres.destroy)
        stack.callback(heal_all)
        postgres.start()
        postgres.create_database("sluice")
        servers = []
        rabbitmq = None
        if broker_kind == "rabbitmq":
            rabbitmq = RabbitMQServer(
                port=BROKER_PORT,
                host=network.hosts["broker"].address,
                prefix=network.run_prefix("broker"),
            )
            stack.callback(rabbitmq.destroy)
            stack.callback(heal_all)
            rabbitmq.start()
        for name, port in (("redis", REDIS_PORT), ("broker", BROKER_PORT))[: 1 if rabbitmq else 2]:
            server = RedisServer(
                folder / name,
                port=port,
                host=network.hosts[name].address,
                prefix=network.run_prefix(name),
            )
            server.start()
            stack.callback(_stop_redis, server)
            stack.callback(heal_all)
            servers.append(server)
        limiter = servers[0]
        broker_url = rabbitmq.url if rabbitmq else servers[1].url
        cluster = Cluster(
            folder=folder,
            database_url=postgres.url("sluice"),
            broker_url=broker_url,
            redis_url=limiter.url,
            namespace=f"sluice:partitions:{uuid.uuid4().hex[:8]}",
            settings={**SETTINGS, **(settings or {})},
        )
        table: dict[str, Any] = {
            "preset": "sandbox-standard",
            "base_url": f"http://{network.hosts['dsp'].address}:{DSP_PORT}",
            "rate_limit": f"{RATE}/s",
            "poll": {"interval": "500ms"},
            "retry_base": "200ms",
            "retry_max": "2s",
            **(provider or {}),
        }
        write_toml(
            cluster.config,
            {
                "sluice": {"default_provider": "sandbox"},
                "providers.sandbox": table,
                "sandbox": {"limits": [{"name": "app", "limit": RATE, "window_s": 1.0}]},
            },
        )
        stack.callback(cluster.stop)
        stack.callback(heal_all)
        setup = Partitioned(network, folder, postgres, limiter, cluster)
        stack.callback(lambda: [tail.close() for tail in setup.tails.values()])
        setup.start_sandbox()
        cluster.upgrade_database()
        for index, name in enumerate(workers):
            setup.start_worker(name, beat=index == 0)
        yield setup


def _stop_redis(server: RedisServer) -> None:
    with suppress(Exception):
        if server.alive():
            server.stop()


# --- the measuring run ----------------------------------------------------------------------


def create_campaigns(setup: Partitioned, count: int, prefix: str) -> list[int]:
    from sluice import submissions
    from sluice.domain import Submission

    runtime = setup.cluster.build_runtime()
    try:
        items = [
            Submission(
                kind="campaign",
                payload={"advertiser_id": "adv-1", "name": f"{prefix}{i}", "budget": 100.0},
            )
            for i in range(count)
        ]
        return submissions.create_tasks(runtime.repo, runtime.catalog, items)
    finally:
        runtime.close()


def unfinished(setup: Partitioned) -> int:
    runtime = setup.cluster.build_runtime()
    try:
        return runtime.queue.unfinished_count()
    finally:
        runtime.close()


def measure(setup: Partitioned, host: str, down_s: float, tasks: int) -> dict[str, Any]:
    """Submit ``tasks``, cut ``host`` off for ``down_s`` once a fifth of them reached the
    provider, heal, wait until all are final; what happened, with times in seconds."""
    before = setup.creates()
    create_campaigns(setup, tasks, f"{host}-{uuid.uuid4().hex[:6]}-")
    wait_until(lambda: setup.creates() >= before + tasks // 5, 120, "creates to flow")
    open_before = {
        (worker, server): setup.established(worker, server)
        for worker in setup.workers
        for server in SERVERS
    }
    cut = setup.partition(host)
    given_up: dict[str, float] = {}
    end = cut + down_s
    while time.monotonic() < end:
        for (worker, server), ports in open_before.items():
            name = f"{worker}->{server}"
            if ports and name not in given_up and not (ports & setup.established(worker, server)):
                given_up[name] = round(time.monotonic() - cut, 1)
        time.sleep(0.2)
    healed = setup.heal(host)
    failures_logged = {}
    for worker, tail in setup.tails.items():
        seen = tail.first_after(cut, "step_failed")
        if seen is not None and seen < healed:
            failures_logged[worker] = round(seen - cut, 1)
    still_open = {
        f"{worker}->{server}": sorted(ports & setup.established(worker, server))
        for (worker, server), ports in open_before.items()
        if ports & setup.established(worker, server)
    }
    back: dict[str, float | None] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for worker, tail in setup.tails.items():
            seen = tail.first_after(healed, "succeeded in")
            if seen is not None and worker not in back:
                back[worker] = round(seen - healed, 1)
        if len(back) == len(setup.tails):
            break
        time.sleep(0.5)
    final_by = time.monotonic() + 300
    while unfinished(setup) and time.monotonic() < final_by:
        time.sleep(1)
    final_s = round(time.monotonic() - healed, 1)
    stats = setup.sandbox_stats()
    time.sleep(70)  # longer than the server's keepalives take to end a vanished client's session
    return {
        "server_sessions_without_client": stale_sessions(setup),
        "host": host,
        "down_s": down_s,
        "given_up_s": given_up,
        "first_step_failed_logged_s": failures_logged,
        "still_open_at_heal": still_open,
        "first_pump_after_heal_s": back,
        "final_s_after_heal": final_s,
        "unfinished": unfinished(setup),
        "duplicates": stats["duplicate_count"],
        "refused": stats["refused_total"],
        "max_in_window": {k: v["max_seen"] for k, v in stats["max_in_window"].items()},
    }


def stale_sessions(setup: Partitioned) -> dict[str, int]:
    """Per worker, the server's sessions from its host that no connection of it holds."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(setup.postgres.url("postgres").replace("://", "+psycopg://", 1),
                              poolclass=NullPool)  # fmt: skip
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT host(client_addr), client_port FROM pg_stat_activity "
                    "WHERE datname = 'sluice' AND client_addr IS NOT NULL"
                )
            ).all()
    finally:
        engine.dispose()
    found = {}
    for worker in setup.workers:
        held = setup.established(worker, "db")
        address = setup.address(worker)
        found[worker] = sum(1 for host, port in rows if host == address and port not in held)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="w1,db,redis,broker,dsp", help="hosts to cut, in turn")
    parser.add_argument("--down", type=float, default=40.0, help="seconds each cut lasts")
    parser.add_argument("--tasks", type=int, default=600, help="campaigns per cut")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs)")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sluice-partitions-"))
    try:
        with partitioned_cluster(folder, broker_kind=options.broker) as setup:
            setup.wait_ready()
            for host in options.hosts.split(","):
                print(json.dumps(measure(setup, host, options.down, options.tasks)), flush=True)
    finally:
        print(f"logs: {folder}" if options.keep else "", flush=True)
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
