"""A private Redis Cluster of three masters on spare loopback ports, from the same binaries.

Tests of the limiter on a cluster start their own: three ``redis-server --cluster-enabled
yes`` processes, each in a folder of its own (its ``nodes.conf``, log and nothing else:
``--save '' --appendonly no``, as the limiter's Redis should run), joined by ``redis-cli
--cluster create … --cluster-replicas 0 --cluster-yes``, then waited on until every node
says ``cluster_state:ok``. The shared Redis on 6379 is never touched. Each node also needs
its cluster bus port (its port + 10000) free.

Nothing here imports pytest: missing binaries raise :class:`ServerUnavailable`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from harness.cluster import free_port, wait_until
from harness.servers import ServerUnavailable

MASTERS = 3
BUS_OFFSET = 10_000
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """``count`` ports free on loopback whose cluster bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + BUS_OFFSET <= 65_535 and port not in ports and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


class RedisCluster:
    """``masters`` master ``redis-server`` processes of ours (three by default), each with
    ``replicas`` replicas (none by default); ``url`` is Sluice's cluster URL."""

    def __init__(
        self, folder: Path, masters: int = MASTERS, replicas: int = 0, node_timeout_ms: int = 5000
    ) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise ServerUnavailable("redis-server and redis-cli are needed for a Redis Cluster")
        self.server, self.cli = server, cli
        self.folder = folder
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = cluster_ports(masters * (1 + replicas))
        self.processes: list[subprocess.Popen[bytes]] = []
        seeds = ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])
        self.url = f"redis+cluster://{seeds}"

    def start(self) -> None:
        """Start the nodes, join them into one cluster and wait until it serves every slot
        (and, with replicas, until each master has its replicas)."""
        for port in self.ports:
            self.processes.append(self._spawn(port))
        for port in self.ports:
            wait_until(lambda port=port: self._ping(port), START_TIMEOUT_S, f"node {port}")
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                *("--cluster-replicas", str(self.replicas), "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        wait_until(self.ready, START_TIMEOUT_S, "cluster_state:ok on every node")
        if self.replicas:
            wait_until(
                lambda: all(len(self.serving(slot)[1]) == self.replicas for slot in (0, 16383)),
                START_TIMEOUT_S,
                "every master's replicas",
            )

    def serving(self, slot: int) -> tuple[int, list[int]]:
        """The port of the master serving ``slot`` and its replicas' ports, as a node that
        is up says (``CLUSTER SLOTS``)."""
        for port, process in zip(self.ports, self.processes, strict=True):
            if process.poll() is not None:
                continue
            client = self.node(port)
            try:
                for first, last, master, *replicas in client.execute_command("CLUSTER SLOTS"):
                    if first <= slot <= last:
                        return int(master[1]), [int(replica[1]) for replica in replicas]
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError(f"no node up says who serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (its data is lost; its ``nodes.conf`` stays)."""
        process = self.processes[self.ports.index(port)]
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again, empty, from its ``nodes.conf``."""
        index = self.ports.index(port)
        self.processes[index] = self._spawn(port)
        wait_until(lambda: self._ping(port), START_TIMEOUT_S, f"node {port} again")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        node = self.folder / str(port)
        node.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [
                self.server,
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(self.node_timeout_ms)),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--maxmemory-policy", "noeviction"),
                *("--dir", str(node), "--logfile", str(node / "redis.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def ready(self) -> bool:
        """Every node says ``cluster_state:ok`` and knows all 16384 slots."""
        return all(self._info(port).get("cluster_state") == "ok" for port in self.ports)

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (``CLUSTER`` commands, ``KEYS`` of that node)."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)

    def stop(self) -> None:
        """Kill every node (its state is thrown away with the folder)."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        self.processes.clear()

    def _ping(self, port: int) -> bool:
        client = self.node(port)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _info(self, port: int) -> dict[str, str]:
        client = self.node(port)
        try:
            raw = client.execute_command("CLUSTER INFO")
        except redis.RedisError:
            return {}
        finally:
            client.close()
        if isinstance(raw, dict):  # redis-py parses CLUSTER INFO into a dict
            return {str(k): str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


@contextmanager
def redis_cluster(folder: Path | None = None) -> Iterator[RedisCluster]:
    """A started :class:`RedisCluster` in ``folder`` (or a new temporary one), killed on exit."""
    base = folder or Path(tempfile.mkdtemp(prefix="sluice-redis-cluster-"))
    cluster = RedisCluster(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if folder is None:
            with suppress(OSError):
                shutil.rmtree(base)
