"""A private ``redis-server`` on a spare loopback port, to flush and restart at will.

Tests and benchmarks that lose the limiter's state on purpose start their own server from
the same binary as the shared one, never touching the shared server on 6379. It keeps
nothing on disk (``--save '' --appendonly no``), as the limiter's Redis should run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from harness.cluster import ClusterError, free_port

START_TIMEOUT_S = 20.0


class RedisServer:
    """One ``redis-server`` process of ours; ``url`` points at its database 0."""

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        prefix: list[str] | None = None,
        password: str | None = None,
    ) -> None:
        """``host`` and ``prefix`` run it on another host (:mod:`harness.netns`): the
        address it binds, and the words before its command (``ip netns exec NS``).
        ``password``: the server requires it (``requirepass``); ``url`` stays without it."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise ClusterError("redis-server is not installed")
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.host = host
        self.prefix = list(prefix or [])
        self.url = f"redis://{host}:{self.port}/0"
        self.password = password

    def start(self) -> None:
        """Start the server (a fresh, empty one) and wait until it answers PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                *self.prefix,
                self.binary,
                *("--port", str(self.port), "--bind", self.host),
                # Another host's clients come from outside loopback: no protected mode.
                *(("--protected-mode", "no") if self.host != "127.0.0.1" else ()),
                *(("--requirepass", self.password) if self.password else ()),
                *("--save", "", "--appendonly", "no", "--daemonize", "yes"),
                *("--dir", str(self.folder), "--pidfile", str(self.folder / "redis.pid")),
                *("--logfile", str(self.folder / "redis.log")),
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        self._wait(up=True)

    def stop(self) -> None:
        """``SHUTDOWN NOSAVE`` and wait until the port is closed."""
        client = self.client()
        with suppress(redis.RedisError):
            client.shutdown(nosave=True)
        client.close()
        self._wait(up=False)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start empty."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def flushall(self) -> None:
        """Drop every key, as an operator's ``FLUSHALL`` would."""
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.url, password=self.password, socket_connect_timeout=1, socket_timeout=2
        )

    def alive(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _wait(self, *, up: bool) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.alive() is not up:
            if time.monotonic() > deadline:
                state = "answer" if up else "stop"
                raise ClusterError(f"redis-server on port {self.port} did not {state}")
            time.sleep(0.05)


@contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped on exit."""
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        if server.alive():
            server.stop()
